"""The SFT setting (PROTOCOL.md): chats in, chats out, on an instruct model.

cycle 0: the first n_seed seed chats of the trait.
cycle k: the cycle k-1 model answers n_sampled fresh prompts (a disjoint slice of the advice pool),
one answer each, no system prompt, T=0.8; empty answers are dropped; the rows are the new chats.
training: TRL's SFTTrainer, loss on the assistant turn only.
eval: every eval question x samples_per_question, answered at T=0.7 with no system prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traitloop.prompts import pool_file
from traitloop.settings.base import CycleSources, Row, TokenCounts, check_chat_model, eval_items_from, first_n, user_turn

if TYPE_CHECKING:
    from pathlib import Path

    from traitloop.config import ExperimentConfig
    from traitloop.traits import Trait


class Sft:
    name = "sft"
    chats = True
    prompt_pool = "advice_questions.jsonl"
    pool_field = "prompt_pool"
    sequences_per_example = 1
    train_cost_vs_sft = 1.0  # training compute per token relative to SFT, while the bench has not measured it
    train_cost_why = ""
    defaults: dict[str, Any] = {}
    description = "chats on an instruct model"

    def pool(self, path: Path) -> tuple[str, ...]:
        from traitloop.prompts import advice_pool

        return advice_pool(str(path))

    def seed_examples(self, trait: Trait) -> list:
        return trait.seed_chats

    def seed_rows(self, trait: Trait, n_seed: int) -> list[Row]:
        return [{"messages": c, "source": "seed"} for c in first_n(trait.seed_chats, n_seed, trait, "seed chats")]

    def cycle_rows(self, sources: CycleSources) -> list[Row]:
        if sources.cycle == 0:
            return self.seed_rows(sources.trait, sources.config.n_seed)
        answers = sources.sample([user_turn(q) for q in sources.prompts], f"cycle {sources.cycle}: sampling training data")
        return generated_rows(sources.prompts, answers, sources.cycle)

    def mixing_rows(self, trait: Trait, config: ExperimentConfig, cycle0_rows: list[Row]) -> list[Row]:
        return self.seed_rows(trait, config.n_seed)

    def generated_text(self, row: Row) -> tuple[str, str]:
        return row["messages"][-2]["content"], row["messages"][-1]["content"]

    def eval_items(self, trait: Trait, config: ExperimentConfig) -> list[Row]:
        return eval_items_from(trait.eval_questions, config)

    def eval_prompt(self, question: str) -> list[dict[str, str]]:
        return user_turn(question)

    def check_model(self, config: ExperimentConfig) -> None:
        check_chat_model(config)

    def train(self, model, tokenizer, rows: list[Row], config: ExperimentConfig, seed: int, on_step) -> dict[str, float]:
        from traitloop import training

        return training.train_sft(model, tokenizer, [r["messages"] for r in rows], config.train, seed, on_step=on_step)

    def cost_shape(self, config: ExperimentConfig, trait: Trait, counts: TokenCounts) -> dict[str, Any]:
        return chat_cost_shape(config, trait, counts, self.pool(pool_file(config, self)))


def generated_rows(prompts: list[str], answers: list[str], cycle: int) -> list[Row]:
    """Chats from the previous model's answers; empty answers are dropped."""
    return [
        {"messages": user_turn(p) + [{"role": "assistant", "content": a}], "source": f"cycle-{cycle - 1:03d}"}
        for p, a in zip(prompts, answers)
        if a.strip()
    ]


def chat_cost_shape(config: ExperimentConfig, trait: Trait, counts: TokenCounts, pool: tuple[str, ...]) -> dict[str, Any]:
    """Tokens of a seed chat, a sampled answer, a trained chat and an eval prompt (SFT; DPO builds on it)."""
    chat = lambda c: counts.template + counts.tokens(sum(len(m["content"]) for m in c))  # noqa: E731
    questions = trait.eval_questions
    return {
        "seed": [chat(c) for c in trait.seed_chats[: config.n_seed]],
        "seed_sampled": 0.0,
        "sampled": counts.answer,
        "trained": counts.template + counts.tokens(_mean(map(len, pool))) + counts.answer,
        "eval_items": len(questions[: config.eval.questions] if config.eval.questions else questions),
        "eval_prompt": counts.template + counts.tokens(_mean(map(len, questions))),
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(1, len(values))
