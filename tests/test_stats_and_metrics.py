"""Per-cycle intervals (over questions), intervals over seeds, seed derivation, and the text-only
degeneration metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitloop.analysis import question_mean_ci, t_interval
from traitloop.judges.coherence import distinct_n, repetition_rate
from traitloop.seeding import derive_seed, seed_everything

# ---- question_mean_ci and t_interval ----------------------------------------------------------------


def test_question_interval_mean_is_the_mean_over_answers():
    values = [10.0, 20.0, 30.0, 60.0, 50.0]
    questions = ["a", "a", "b", "b", "c"]
    mean, low, high, n = question_mean_ci(values, questions)
    assert mean == pytest.approx(34.0)  # all answers weigh the same, whatever their question
    assert n == 5
    # questions a, b, c have means 15, 45, 50; a resample of all-a (or all-c) has chance 1/27 = 3.7%,
    # more than the 2.5% tail, so the interval is exactly [15, 50]
    assert (low, high) == (15.0, 50.0)


def test_duplicated_answers_do_not_narrow_the_question_interval():
    """Answers to one question are not independent: ten copies of each answer carry no new
    information about other questions, so the interval must stay as wide (the i.i.d. bootstrap
    this replaces got 3x narrower)."""
    values = [10.0, 20.0, 30.0, 40.0, 55.0, 70.0]
    questions = ["a", "b", "c", "d", "e", "f"]
    _, lo1, hi1, _ = question_mean_ci(values, questions)
    _, lo10, hi10, n = question_mean_ci(values * 10, questions * 10)
    assert n == 60
    assert hi10 - lo10 == pytest.approx(hi1 - lo1)


def test_question_interval_is_wider_than_iid_when_answers_cluster_by_question():
    """Simulated eval: question levels differ a lot (sd 20), samples of one question little (sd 3).
    The question bootstrap's width must match the true spread of the cycle mean over re-drawn
    questions; resampling answers as independent (the old interval) is far too narrow."""
    rng = np.random.default_rng(0)
    n_questions, n_samples = 12, 3
    widths, means = [], []
    for _ in range(300):
        levels = rng.normal(40, 20, n_questions)
        values = (levels[:, None] + rng.normal(0, 3, (n_questions, n_samples))).ravel().tolist()
        questions = [str(q) for q in range(n_questions) for _ in range(n_samples)]
        mean, low, high, _ = question_mean_ci(values, questions, n_boot=400)
        widths.append(high - low)
        means.append(mean)
    true_width = 2 * 1.96 * np.std(means)  # how much the cycle mean really moves
    assert 0.8 * true_width < np.mean(widths) < 1.1 * true_width
    iid = [np.percentile(rng.choice(values, (400, len(values))).mean(axis=1), [2.5, 97.5]) for _ in range(20)]
    assert np.mean([h - lo for lo, h in iid]) < 0.65 * true_width


def test_question_interval_ignores_missing_values_and_handles_empty():
    mean, low, high, n = question_mean_ci([1.0, None, float("nan"), 3.0], ["a", "a", "b", "b"])
    assert (mean, n) == (2.0, 2)
    assert (low, high) == (1.0, 3.0)  # resamples of both questions give 1 or 3 with chance 1/4 each
    assert all(math.isnan(x) for x in question_mean_ci([None], ["a"])[:3])
    assert question_mean_ci([7.5, 7.5], ["a", "a"]) == (7.5, 7.5, 7.5, 2)  # one question: no spread


def test_t_interval_values():
    mean, low, high, n = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd 1.5811, t(0.975, 4) = 2.7764: half width 1.9632
    assert (mean, n) == (3.0, 5)
    assert low == pytest.approx(3.0 - 1.9632, abs=1e-3) and high == pytest.approx(3.0 + 1.9632, abs=1e-3)
    assert t_interval([7.5]) == (7.5, 7.5, 7.5, 1)
    assert t_interval([None, float("nan")])[3] == 0


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
