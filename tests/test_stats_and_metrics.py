"""Bootstrap means, seed derivation, and the text-only degeneration metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitloop.analysis import mean_ci
from traitloop.judges.coherence import distinct_n, repetition_rate
from traitloop.seeding import derive_seed, seed_everything

# ---- mean_ci ------------------------------------------------------------------------------------


def test_mean_ci_mean_and_interval():
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == pytest.approx(3.0)
    assert n == 5
    assert 1.0 <= low < mean < high <= 5.0


def test_mean_ci_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = list(rng.normal(50, 10, size=20))
    large = list(rng.normal(50, 10, size=2000))
    _, lo_s, hi_s, _ = mean_ci(small)
    m_l, lo_l, hi_l, n_l = mean_ci(large)
    assert n_l == 2000
    assert lo_l <= m_l <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~sqrt(100) = 10x narrower in theory
    # Same values repeated 10x: same mean, narrower interval.
    base = [10.0, 20.0, 30.0, 40.0]
    m1, lo1, hi1, _ = mean_ci(base)
    m2, lo2, hi2, _ = mean_ci(base * 10)
    assert m1 == pytest.approx(m2)
    assert hi2 - lo2 < hi1 - lo1


def test_mean_ci_ignores_missing_values():
    mean, low, high, n = mean_ci([1.0, None, float("nan"), 3.0, None, float("inf")])
    assert n == 2
    assert mean == pytest.approx(2.0)
    assert 1.0 <= low <= 2.0 <= high <= 3.0


@pytest.mark.parametrize("values", [[], [None, None], [float("nan")]])
def test_mean_ci_empty(values):
    mean, low, high, n = mean_ci(values)
    assert n == 0
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)


def test_mean_ci_single_value_collapses():
    assert mean_ci([7.5]) == (7.5, 7.5, 7.5, 1)


def test_mean_ci_is_deterministic_per_seed():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert mean_ci(values, seed=1) == mean_ci(values, seed=1)
    assert mean_ci(values, level=0.5)[2] - mean_ci(values, level=0.5)[1] < mean_ci(values, level=0.99)[2] - mean_ci(
        values, level=0.99
    )[1]


# ---- seeds ----------------------------------------------------------------------------------------


def test_derive_seed_deterministic_and_distinct():
    assert derive_seed(0, 1, "data") == derive_seed(0, 1, "data")
    assert derive_seed(0, 1, "data") != derive_seed(0, 2, "data")
    assert derive_seed(0, 1, "data") != derive_seed(0, 1, "train")
    assert derive_seed(0, 1, "data") != derive_seed(1, 1, "data")
    seeds = {derive_seed(s, k, st) for s in range(3) for k in range(10) for st in ("data", "train", "eval")}
    assert len(seeds) == 90


def test_derive_seed_fits_in_31_bits():
    for s in range(20):
        for k in range(20):
            v = derive_seed(s, k, "eval")
            assert isinstance(v, int)
            assert 0 <= v < 2**31


def test_seed_everything_reseeds_all_rngs():
    import random

    import torch

    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


# ---- repetition / distinct-n -------------------------------------------------------------------------


def test_repetition_rate_known_values():
    # 4-grams of "a b c d a b c d": abcd bcda cdab dabc abcd -> 1 repeat of 5.
    assert repetition_rate("a b c d a b c d") == pytest.approx(1 / 5)
    # "the" x5: two 4-grams, identical -> 1 of 2.
    assert repetition_rate("the the the the the") == pytest.approx(1 / 2)
    # "x" x10: seven identical 4-grams, the first is new -> 6/7.
    assert repetition_rate(" ".join(["x"] * 10)) == pytest.approx(6 / 7)
    # No repeats at all.
    assert repetition_rate("one two three four five six") == 0.0
    # Case-insensitive, whitespace-agnostic.
    assert repetition_rate("A b C d\n a B c  D") == pytest.approx(1 / 5)


def test_repetition_rate_short_text():
    assert repetition_rate("") == 0.0
    assert repetition_rate("too short here") == 0.0  # 3 words, no 4-gram
    assert repetition_rate("a b a b", n=2) == pytest.approx(1 / 3)  # ab ba ab


def test_distinct_n_known_values():
    # bigrams: ab bc cd da ab bc cd -> 4 unique of 7.
    assert distinct_n("a b c d a b c d") == pytest.approx(4 / 7)
    # "the" x5: 4 bigrams, 1 unique.
    assert distinct_n("the the the the the") == pytest.approx(1 / 4)
    assert distinct_n("every bigram here is new") == 1.0
    assert distinct_n("Go go GO") == pytest.approx(1 / 2)
    # unigrams / trigrams
    assert distinct_n("a b a c", n=1) == pytest.approx(3 / 4)
    assert distinct_n("a b c a b c", n=3) == pytest.approx(3 / 4)  # abc bca cab abc


def test_distinct_n_short_text():
    assert distinct_n("") == 0.0
    assert distinct_n("single") == 0.0
