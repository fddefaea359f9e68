"""Statistics on score tables: pure functions, no I/O.

The screening criteria follow PROTOCOL.md ("Calling a run amplified"), on per-cycle mean trait
scores s_0..s_N (0-100). In the paper they *flag* runs; traitloop.verdicts decides whether a flag is
more than the noise of the eval questions (per run) and whether it replicates over seeds:
  1. end delta   s_N - s_0 >= delta                                   (default delta 15 points)
  2. slope       mean over k=1..N of the least-squares slope of s_0..s_k >= min_slope (1.67/cycle);
                 only with N >= 2 (a "slope" through two points is just the end delta, and would call
                 a 2-point change amplified)
  3. late delta  some s_k - s_0 >= delta with k >= late_from (4)
`classify` is the screening on point means alone: "amplified" when any criterion holds, "decayed" when the mirrored criteria hold (drops
instead of rises), "static" when neither does, and "inconclusive" when both do (it rose and fell
by the margins), when the slope criterion alone fires against the sign of s_N - s_0 (a dip early
on can make the mean prefix slope negative although the run ends higher), or when there are too
few finite cycles (< 2) to judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def t_interval(values: list[float | None], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n): Student-t interval of the mean of the non-missing values, for a few
    independent replications (seeds), where a bootstrap over 2-5 values would be far too narrow.
    With no values: (nan, nan, nan, 0). With one value the interval collapses onto it."""
    from scipy import stats

    x = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean, 1
    half = float(stats.t.ppf(1 - (1 - level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half, int(x.size)


def scores_by_question(values: list[float | None], questions: list[str]) -> dict[str, list[float]]:
    """The finite scores grouped by their eval question, questions in first-seen order (missing or
    non-finite scores, i.e. answers the judge could not score, are left out)."""
    groups: dict[str, list[float]] = {}
    for value, question in zip(values, questions):
        if value is not None and np.isfinite(value):
            groups.setdefault(str(question), []).append(float(value))
    return groups


def eval_scores_by_question(rows: list[dict]) -> dict[str, list[float]]:
    """One cycle's eval.jsonl rows ({"question", "trait"}) as trait scores grouped by question."""
    return scores_by_question([r.get("trait") for r in rows], [str(r.get("question", "")) for r in rows])


def question_mean_ci(
    values: list[float | None], questions: list[str], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of one cycle's answers, the interval from a bootstrap over eval QUESTIONS:
    answers to one question are alike, so they are resampled as a block (all of a drawn question's
    samples together), never one by one as if independent. The mean is over all scored answers; n
    counts scored answers. With one question the interval collapses onto the mean."""
    groups = scores_by_question(values, questions)
    if not groups:
        return float("nan"), float("nan"), float("nan"), 0
    sums = np.array([sum(g) for g in groups.values()])
    counts = np.array([len(g) for g in groups.values()], dtype=float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    boots = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    alpha = (1 - level) / 2
    mean = float(sums.sum() / counts.sum())
    return mean, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)), int(counts.sum())


@dataclass(frozen=True)
class Criteria:
    """The screening criteria (PROTOCOL.md) and the noise-aware decision settings (traitloop.verdicts)."""

    delta: float = 15.0  # points on the 0-100 scale, for end delta and late delta
    min_slope: float = 1.67  # points per cycle, for the mean prefix slope
    slope_min_cycles: int = 3  # the slope criterion needs s_0..s_N with at least this many cycles
    late_from: int = 4  # late delta looks at cycles k >= late_from
    alpha: float = 0.05  # per run and per direction: the largest allowed rate of a false "amplified" (or "decayed")
    n_permutations: int = 2000  # permutations of cycle labels per run (the test's Monte-Carlo resolution)
    level: float = 0.95  # confidence level of every interval shown
    min_seeds: int = 5  # independent seeds a replicated verdict needs (values below 3 are refused)
    # points: how far a cycle's mean trait score moves when its model is retrained (training randomness,
    # not eval noise); the per-run test allows for it. Default: measured on the demo sweep with
    # `traitloop power --from sweeps/bliss-init` (docs/RESULTS.md); set your own with --cycle-sd.
    cycle_sd: float = 6.9


def _slope(y: np.ndarray) -> float:
    x = np.arange(len(y), dtype=float)
    return float(np.polyfit(x, y, 1)[0])


def prefix_slope(scores: list[float]) -> float:
    """Mean of the least-squares slopes fitted to s_0..s_k for k = 1..N (points per cycle)."""
    s = np.asarray(scores, dtype=float)
    if s.size < 2:
        return float("nan")
    return float(np.mean([_slope(s[: k + 1]) for k in range(1, s.size)]))


def prefix_slope_weights(n_cycles: int) -> np.ndarray:
    """w with prefix_slope(s) == w @ s for curves of n_cycles points (the statistic is linear in s),
    so it can be computed for thousands of resampled curves at once."""
    return np.array([prefix_slope(list(np.eye(n_cycles)[c])) for c in range(n_cycles)])


def criterion_statistics(curves: np.ndarray, criteria: Criteria) -> dict[str, np.ndarray]:
    """The criteria's statistics for curves of shape (..., n_cycles): end delta, mean prefix slope
    and (when the run is long enough) the largest and smallest late delta. Only the statistics whose
    criterion applies to this many cycles are returned."""
    n = curves.shape[-1]
    out = {"end": curves[..., -1] - curves[..., 0]}
    if n >= criteria.slope_min_cycles:
        out["slope"] = curves @ prefix_slope_weights(n)
    if n > criteria.late_from:
        late = curves[..., criteria.late_from :] - curves[..., :1]
        out["late_max"] = late.max(axis=-1)
        out["late_min"] = late.min(axis=-1)
    return out


def screening_flags(stats: dict[str, float], criteria: Criteria) -> tuple[dict[str, str], dict[str, str]]:
    """The criteria that fire upwards and downwards, as {name: description}; names are end, slope, late
    (late is tested with late_max upwards and late_min downwards)."""
    up: dict[str, str] = {}
    down: dict[str, str] = {}
    end = stats["end"]
    if end >= criteria.delta:
        up["end"] = f"end delta {end:+.1f} >= {criteria.delta:g}"
    if end <= -criteria.delta:
        down["end"] = f"end delta {end:+.1f} <= -{criteria.delta:g}"
    if "slope" in stats:
        slope = stats["slope"]
        if slope >= criteria.min_slope:
            up["slope"] = f"mean prefix slope {slope:+.2f} >= {criteria.min_slope:g}/cycle"
        if slope <= -criteria.min_slope:
            down["slope"] = f"mean prefix slope {slope:+.2f} <= -{criteria.min_slope:g}/cycle"
    if "late_max" in stats and stats["late_max"] >= criteria.delta:
        up["late"] = f"late delta {stats['late_max']:+.1f} >= {criteria.delta:g} (cycle >= {criteria.late_from})"
    if "late_min" in stats and stats["late_min"] <= -criteria.delta:
        down["late"] = f"late delta {stats['late_min']:+.1f} <= -{criteria.delta:g} (cycle >= {criteria.late_from})"
    return up, down


@dataclass
class Verdict:
    verdict: str  # amplified | decayed | static | inconclusive
    rule: str  # the criteria that produced it, in words
    end_delta: float
    mean_prefix_slope: float
    max_late_delta: float | None
    min_late_delta: float | None
    criteria_up: list[str] = field(default_factory=list)
    criteria_down: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def classify(scores: list[float], criteria: Criteria = Criteria()) -> Verdict:
    """Screening verdict for one run from its per-cycle mean trait scores s_0..s_N, on the point
    means alone (no noise): the paper's flag. traitloop.verdicts.decide_run adds the noise."""
    s = np.asarray(scores, dtype=float)
    if s.size < 2 or not np.all(np.isfinite(s)):
        return Verdict("inconclusive", f"needs >= 2 finite cycle scores, got {s.tolist()}", float("nan"), float("nan"), None, None)
    stats = {k: float(v) for k, v in criterion_statistics(s, criteria).items()}
    end = stats["end"]
    slope = prefix_slope(s.tolist())
    up_flags, down_flags = screening_flags(stats, criteria)
    up, down = list(up_flags.values()), list(down_flags.values())
    slope_only = (up and set(up_flags) == {"slope"} and end < 0) or (down and set(down_flags) == {"slope"} and end > 0)
    if up and down:
        verdict, rule = "inconclusive", "both rise and fall criteria hold: " + "; ".join(up + down)
    elif slope_only:
        verdict = "inconclusive"
        rule = f"only the slope criterion holds and it points against the end delta ({end:+.1f}): " + "; ".join(up + down)
    elif up:
        verdict, rule = "amplified", "; ".join(up)
    elif down:
        verdict, rule = "decayed", "; ".join(down)
    else:
        verdict = "static"
        rule = f"no criterion holds (end delta {end:+.1f}, mean prefix slope {slope:+.2f}/cycle)"
    return Verdict(verdict, rule, end, slope, stats.get("late_max"), stats.get("late_min"), up, down)


def tradeoff(trait_runs: list[list[float]], coherence_runs: list[list[float]]) -> dict:
    """Change in trait vs change in coherence (last minus first cycle) per run, and their
    Pearson and Spearman correlations across runs (nan with fewer than 3 runs)."""
    from scipy.stats import pearsonr, spearmanr

    d_trait = [float(t[-1] - t[0]) for t in trait_runs]
    d_coh = [float(c[-1] - c[0]) for c in coherence_runs]
    if len(d_trait) >= 3 and np.std(d_trait) > 0 and np.std(d_coh) > 0:
        pearson = float(pearsonr(d_trait, d_coh)[0])
        spearman = float(spearmanr(d_trait, d_coh)[0])
    else:
        pearson = spearman = float("nan")
    return {"delta_trait": d_trait, "delta_coherence": d_coh, "pearson": pearson, "spearman": spearman}


def idempotence(scores: list[float]) -> dict:
    """How much later cycles move the trait compared with the first self-training step.

    first_step = |s_1 - s_0|; later_steps = mean |s_k - s_(k-1)| for k >= 2; ratio = later / first
    (small ratio = later cycles are close to idempotent)."""
    s = np.asarray(scores, dtype=float)
    if s.size < 3:
        return {"first_step": float(abs(s[1] - s[0])) if s.size == 2 else float("nan"), "later_steps": float("nan"), "ratio": float("nan")}
    first = float(abs(s[1] - s[0]))
    later = float(np.mean(np.abs(np.diff(s[1:]))))
    return {"first_step": first, "later_steps": later, "ratio": later / first if first > 0 else float("inf")}
