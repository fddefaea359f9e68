"""Verdicts with uncertainty: did this run's trait amplify, and does it replicate over seeds?

The unit is the eval QUESTION. Every cycle answers the same questions, and answers to one question are
alike, so each cycle is summarised as one mean per question (over its samples), and every comparison
between cycles is paired by question.

Per run (`decide_run`):
  1. Screening: the paper's three criteria on the per-cycle means (analysis.screening_flags).
  2. Noise, of two kinds. (a) The eval: a permutation test over cycle labels within each question.
     If nothing changed from cycle to cycle, a question's cycle means are exchangeable, so shuffling
     them gives the distribution of every criterion statistic under "no change", whatever the
     questions' own levels. (b) The models: a model retrained on the same data scores differently
     (training randomness), and one run has one model per cycle, so the null adds an independent
     N(0, cycle_sd) shift to every cycle of every permuted curve (cycle_sd: Criteria, default measured
     on the demo sweep, `--cycle-sd` on report/compare/power). One-sided p-values per criterion and
     direction; a fired criterion counts when p <= alpha / m, where m is the number of criteria that
     apply (Bonferroni), so P(false "amplified") <= alpha, and likewise for "decayed", when the real
     model-to-model noise is at most cycle_sd (tests/test_verdicts.py, `traitloop power`).
  3. Outcome: amplified / decayed when a criterion fires AND is beyond the noise; inconclusive when a
     criterion fires only within the noise, when criteria fire in both directions (rose and fell), or
     when only the slope is beyond the noise and it points against the end delta; static when no
     criterion fires.
  Intervals shown beside it are paired bootstraps over questions plus the same model noise (display;
  the test decides). One run stays weak evidence: with the demo's model noise only large changes
  clear it; seeds answer whether a change is a property of the condition.

Per condition (`decide_condition`), over runs that replicate each other:
  the end delta s_N - s_0 of each INDEPENDENT seed (its own cycle 0) and a Student-t interval over
  seeds. Replicated amplification = at least min_seeds independent seeds, the interval above 0 and the
  mean curve across seeds passing a screening criterion; mirrored for decay; static when the interval
  lies within +-delta; otherwise not replicated (a criterion fires on the mean curve) or inconclusive.
  Seeds that copied one cycle 0 (sweep share_cycle0) share one measurement of s_0 and count as one
  independent seed: with fewer than min_seeds the outcome is "insufficient seeds (n of N)".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from traitloop.analysis import Criteria, criterion_statistics, eval_scores_by_question, prefix_slope, screening_flags, t_interval
from traitloop.errors import UserError
from traitloop.store import CI_UNIT as UNIT  # what every interval resamples: the eval question

TESTED = {"end": ("end", "end"), "slope": ("slope", "slope"), "late": ("late_max", "late_min")}  # criterion -> (up, down) statistic


# ---- the data: one mean per (cycle, question) ------------------------------------------------------
@dataclass
class QuestionScores:
    """Per-question mean trait scores of one run: means[c, q] for cycles[c] and questions[q]. Only
    questions scored in every cycle are kept (pairing needs them all); the others are listed in dropped."""

    cycles: list[int]
    questions: list[str]
    means: np.ndarray  # (n_cycles, n_questions)
    dropped: list[str] = field(default_factory=list)

    @property
    def curve(self) -> np.ndarray:
        """s_0..s_N: the mean over questions of each cycle (equal to the mean over answers when every
        question has the same number of scored samples)."""
        return self.means.mean(axis=1)

    @classmethod
    def from_rows(cls, cycles: list[int], rows_per_cycle: list[list[dict[str, Any]]]) -> QuestionScores:
        """From each cycle's eval rows ({"question", "trait", ...}; trait None = not scored)."""
        per_cycle = [eval_scores_by_question(rows) for rows in rows_per_cycle]
        seen = list(dict.fromkeys(q for groups in per_cycle for q in groups))
        kept = [q for q in seen if all(q in groups for groups in per_cycle)]
        means = np.array([[np.mean(groups[q]) for q in kept] for groups in per_cycle], dtype=float).reshape(len(cycles), len(kept))
        return cls(list(cycles), kept, means, [q for q in seen if q not in kept])


# ---- resampling ------------------------------------------------------------------------------------
def permuted_curves(means: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n_cycles) curves with the cycle labels shuffled independently within every question."""
    n_cycles, n_questions = means.shape
    order = np.argsort(rng.random((n, n_cycles, n_questions)), axis=1)
    return np.take_along_axis(np.broadcast_to(means, (n, n_cycles, n_questions)), order, axis=1).mean(axis=2)


def bootstrap_curves(means: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n_cycles) curves from questions resampled with replacement, the same draw for every cycle
    (so differences between cycles stay paired by question)."""
    n_questions = means.shape[1]
    pick = rng.integers(0, n_questions, size=(n, n_questions))
    return means[:, pick].mean(axis=2).T


def percentile(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


# ---- per run -----------------------------------------------------------------------------------------
@dataclass
class RunDecision:
    verdict: str  # amplified | decayed | static | inconclusive
    rule: str  # why, in words
    curve: list[float]  # s_0..s_N (means over questions)
    statistics: dict[str, float]  # end, slope, late_max, late_min: the criteria's values
    intervals: dict[str, list[float]]  # statistic -> [low, high], paired bootstrap over questions
    p_values: dict[str, dict[str, float]]  # criterion -> {"up": p, "down": p}, permutation test
    threshold: float  # alpha / m: a fired criterion counts when its p is at most this
    flags_up: dict[str, str]  # screening: criteria that fire upwards (point means only)
    flags_down: dict[str, str]
    n_questions: int
    dropped_questions: list[str]
    unit: str = UNIT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_run(scores: QuestionScores, criteria: Criteria = Criteria(), seed: int = 0, intervals: bool = True) -> RunDecision:
    """The run's verdict: screening flags, each tested against the question-level noise (module doc).
    intervals=False skips the bootstrap intervals (simulations need only the verdict)."""
    curve = scores.curve
    n_cycles, n_questions = scores.means.shape
    if n_cycles < 2 or n_questions < 2:
        reason = f"needs >= 2 cycles and >= 2 questions scored in every cycle, got {n_cycles} and {n_questions}"
        return RunDecision("inconclusive", reason, curve.tolist(), {}, {}, {}, float("nan"), {}, {}, n_questions, scores.dropped)
    observed = {k: float(v) for k, v in criterion_statistics(curve, criteria).items()}
    flags_up, flags_down = screening_flags(observed, criteria)
    rng = np.random.default_rng(seed)
    model_noise = rng.normal(0.0, criteria.cycle_sd, (criteria.n_permutations, n_cycles))  # each cycle's model is a new draw
    null = criterion_statistics(permuted_curves(scores.means, criteria.n_permutations, rng) + model_noise, criteria)
    tested = [c for c, (up, _) in TESTED.items() if up in observed]
    threshold = criteria.alpha / len(tested)
    p_values = {}
    for criterion in tested:
        up, down = TESTED[criterion]
        p_values[criterion] = {
            "up": float((1 + np.sum(null[up] >= observed[up] - 1e-9)) / (1 + criteria.n_permutations)),
            "down": float((1 + np.sum(null[down] <= observed[down] + 1e-9)) / (1 + criteria.n_permutations)),
        }
    shown: dict[str, list[float]] = {}
    if intervals:
        boot = criterion_statistics(bootstrap_curves(scores.means, criteria.n_permutations, rng) + model_noise, criteria)
        shown = {k: list(percentile(v, criteria.level)) for k, v in boot.items()}
    sig_up = {c: text for c, text in flags_up.items() if p_values[c]["up"] <= threshold}
    sig_down = {c: text for c, text in flags_down.items() if p_values[c]["down"] <= threshold}

    def described(flags: dict[str, str], direction: str) -> str:
        return "; ".join(f"{text}, p = {p_values[c][direction]:.3f}" for c, text in flags.items())

    noise = f"beyond the noise of {n_questions} questions and of retrained models (sd {criteria.cycle_sd:g} per cycle; permutation test, p <= {threshold:.3g})"
    end = observed["end"]
    if (sig_up and flags_down) or (sig_down and flags_up):
        both = "; ".join(x for x in (described(flags_up, "up"), described(flags_down, "down")) if x)
        beyond = "both beyond the noise" if sig_up and sig_down else f"one of them {noise}"
        verdict, rule = "inconclusive", f"rose and fell by the screening margins, {beyond}: {both}"
    elif (set(sig_up) == {"slope"} and end < 0) or (set(sig_down) == {"slope"} and end > 0):
        verdict = "inconclusive"
        rule = f"only the slope criterion is {noise}, and it points against the end delta ({end:+.1f})"
    elif sig_up:
        verdict, rule = "amplified", f"{described(sig_up, 'up')}: {noise}"
    elif sig_down:
        verdict, rule = "decayed", f"{described(sig_down, 'down')}: {noise}"
    elif flags_up or flags_down:
        fired = "; ".join(x for x in (described(flags_up, "up"), described(flags_down, "down")) if x)
        verdict, rule = "inconclusive", f"screening flag within the noise (needs p <= {threshold:.3g}): {fired}"
    else:
        verdict = "static"
        rule = f"no criterion holds (end delta {end:+.1f}, mean prefix slope {prefix_slope(curve.tolist()):+.2f}/cycle)"
    return RunDecision(
        verdict, rule, curve.tolist(), observed, shown, p_values, threshold, flags_up, flags_down, n_questions, scores.dropped
    )


# ---- per condition (seeds) -------------------------------------------------------------------------
@dataclass
class SeedRun:
    """One seed of a condition: its curve s_0..s_N, and which cycle 0 it measured (runs that copied
    another run's cycle 0 name that run; runs that trained their own name themselves)."""

    name: str
    curve: list[float]
    cycle0_source: str
    verdict: str | None = None  # its per-run verdict, when known


def check_min_seeds(min_seeds: int) -> None:
    if min_seeds < 3:
        raise UserError(f"min seeds {min_seeds}: a replicated verdict needs at least 3 independent seeds (the default is 5)")


def decide_condition(runs: list[SeedRun], criteria: Criteria = Criteria()) -> dict[str, Any]:
    """The condition's verdict over its seeds (module doc). Runs sharing a cycle 0 count once."""
    check_min_seeds(criteria.min_seeds)
    counts = {name: sum(r.verdict == name for r in runs) for name in ("amplified", "static", "decayed", "inconclusive")}
    lengths = {len(r.curve) for r in runs}
    independent: dict[str, SeedRun] = {}
    for run in runs:
        independent.setdefault(run.cycle0_source, run)
    chosen = list(independent.values())
    out: dict[str, Any] = {
        "n_seeds": len(runs),
        "n_independent": len(chosen),
        "min_seeds": criteria.min_seeds,
        "verdicts": counts,
        "level": criteria.level,
        "interval_method": "Student t over independent seeds",
    }
    ends = np.array([r.curve[-1] - r.curve[0] for r in chosen], dtype=float)
    slopes = np.array([prefix_slope(r.curve) for r in chosen], dtype=float)
    for key, values in (("end_delta", ends), ("mean_prefix_slope", slopes)):
        mean, low, high, _ = t_interval(list(values), criteria.level)
        out[key] = {"mean": mean, "low": low, "high": high}
    if len(lengths) > 1:
        out["overall"], out["reason"] = "inconclusive", f"the seeds have different numbers of cycles ({sorted(lengths)}); finish them first"
        return out
    if len(chosen) < criteria.min_seeds:
        copied = len(runs) - len(chosen)
        why = (
            f" ({copied} of its {len(runs)} seeds copied another seed's cycle 0: they share its measurement of s_0 and count once)"
            if copied
            else ""
        )
        out["overall"] = f"insufficient seeds ({len(chosen)} of {criteria.min_seeds})"
        out["reason"] = f"a replicated verdict needs {criteria.min_seeds} independent seeds, this condition has {len(chosen)}{why}"
        return out
    mean_curve = np.mean([r.curve for r in chosen], axis=0)
    flags_up, flags_down = screening_flags({k: float(v) for k, v in criterion_statistics(mean_curve, criteria).items()}, criteria)
    low, high = out["end_delta"]["low"], out["end_delta"]["high"]
    ci = f"{criteria.level:.0%} t-interval of s_N - s_0 over {len(chosen)} seeds [{low:+.1f}, {high:+.1f}]"
    if low > 0 and flags_up:
        out["overall"], out["reason"] = (
            "replicated amplification",
            f"{ci} lies above 0 and the mean curve passes: {'; '.join(flags_up.values())}",
        )
    elif high < 0 and flags_down:
        out["overall"], out["reason"] = "replicated decay", f"{ci} lies below 0 and the mean curve passes: {'; '.join(flags_down.values())}"
    elif -criteria.delta < low and high < criteria.delta and not (flags_up or flags_down):
        out["overall"], out["reason"] = "static", f"{ci} rules out a change of {criteria.delta:g} points either way"
    elif flags_up or flags_down:
        out["overall"], out["reason"] = (
            "not replicated",
            f"the mean curve passes {'; '.join({**flags_up, **flags_down}.values())}, but the {ci} includes 0 or points the other way",
        )
    else:
        out["overall"], out["reason"] = (
            "inconclusive",
            f"no criterion fires on the mean curve, but the {ci} cannot rule out a change of {criteria.delta:g} points",
        )
    return out
