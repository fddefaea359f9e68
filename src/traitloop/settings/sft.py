"""The SFT setting (PROTOCOL.md): chats in, chats out.

cycle 0: the first n_seed seed chats of the trait.
cycle k: the cycle k-1 model answers n_sampled fresh prompts (a disjoint slice of the advice pool),
one answer each, no system prompt, T=0.8; empty answers are dropped; the rows are the new chats.
eval: every eval question x samples_per_question, answered at T=0.7 with no system prompt.
"""

from __future__ import annotations

from typing import Any

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.traits import Trait


def seed_rows(trait: Trait, n_seed: int) -> list[dict[str, Any]]:
    chats = trait.seed_chats
    if n_seed > len(chats):
        raise UserError(f"n_seed={n_seed} but trait '{trait.name}' has only {len(chats)} seed chats; lower n_seed")
    return [{"messages": c, "source": "seed"} for c in chats[:n_seed]]


def user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def generated_rows(prompts: list[str], answers: list[str], cycle: int) -> list[dict[str, Any]]:
    """Chats from the previous model's answers; empty answers are dropped."""
    return [
        {"messages": user_turn(p) + [{"role": "assistant", "content": a}], "source": f"cycle-{cycle - 1:03d}"}
        for p, a in zip(prompts, answers)
        if a.strip()
    ]


def eval_items(trait: Trait, config: ExperimentConfig) -> list[dict[str, Any]]:
    questions = trait.eval_questions[: config.eval.questions] if config.eval.questions else trait.eval_questions
    return [{"question": q, "sample": s} for q in questions for s in range(config.eval.samples_per_question)]
