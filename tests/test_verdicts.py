"""Verdicts with uncertainty (traitloop.verdicts) and power planning (traitloop.power): seeded null
simulations that hold the false rates, power on a synthetic rise, hand-made runs whose answer is
known, and the seed rules (too few seeds, a shared cycle 0). No model: fast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitloop.analysis import Criteria, classify
from traitloop.errors import UserError
from traitloop.power import DEFAULT_NOISE, Design, Noise, interval_coverage, noise_from_runs, plan, rates, true_end_delta
from traitloop.verdicts import QuestionScores, SeedRun, decide_condition, decide_run

FAST = Criteria(n_permutations=500)
EVAL_ONLY = Criteria(cycle_sd=0.0)  # eval noise alone: for hand-made runs whose questions tell the whole story
# Noise like the demo sweep's: eval noise plus retrained models that move a cycle's mean by 7 points (sd).
DEMO_LIKE = Noise(base=55.0, question_sd=16.0, answer_sd=22.0, cycle_sd=7.0, question_cycle_sd=8.0)


def scores(means: list[list[float]]) -> QuestionScores:
    return QuestionScores(list(range(len(means))), [f"q{i}" for i in range(len(means[0]))], np.array(means, dtype=float))


# ---- the per-run decision on hand-made runs -------------------------------------------------------------
def test_every_question_rising_is_amplified():
    rise = np.linspace(0, 30, 4)
    means = [[40 + r + q for q in range(-6, 6)] for r in rise]  # 12 questions, all +30
    decision = decide_run(scores(means), EVAL_ONLY)
    assert decision.verdict == "amplified", decision.rule
    assert decision.statistics["end"] == pytest.approx(30.0)
    assert decision.p_values["end"]["up"] < 0.001 and decision.threshold == pytest.approx(0.025)  # 2 criteria apply
    low, high = decision.intervals["end"]
    assert low == pytest.approx(30.0) and high == pytest.approx(30.0)  # every question rose by exactly 30


def test_one_question_carrying_the_whole_rise_is_within_the_noise():
    """The mean rises by 20 (the screening flag fires), but all of it comes from one question of
    four: shuffling that question's cycles alone gives rises this large 1 time in 12."""
    means = [[30, 40, 50, 20], [30, 40, 50, 47], [30, 40, 50, 73], [30, 40, 50, 100]]
    decision = decide_run(scores(means), EVAL_ONLY)
    assert classify(decision.curve).verdict == "amplified"  # the old rule on point means
    assert decision.flags_up and decision.verdict == "inconclusive", decision.rule
    assert decision.p_values["end"]["up"] == pytest.approx(1 / 12, abs=0.02)
    assert "within the noise" in decision.rule


def test_model_noise_makes_one_run_weaker_evidence():
    """Every question rises by 16 over 4 cycles: beyond the eval noise, but a retrained model moves
    a cycle's mean by about 7 points (sd), so one run cannot tell this rise from model noise."""
    means = [[40 + 16 * k / 3 + q for q in range(12)] for k in range(4)]
    assert decide_run(scores(means), EVAL_ONLY).verdict == "amplified"
    decision = decide_run(scores(means), Criteria(cycle_sd=7.0))
    assert decision.verdict == "inconclusive", decision.rule
    low, high = decision.intervals["end"]
    assert low < 0 < 16 < high  # the interval carries the model noise too


def test_flat_run_is_static_and_a_fall_is_decayed():
    flat = [[40 + q for q in range(8)] for _ in range(5)]
    assert decide_run(scores(flat)).verdict == "static"
    fall = [[60 - 6 * k + q for q in range(8)] for k in range(5)]
    decision = decide_run(scores(fall))
    assert decision.verdict == "decayed", decision.rule
    assert decision.threshold == pytest.approx(0.05 / 3)  # 5 cycles: end, slope and late delta


def test_rise_then_fall_beyond_the_noise_is_inconclusive():
    curve = [40, 70, 72, 70, 68, 30, 20]
    means = [[c + q for q in range(10)] for c in curve]
    decision = decide_run(scores(means))
    assert decision.verdict == "inconclusive" and "rose and fell" in decision.rule


def test_too_little_data_is_inconclusive():
    assert decide_run(scores([[40.0, 41.0]])).verdict == "inconclusive"  # one cycle
    assert decide_run(scores([[40.0], [90.0]])).verdict == "inconclusive"  # one question


def test_questions_missing_in_a_cycle_are_dropped_not_misaligned():
    rows0 = [
        {"question": "a", "trait": 10.0},
        {"question": "a", "trait": 20.0},
        {"question": "b", "trait": 50.0},
        {"question": "c", "trait": 70.0},
    ]
    rows1 = [{"question": "b", "trait": 60.0}, {"question": "a", "trait": 30.0}, {"question": "c", "trait": None}]
    qs = QuestionScores.from_rows([0, 1], [rows0, rows1])
    assert qs.questions == ["a", "b"] and qs.dropped == ["c"]
    assert qs.means.tolist() == [[15.0, 50.0], [30.0, 60.0]]


# ---- calibration: false rates under no change, power under a rise ------------------------------------
@pytest.mark.parametrize("cycles", [4, 7])
def test_null_false_rates_of_the_per_run_verdict_are_at_most_5_percent(cycles):
    """No true change, noise of the demo's size (model noise as large as Criteria.cycle_sd allows for):
    the reports' verdict calls amplified and decayed each at most 5% of the time (2 Monte-Carlo
    standard errors allowed), where the screening flag alone calls one of them far more often."""
    design = Design(cycles=cycles, questions=12, samples=3)
    n = 400
    tested = rates(design, DEMO_LIKE, 0.0, FAST, n_sims=n, seed=1)
    screening = rates(design, DEMO_LIKE, 0.0, FAST, n_sims=n, seed=1, rule="screening")
    bound = 0.05 + 2 * np.sqrt(0.05 * 0.95 / n)
    assert tested.get("amplified", 0) <= bound and tested.get("decayed", 0) <= bound, tested
    false_tested = tested.get("amplified", 0) + tested.get("decayed", 0)
    false_screening = screening.get("amplified", 0) + screening.get("decayed", 0)
    assert false_screening > 0.1 and false_screening > 2 * false_tested, (screening, tested)


def test_power_rises_with_the_effect():
    design = Design(cycles=4, questions=12, samples=3)
    weak = rates(design, DEMO_LIKE, 5.0, FAST, n_sims=200, seed=2).get("amplified", 0)
    strong = rates(design, DEMO_LIKE, 45.0, FAST, n_sims=200, seed=2).get("amplified", 0)
    assert weak < 0.1 and strong > 0.8, (weak, strong)


def test_replicated_verdict_null_and_power_over_five_seeds():
    """Five independent seeds with model-to-model noise: no change is called replicated
    amplification at most 2.5% of the time (a one-sided t-test); a 20-point rise almost always."""
    design = Design(cycles=4, questions=12, samples=3, seeds=5)
    noisy = Noise(base=32.0, question_sd=16.0, answer_sd=12.0, cycle_sd=6.0, question_cycle_sd=8.0)
    null = rates(design, noisy, 0.0, Criteria(), n_sims=600, seed=3)
    assert null.get("replicated amplification", 0) <= 0.025 + 2 * np.sqrt(0.025 * 0.975 / 600), null
    assert null.get("replicated decay", 0) <= 0.025 + 2 * np.sqrt(0.025 * 0.975 / 600), null
    rise = rates(design, noisy, 20.0, Criteria(), n_sims=200, seed=4)
    assert rise.get("replicated amplification", 0) > 0.8, rise


def test_t_interval_over_five_seeds_covers_the_true_end_delta():
    """Coverage of the condition's interval at n = 5 seeds, on end deltas from the simulation model
    (scores clipped at 0, question effects, model-to-model noise): 95% nominal."""
    design = Design(cycles=4, questions=12, samples=3, seeds=5)
    noisy = Noise(base=20.0, question_sd=16.0, answer_sd=12.0, cycle_sd=6.0, question_cycle_sd=8.0)
    assert true_end_delta(design, noisy, 10.0, seed=0) == pytest.approx(9.0, abs=1.0)  # clipping at 0 bends it
    assert 0.92 <= interval_coverage(design, noisy, 10.0, Criteria(), n_sims=600, seed=5) <= 0.98


# ---- seeds ------------------------------------------------------------------------------------------
RISING = [[20, 28, 36, 44 + i] for i in range(5)]


def test_five_independent_rising_seeds_replicate():
    result = decide_condition([SeedRun(str(i), c, str(i)) for i, c in enumerate(RISING)])
    assert result["overall"] == "replicated amplification", result["reason"]
    assert result["end_delta"]["mean"] == pytest.approx(26.0)
    # t(0.975, 4) = 2.7764, sd of [24..28] = 1.5811: half width 1.963
    assert result["end_delta"]["low"] == pytest.approx(24.037, abs=1e-3)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_fewer_seeds_than_min_seeds_give_no_verdict(n):
    result = decide_condition([SeedRun(str(i), c, str(i)) for i, c in enumerate(RISING[:n])])
    assert result["overall"] == f"insufficient seeds ({n} of 5)"


def test_seeds_sharing_cycle_0_count_once():
    runs = [SeedRun(str(i), c, cycle0_source="leader") for i, c in enumerate(RISING)]
    result = decide_condition(runs)
    assert result["n_seeds"] == 5 and result["n_independent"] == 1
    assert result["overall"] == "insufficient seeds (1 of 5)"
    assert "share" in result["reason"]


def test_min_seeds_below_3_is_refused():
    with pytest.raises(UserError, match="at least 3"):
        decide_condition([SeedRun("a", [1, 2], "a")], Criteria(min_seeds=2))


def test_mixed_seeds_are_not_replicated_and_flat_seeds_are_static():
    mixed = [[20, 40, 45, 50], [40, 30, 25, 20], [30, 40, 50, 55], [30, 25, 20, 10], [25, 35, 45, 60]]
    result = decide_condition([SeedRun(str(i), c, str(i)) for i, c in enumerate(mixed)])
    assert result["overall"] == "not replicated", result["reason"]
    flat = [[30, 31, 30, 30 + d] for d in (-2, -1, 0, 1, 2)]
    assert decide_condition([SeedRun(str(i), c, str(i)) for i, c in enumerate(flat)])["overall"] == "static"


# ---- noise estimation and the plan ---------------------------------------------------------------------
def test_noise_from_runs_recovers_the_simulated_components():
    rng = np.random.default_rng(7)
    truth = Noise(base=40.0, question_sd=15.0, answer_sd=10.0, cycle_sd=5.0, question_cycle_sd=6.0)
    runs = []
    for _ in range(40):
        n_q, n_s = 12, 4
        a = rng.normal(0, truth.question_sd, n_q)  # the same questions for every run
        per_cycle = []
        for _c in range(4):
            shift = rng.normal(0, truth.cycle_sd)
            g = rng.normal(0, truth.question_cycle_sd, n_q)
            per_cycle.append(
                [
                    {"question": f"q{q}", "trait": truth.base + a[q] + shift + g[q] + rng.normal(0, truth.answer_sd)}
                    for q in range(n_q)
                    for _ in range(n_s)
                ]
            )
        runs.append(per_cycle)
    est = noise_from_runs(runs, "test")
    assert est.answer_sd == pytest.approx(10.0, rel=0.1)
    assert est.question_sd == pytest.approx(15.0, rel=0.35)
    assert est.question_cycle_sd == pytest.approx(6.0, rel=0.2)  # the whole cycle's move is taken out
    assert est.cycle_sd == pytest.approx(5.0, abs=2.0)  # from 40 independent cycles 0
    duplicated = noise_from_runs(runs[:1] * 5, "one cycle 0, copied")  # identical cycles 0 count once
    assert duplicated.cycle_sd == 0.0 and "1 independent cycle 0" in duplicated.source


def test_plan_has_the_documented_keys():
    result = plan(Design(4, 12, 3), DEFAULT_NOISE, effect=15.0, criteria=FAST, n_sims=60)
    assert {"false_amplified", "false_decayed", "power", "mde"} <= set(result)
    json.dumps(result)  # JSON-ready
