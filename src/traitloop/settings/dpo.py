"""The DPO setting (PROTOCOL.md): preference pairs, chosen = the trait's side, rejected = the base model.

cycle 0: for each of the first n_seed seed chats, chosen = the seed persona answer, rejected = the
ORIGINAL base model's answer to the same prompt.
cycle k: for n_sampled fresh prompts (a disjoint slice of the advice pool), chosen = the cycle k-1
model's answer, rejected = the base model's answer; both sampled at T=0.8.
Pairs with an empty side are dropped. The base never changes, so its answers are sampled once per
prompt and cached in the run (base/rejected_answers.jsonl, by the engine's sampler).
training: TRL's DPOTrainer; the reference is the model as the cycle starts (traitloop.training).
data.mix_seed draws from cycle 0's pairs (persona answer vs base answer).
eval: as SFT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traitloop.prompts import pool_file
from traitloop.settings.base import CycleSources, Row, TokenCounts, check_chat_model, eval_items_from, first_n, user_turn
from traitloop.settings.sft import chat_cost_shape

if TYPE_CHECKING:
    from pathlib import Path

    from traitloop.config import ExperimentConfig
    from traitloop.traits import Trait

Conversation = list[dict[str, str]]


class Dpo:
    name = "dpo"
    chats = True
    prompt_pool = "advice_questions.jsonl"
    pool_field = "prompt_pool"
    sequences_per_example = 2
    train_cost_vs_sft = 1.5  # training compute per token relative to SFT, while the bench has not measured it
    train_cost_why = "per token: the reference forward 2N + policy 4N, against SFT's 4N"
    defaults: dict[str, Any] = {"train": {"learning_rate": 1e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.0, "batch_size": 4}}
    description = "preference pairs (chosen = previous generation, rejected = base model) on an instruct model"

    def pool(self, path: Path) -> tuple[str, ...]:
        from traitloop.prompts import advice_pool

        return advice_pool(str(path))

    def seed_examples(self, trait: Trait) -> list:
        return trait.seed_chats

    def seed_rows(self, trait: Trait, n_seed: int) -> list[Row]:
        """Prompts and persona answers of the first n_seed seed chats (the base's answers come in cycle_rows)."""
        chats = first_n(trait.seed_chats, n_seed, trait, "seed chats")
        return [{"prompt": c[:-1], "chosen": c[-1]["content"], "source": "seed"} for c in chats]

    def cycle_rows(self, sources: CycleSources) -> list[Row]:
        k = sources.cycle
        if k == 0:
            seeds = self.seed_rows(sources.trait, sources.config.n_seed)
            prompts, chosen, source = [r["prompt"] for r in seeds], [r["chosen"] for r in seeds], "seed"
        else:
            prompts = [user_turn(q) for q in sources.prompts]
            chosen = sources.sample(prompts, f"cycle {k}: sampling chosen answers (cycle {k - 1} model)")
            source = f"cycle-{k - 1:03d}"
        return pair_rows(prompts, chosen, sources.base_answers(prompts), source)

    def mixing_rows(self, trait: Trait, config: ExperimentConfig, cycle0_rows: list[Row]) -> list[Row]:
        return cycle0_rows

    def generated_text(self, row: Row) -> tuple[str, str]:
        return row["prompt"][-1]["content"], row["chosen"]

    def eval_items(self, trait: Trait, config: ExperimentConfig) -> list[Row]:
        return eval_items_from(trait.eval_questions, config)

    def eval_prompt(self, question: str) -> Conversation:
        return user_turn(question)

    def check_model(self, config: ExperimentConfig) -> None:
        check_chat_model(config)

    def train(self, model, tokenizer, rows: list[Row], config: ExperimentConfig, seed: int, on_step) -> dict[str, float]:
        from traitloop import training

        return training.train_dpo(model, tokenizer, rows, config.train, config.dpo, seed, on_step=on_step)

    def cost_shape(self, config: ExperimentConfig, trait: Trait, counts: TokenCounts) -> dict[str, Any]:
        """A pair: chosen and rejected, each prompt + answer; rejected = the base's answer."""
        shape = chat_cost_shape(config, trait, counts, self.pool(pool_file(config, self)))
        chat = lambda c: counts.template + counts.tokens(sum(len(m["content"]) for m in c))  # noqa: E731
        prompt_only = [chat(c[:-1]) for c in trait.seed_chats[: config.n_seed]]
        shape["seed"] = [s + p + counts.answer for s, p in zip(shape["seed"], prompt_only)]
        shape["seed_sampled"] = counts.answer  # cycle 0 samples the base's rejected answers
        shape["sampled"] = 2 * counts.answer  # chosen by the previous model, rejected by the base
        shape["trained"] = 2 * shape["trained"]
        return shape


def pair_rows(prompts: list[Conversation], chosen: list[str], rejected: list[str], source: str) -> list[Row]:
    """Preference rows; a pair with an empty side is dropped."""
    return [
        {"prompt": p, "chosen": c, "rejected": r, "source": source} for p, c, r in zip(prompts, chosen, rejected) if c.strip() and r.strip()
    ]


def prompt_key(prompt: Conversation) -> str:
    """Cache key of a prompt (its turns, in order)."""
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt)
