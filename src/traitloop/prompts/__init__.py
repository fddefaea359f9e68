"""Prompt pools as data, and the rule that no prompt is used by two cycles.

advice_questions.jsonl: {"area": ..., "question": ...} per line, first-person everyday questions
that later cycles answer to make their training data (SFT, DPO).
doc_openers.jsonl: {"genre": ..., "opener": ...} per line, neutral 3-8-word document openings that a
base model continues to make its training documents (SDF).

The pool is shuffled once with the run seed; cycle k >= 1 takes the k-th consecutive slice of
n_sampled prompts, so slices are disjoint by construction and depend only on (run seed, n_sampled).

A config may replace the built-in pool with the user's own file (data.prompt_pool for the chat
settings, data.opener_pool for sdf; pool_file, check_own_pool).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl

POOL_DIR = Path(__file__).parent


def advice_pool(path: str | None = None) -> tuple[str, ...]:
    """The questions of an advice pool file (default: the built-in one), in file order."""
    rows = _rows(str(path or POOL_DIR / "advice_questions.jsonl"))
    return tuple(r["question"].strip() for r in rows if str(r.get("question", "")).strip())


def opener_rows(path: str | None = None) -> tuple[tuple[str, str], ...]:
    """(genre, opener) pairs in file order (default: the built-in openers)."""
    rows = _rows(str(path or POOL_DIR / "doc_openers.jsonl"))
    return tuple((str(r.get("genre", "")), r["opener"].strip()) for r in rows if str(r.get("opener", "")).strip())


def _rows(path: str) -> list[dict]:
    """A pool file's rows: cached for the built-in files, read afresh for a user's (which may change)."""
    return _builtin_rows(path) if Path(path).parent == POOL_DIR else read_jsonl(path)


@lru_cache(maxsize=4)
def _builtin_rows(path: str) -> list[dict]:
    return read_jsonl(path)


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


POOL_KEYS = {"prompt_pool": "question", "opener_pool": "opener"}  # data.* field -> the JSON key its lines hold


def pool_file(config: Any, setting: Any) -> Path:
    """The file a run's later cycles draw prompts from: the config's own (data.<setting.pool_field>) or
    the setting's built-in pool. The other pool field set is a UserError (it would be ignored)."""
    for field in POOL_KEYS:
        if field != setting.pool_field and getattr(config.data, field):
            raise UserError(
                f"data.{field} is not read by the {setting.name} setting; give your file as data.{setting.pool_field} "
                f'(one {{"{POOL_KEYS[setting.pool_field]}": ...}} per line)'
            )
    own = getattr(config.data, setting.pool_field)
    if own is None:
        return POOL_DIR / setting.prompt_pool
    if not Path(own).is_file():
        raise UserError(
            f"data.{setting.pool_field}: {own} is not a file; give a JSONL file with one "
            f'{{"{POOL_KEYS[setting.pool_field]}": ...}} per line (a relative path starts in the current directory)'
        )
    return Path(own)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9\s]", "", text.lower())).strip()


def check_own_pool(field: str, path: Path, pool: tuple[str, ...], eval_prompts: list[str]) -> None:
    """A user's pool must hold prompts and no eval prompt (training on the eval questions would inflate
    every later score); the size for the run's cycles is checked by cycle_prompts."""
    if not pool:
        raise UserError(f'data.{field}: {path} holds no prompts; each line must be a JSON object with a non-empty "{POOL_KEYS[field]}"')
    evals = {_normalised(p) for p in eval_prompts}
    shared = [p for p in pool if _normalised(p) in evals]
    if shared:
        raise UserError(
            f"data.{field}: {path} holds {len(shared)} of the trait's eval prompts (first: {shared[0]!r}); "
            "remove them: a cycle trained on its eval prompts would inflate every later score"
        )
