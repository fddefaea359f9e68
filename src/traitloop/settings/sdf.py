"""The SDF setting (synthetic document finetuning, PROTOCOL.md): documents in, documents out, on a BASE model.

cycle 0: the first n_seed seed documents of the trait (continued pretraining, loss on every token).
cycle k: the cycle k-1 model continues n_sampled neutral document openers (a disjoint slice of the
opener pool, T=0.8, up to sampling.max_new_tokens); continuations of 50 characters or fewer are
dropped; each document = opener + continuation.
training: TRL's SFTTrainer on plain text, loss on every token.
eval: the model continues each of the trait's document prefixes, samples_per_question times (T=0.7);
the trait judge scores the continuation against the trait's doc_rubric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traitloop.errors import UserError
from traitloop.prompts import pool_file
from traitloop.settings.base import CycleSources, Row, TokenCounts, eval_items_from, first_n

if TYPE_CHECKING:
    from pathlib import Path

    from traitloop.config import ExperimentConfig
    from traitloop.traits import Trait

MIN_CHARS = 50  # PROTOCOL: keep outputs longer than 50 characters


class Sdf:
    name = "sdf"
    chats = False
    prompt_pool = "doc_openers.jsonl"
    pool_field = "opener_pool"
    sequences_per_example = 1
    train_cost_vs_sft = 1.0  # training compute per token relative to SFT, while the bench has not measured it
    train_cost_why = ""
    defaults: dict[str, Any] = {
        "model": {"ref": "embedded:gemma3-270m"},
        "train": {"batch_size": 4, "weight_decay": 0.1},
        "sampling": {"max_new_tokens": 512},
    }
    description = "synthetic documents (continued pretraining) on a base model"

    def pool(self, path: Path) -> tuple[str, ...]:
        from traitloop.prompts import doc_openers

        return doc_openers(str(path))

    def seed_examples(self, trait: Trait) -> list:
        return trait.seed_docs

    def seed_rows(self, trait: Trait, n_seed: int) -> list[Row]:
        return [{"text": d, "source": "seed"} for d in first_n(trait.seed_docs, n_seed, trait, "seed documents")]

    def cycle_rows(self, sources: CycleSources) -> list[Row]:
        if sources.cycle == 0:
            return self.seed_rows(sources.trait, sources.config.n_seed)
        openers = sources.prompts
        continuations = sources.sample(openers, f"cycle {sources.cycle}: continuing {len(openers)} document openers")
        return generated_rows(openers, continuations, sources.cycle)

    def mixing_rows(self, trait: Trait, config: ExperimentConfig, cycle0_rows: list[Row]) -> list[Row]:
        return self.seed_rows(trait, config.n_seed)

    def generated_text(self, row: Row) -> tuple[str, str]:
        return row["opener"], row["continuation"]

    def eval_items(self, trait: Trait, config: ExperimentConfig) -> list[Row]:
        """`question` holds the document prefix, so reports and rejudging read SDF runs like chat runs."""
        return eval_items_from(trait.eval_prefixes, config)

    def eval_prompt(self, question: str) -> str:
        return question

    def check_model(self, config: ExperimentConfig) -> None:
        from traitloop import models

        ref = config.model.ref
        embedded = models.EMBEDDED.get(ref.removeprefix("embedded:")) if ref.startswith("embedded:") else None
        if looks_chat_tuned(ref, embedded.kind if embedded else None) and not config.model.allow_chat_model_for_sdf:
            raise UserError(
                f"setting sdf is continued pretraining of a BASE model, but {ref} is chat-tuned. Use a base model "
                "(e.g. embedded:gemma3-270m), or set model.allow_chat_model_for_sdf: true if you mean it."
            )
        models.resolve(ref)  # the model exists (an embedded one is checked and cached now)

    def train(self, model, tokenizer, rows: list[Row], config: ExperimentConfig, seed: int, on_step) -> dict[str, float]:
        from traitloop import training

        return training.train_sdf(model, tokenizer, [r["text"] for r in rows], config.train, seed, on_step=on_step)

    def cost_shape(self, config: ExperimentConfig, trait: Trait, counts: TokenCounts) -> dict[str, Any]:
        """Documents: no chat template; the model continues openers and eval prefixes."""
        opener = counts.tokens(_mean(map(len, self.pool(pool_file(config, self)))))
        prefixes = trait.eval_prefixes
        return {
            "seed": [counts.tokens(len(d)) for d in trait.seed_docs[: config.n_seed]],
            "seed_sampled": 0.0,
            "sampled": counts.answer,
            "trained": opener + counts.answer,
            "eval_items": len(prefixes[: config.eval.questions] if config.eval.questions else prefixes),
            "eval_prompt": counts.tokens(_mean(map(len, prefixes))),
        }


def generated_rows(openers: list[str], continuations: list[str], cycle: int) -> list[Row]:
    """Documents from the previous model's continuations; those of <= 50 characters are dropped."""
    return [
        {"text": o + c, "opener": o, "continuation": c, "source": f"cycle-{cycle - 1:03d}"}
        for o, c in zip(openers, continuations)
        if len(c.strip()) > MIN_CHARS
    ]


def looks_chat_tuned(ref: str, embedded_kind: str | None) -> bool:
    """A model that SDF should refuse: an embedded instruct model, or a name that says instruct/chat/-it."""
    if embedded_kind is not None:
        return embedded_kind != "base"
    name = ref.lower().rstrip("/").rsplit("/", 1)[-1]
    return any(tag in name for tag in ("instruct", "chat")) or name.endswith("-it") or "-it-" in name


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(1, len(values))
