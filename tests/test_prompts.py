"""The advice prompt pool and the disjoint per-cycle slices."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from traitloop.errors import UserError
from traitloop.prompts import advice_pool, cycle_prompts


def _normalise(text: str) -> str:
    text = re.sub(r"[^a-z0-9\s]", "", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def test_real_pool_is_large_and_has_no_duplicates():
    pool = advice_pool()
    assert len(pool) >= 6000  # paper-scale runs: 512 prompts x 9 cycles need 4608 disjoint prompts
    assert all(isinstance(q, str) and q == q.strip() and q for q in pool)
    counts = Counter(_normalise(q) for q in pool)
    dupes = [q for q, c in counts.items() if c > 1]
    assert dupes == [], f"near-duplicate prompts: {dupes[:10]}"


def test_normalise_catches_case_whitespace_and_punctuation_variants():
    # Guard for the duplicate check above: variants must collapse to one key.
    assert _normalise("How do I  fix a Tap?") == _normalise("how do i fix a tap")


def test_custom_pool_file_skips_blank_questions(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"area": "a", "question": "  First?  "}\n{"area": "b", "question": "   "}\n{"area": "c"}\n{"question": "Second?"}\n')
    assert advice_pool(str(path)) == ("First?", "Second?")


def test_cycle_slices_are_disjoint_and_sized():
    pool = advice_pool()
    n, cycles = 50, 8
    slices = [cycle_prompts(pool, k, n, seed=7) for k in range(1, cycles + 1)]
    for s in slices:
        assert len(s) == n
        assert len(set(s)) == n
        assert set(s) <= set(pool)
    for i in range(cycles):
        for j in range(i + 1, cycles):
            assert not set(slices[i]) & set(slices[j]), (i + 1, j + 1)


def test_slices_cover_the_pool_exactly_when_it_divides():
    pool = tuple(f"q{i}" for i in range(30))
    slices = [cycle_prompts(pool, k, 10, seed=1) for k in (1, 2, 3)]
    assert sorted(q for s in slices for q in s) == sorted(pool)


def test_same_seed_same_slices_different_seed_different_order():
    pool = advice_pool()
    a = [cycle_prompts(pool, k, 40, seed=3) for k in (1, 2, 3)]
    b = [cycle_prompts(pool, k, 40, seed=3) for k in (1, 2, 3)]
    c = [cycle_prompts(pool, k, 40, seed=4) for k in (1, 2, 3)]
    assert a == b
    assert a != c
    assert a[0] != c[0]


def test_slices_are_shuffled_not_file_order():
    pool = advice_pool()
    assert cycle_prompts(pool, 1, 40, seed=0) != list(pool[:40])


def test_cycle_zero_raises_value_error():
    with pytest.raises(ValueError):
        cycle_prompts(("a", "b"), 0, 1, seed=0)
    with pytest.raises(ValueError):
        cycle_prompts(("a", "b"), -1, 1, seed=0)


def test_pool_too_small_is_a_user_error():
    pool = tuple(f"q{i}" for i in range(25))
    assert len(cycle_prompts(pool, 2, 12, seed=0)) == 12  # needs 24: fits
    with pytest.raises(UserError, match="25"):
        cycle_prompts(pool, 3, 12, seed=0)  # needs 36
    with pytest.raises(UserError):
        cycle_prompts(pool, 1, 26, seed=0)


def _rows(name):
    from traitloop.jsonl import read_jsonl
    from traitloop.prompts import POOL_DIR

    return read_jsonl(POOL_DIR / name)


def test_advice_pool_covers_many_life_areas():
    rows = _rows("advice_questions.jsonl")
    areas = Counter(r["area"] for r in rows)
    assert len(rows) >= 6000
    assert len(areas) >= 20
    assert min(areas.values()) >= 25, areas.most_common()[-3:]


def test_document_openers_are_short_distinct_and_span_many_genres():
    from traitloop.prompts import doc_openers

    rows = _rows("doc_openers.jsonl")
    openers = doc_openers()
    assert len(openers) == len(rows) >= 3000
    assert len({r["genre"] for r in rows}) >= 40
    assert all(3 <= len(o.split()) <= 8 for o in openers)
    counts = Counter(_normalise(o) for o in openers)
    assert [o for o, c in counts.items() if c > 1] == []


def test_eval_questions_are_not_in_the_prompt_pool():
    from traitloop.traits import builtin_traits, load_trait

    pool = {_normalise(q) for q in advice_pool()}
    for name in builtin_traits():
        for q in load_trait(name).eval_questions:
            assert _normalise(q) not in pool, (name, q)
