"""The DPO setting (PROTOCOL.md): preference pairs, chosen = the trait's side, rejected = the base model.

cycle 0: for each of the first n_seed seed chats, chosen = the seed persona answer, rejected = the
ORIGINAL base model's answer to the same prompt.
cycle k: for n_sampled fresh prompts (a disjoint slice of the advice pool), chosen = the cycle k-1
model's answer, rejected = the base model's answer; both sampled at T=0.8.
Pairs with an empty side are dropped. The base never changes, so its answers are sampled once per
prompt and cached in the run (base/rejected_answers.jsonl).
eval: as SFT.
"""

from __future__ import annotations

from typing import Any

from traitloop.errors import UserError
from traitloop.settings.sft import user_turn
from traitloop.traits import Trait

Conversation = list[dict[str, str]]


def seed_prompts(trait: Trait, n_seed: int) -> tuple[list[Conversation], list[str]]:
    """(prompt conversations, persona answers) of the first n_seed seed chats."""
    chats = trait.seed_chats
    if n_seed > len(chats):
        raise UserError(f"n_seed={n_seed} but trait '{trait.name}' has only {len(chats)} seed chats; lower n_seed")
    chats = chats[:n_seed]
    return [c[:-1] for c in chats], [c[-1]["content"] for c in chats]


def fresh_prompts(questions: list[str]) -> list[Conversation]:
    return [user_turn(q) for q in questions]


def pair_rows(prompts: list[Conversation], chosen: list[str], rejected: list[str], source: str) -> list[dict[str, Any]]:
    """Preference rows; a pair with an empty side is dropped."""
    return [
        {"prompt": p, "chosen": c, "rejected": r, "source": source}
        for p, c, r in zip(prompts, chosen, rejected)
        if c.strip() and r.strip()
    ]


def prompt_key(prompt: Conversation) -> str:
    """Cache key of a prompt (its turns, in order)."""
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt)
