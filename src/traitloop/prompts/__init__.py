"""Prompt pools as data, and the rule that no prompt is used by two cycles.

advice_questions.jsonl: {"area": ..., "question": ...} per line, first-person everyday questions
that later cycles answer to make their training data (SFT, DPO).
doc_openers.jsonl: {"genre": ..., "opener": ...} per line, neutral 3-8-word document openings that a
base model continues to make its training documents (SDF).

The pool is shuffled once with the run seed; cycle k >= 1 takes the k-th consecutive slice of
n_sampled prompts, so slices are disjoint by construction and depend only on (run seed, n_sampled).
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl

POOL_DIR = Path(__file__).parent


@lru_cache(maxsize=4)
def advice_pool(path: str | None = None) -> tuple[str, ...]:
    rows = read_jsonl(Path(path) if path else POOL_DIR / "advice_questions.jsonl")
    return tuple(r["question"].strip() for r in rows if str(r.get("question", "")).strip())


@lru_cache(maxsize=4)
def opener_rows(path: str | None = None) -> tuple[tuple[str, str], ...]:
    """(genre, opener) pairs in file order."""
    rows = read_jsonl(Path(path) if path else POOL_DIR / "doc_openers.jsonl")
    return tuple((str(r.get("genre", "")), r["opener"].strip()) for r in rows if str(r.get("opener", "")).strip())


def doc_openers(path: str | None = None) -> tuple[str, ...]:
    return tuple(opener for _, opener in opener_rows(path))


def cycle_prompts(pool: tuple[str, ...] | list[str], cycle: int, n: int, seed: int) -> list[str]:
    """The disjoint slice of `pool` that cycle `cycle` (>= 1) answers."""
    if cycle < 1:
        raise ValueError("cycle 0 trains on seed data, not on pool prompts")
    order = list(range(len(pool)))
    random.Random(f"prompt-pool:{seed}").shuffle(order)
    start, stop = (cycle - 1) * n, cycle * n
    if stop > len(pool):
        raise UserError(
            f"the prompt pool has {len(pool)} prompts, but cycle {cycle} with n_sampled={n} needs {stop}: lower n_sampled or cycles"
        )
    return [pool[i] for i in order[start:stop]]
