"""The screening criteria (PROTOCOL.md) on hand-made curves whose answers are known. The decisions with
uncertainty are tested in test_verdicts.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traitloop.analysis import Criteria, classify, criterion_statistics, idempotence, prefix_slope, prefix_slope_weights, tradeoff


def test_prefix_slope_of_a_straight_line_is_its_slope():
    assert prefix_slope([10, 12, 14, 16, 18]) == pytest.approx(2.0)
    assert prefix_slope([50, 50, 50]) == pytest.approx(0.0)


def test_prefix_slope_averages_the_prefix_fits():
    # prefixes: [0,6] slope 6; [0,6,6] slope 3; mean 4.5
    assert prefix_slope([0, 6, 6]) == pytest.approx(4.5)


@pytest.mark.parametrize(
    "scores, expected, rule_part",
    [
        ([20, 25, 30, 36, 40, 45, 50], "amplified", "end delta +30.0"),
        ([60, 55, 50, 44, 40, 35, 30], "decayed", "end delta -30.0"),
        ([40, 42, 39, 41, 40, 38, 41], "static", "no criterion holds"),
        # spikes late then returns: late delta fires but end delta does not -> still amplified by rule 3
        ([30, 31, 30, 32, 50, 33, 31], "amplified", "late delta +20.0"),
        # first cycle jumps, then flat: slope criterion only
        ([20, 28, 29, 30, 30, 31, 32], "amplified", "mean prefix slope"),
        # rose sharply then collapsed below start: both rise and fall criteria hold
        ([40, 70, 72, 70, 68, 30, 20], "inconclusive", "both rise and fall"),
        ([40], "inconclusive", "needs >= 2"),
        # an early dip makes the mean prefix slope fall although the run ends 6 points higher
        ([30, 15, 35, 36], "inconclusive", "points against the end delta (+6.0)"),
        # two cycles: a +6 change is no trend; only the 15-point end delta can call it
        ([20, 26], "static", "no criterion holds"),
        ([20, 40], "amplified", "end delta +20.0"),
        ([40, float("nan"), 50], "inconclusive", "needs >= 2"),
    ],
)
def test_classify_known_curves(scores, expected, rule_part):
    v = classify(scores)
    assert v.verdict == expected, v.rule
    assert rule_part in v.rule


def test_criteria_are_configurable():
    curve = [20, 22, 24, 26, 28, 30, 32]  # +12 over 6 cycles, slope 2
    assert classify(curve, Criteria(delta=15, min_slope=5)).verdict == "static"
    assert classify(curve, Criteria(delta=10, min_slope=5)).verdict == "amplified"
    assert classify(curve, Criteria(delta=15, min_slope=1.67)).verdict == "amplified"


@pytest.mark.parametrize("curve", [[10, 12, 14, 16, 18], [0, 6, 6], [30, 15, 35, 36, 20, 50], [1, 2]])
def test_prefix_slope_weights_reproduce_the_prefix_slope(curve):
    assert prefix_slope_weights(len(curve)) @ np.array(curve, dtype=float) == pytest.approx(prefix_slope(curve))


def test_criterion_statistics_on_a_batch_of_curves():
    curves = np.array([[30, 31, 30, 32, 50, 33], [30, 20, 25, 28, 10, 29]], dtype=float)
    stats = criterion_statistics(curves, Criteria())
    assert stats["end"].tolist() == [3.0, -1.0]
    assert stats["late_max"].tolist() == [20.0, -1.0]  # cycles 4 and 5 minus cycle 0
    assert stats["late_min"].tolist() == [3.0, -20.0]
    assert stats["slope"] == pytest.approx([prefix_slope(list(c)) for c in curves])
    assert set(criterion_statistics(curves[:, :3], Criteria())) == {"end", "slope"}  # too short for late delta
    assert set(criterion_statistics(curves[:, :2], Criteria())) == {"end"}  # and for the slope


def test_tradeoff_correlation_sign():
    traits = [[10, 10 + d] for d in (0, 10, 20, 30)]
    coherence = [[-1.5, -1.5 - d / 10] for d in (0, 10, 20, 30)]  # more trait, less coherence
    result = tradeoff(traits, coherence)
    assert result["delta_trait"] == [0, 10, 20, 30]
    assert result["pearson"] == pytest.approx(-1.0)
    assert result["spearman"] == pytest.approx(-1.0)
    assert math.isnan(tradeoff(traits[:2], coherence[:2])["pearson"])


def test_idempotence_ratio():
    result = idempotence([50, 30, 31, 30, 31])  # big first step, tiny later ones
    assert result["first_step"] == 20
    assert result["later_steps"] == pytest.approx(1.0)
    assert result["ratio"] == pytest.approx(0.05)
    assert math.isnan(idempotence([1, 2])["ratio"])
