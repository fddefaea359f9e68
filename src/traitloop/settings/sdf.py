"""The SDF setting (synthetic document finetuning, PROTOCOL.md): documents in, documents out, on a BASE model.

cycle 0: the first n_seed seed documents of the trait (continued pretraining, loss on every token).
cycle k: the cycle k-1 model continues n_sampled neutral document openers (a disjoint slice of the
opener pool, T=0.8, up to sampling.max_new_tokens); continuations of 50 characters or fewer are
dropped; each document = opener + continuation.
eval: the model continues each of the trait's document prefixes, samples_per_question times (T=0.7);
the trait judge scores the continuation against the trait's doc_rubric.
"""

from __future__ import annotations

from typing import Any

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.traits import Trait

MIN_CHARS = 50  # PROTOCOL: keep outputs longer than 50 characters


def seed_rows(trait: Trait, n_seed: int) -> list[dict[str, Any]]:
    docs = trait.seed_docs
    if n_seed > len(docs):
        raise UserError(f"n_seed={n_seed} but trait '{trait.name}' has only {len(docs)} seed documents; lower n_seed")
    return [{"text": d, "source": "seed"} for d in docs[:n_seed]]


def generated_rows(openers: list[str], continuations: list[str], cycle: int) -> list[dict[str, Any]]:
    """Documents from the previous model's continuations; those of <= 50 characters are dropped."""
    return [
        {"text": o + c, "opener": o, "continuation": c, "source": f"cycle-{cycle - 1:03d}"}
        for o, c in zip(openers, continuations)
        if len(c.strip()) > MIN_CHARS
    ]


def eval_items(trait: Trait, config: ExperimentConfig) -> list[dict[str, Any]]:
    """`question` holds the document prefix, so reports and rejudging read SDF runs like chat runs."""
    prefixes = trait.eval_prefixes[: config.eval.questions] if config.eval.questions else trait.eval_prefixes
    return [{"question": p, "sample": s} for p in prefixes for s in range(config.eval.samples_per_question)]


def looks_chat_tuned(ref: str, embedded_kind: str | None) -> bool:
    """A model that SDF should refuse: an embedded instruct model, or a name that says instruct/chat/-it."""
    if embedded_kind is not None:
        return embedded_kind != "base"
    name = ref.lower().rstrip("/").rsplit("/", 1)[-1]
    return any(tag in name for tag in ("instruct", "chat")) or name.endswith("-it") or "-it-" in name
