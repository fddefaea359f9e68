"""Statistics on score tables: pure functions, no I/O.

The amplification criteria follow PROTOCOL.md ("Calling a run amplified"), on per-cycle mean trait
scores s_0..s_N (0-100):
  1. end delta   s_N - s_0 >= delta                                   (default delta 15 points)
  2. slope       mean over k=1..N of the least-squares slope of s_0..s_k >= min_slope (1.67/cycle);
                 only with N >= 2 (a "slope" through two points is just the end delta, and would call
                 a 2-point change amplified)
  3. late delta  some s_k - s_0 >= delta with k >= late_from (4)
A run is "amplified" when any criterion holds, "decayed" when the mirrored criteria hold (drops
instead of rises), "static" when neither does, and "inconclusive" when both do (it rose and fell
by the margins), when the slope criterion alone fires against the sign of s_N - s_0 (a dip early
on can make the mean prefix slope negative although the run ends higher), or when there are too
few finite cycles (< 2) to judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def mean_ci(values: list[float | None], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with a percentile bootstrap interval over the non-missing values.

    With no values: (nan, nan, nan, 0). With one value the interval collapses onto it.
    """
    x = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)), int(x.size)


@dataclass(frozen=True)
class Criteria:
    delta: float = 15.0  # points on the 0-100 scale, for end delta and late delta
    min_slope: float = 1.67  # points per cycle, for the mean prefix slope
    slope_min_cycles: int = 3  # the slope criterion needs s_0..s_N with at least this many cycles
    late_from: int = 4  # late delta looks at cycles k >= late_from


def _slope(y: np.ndarray) -> float:
    x = np.arange(len(y), dtype=float)
    return float(np.polyfit(x, y, 1)[0])


def prefix_slope(scores: list[float]) -> float:
    """Mean of the least-squares slopes fitted to s_0..s_k for k = 1..N (points per cycle)."""
    s = np.asarray(scores, dtype=float)
    if s.size < 2:
        return float("nan")
    return float(np.mean([_slope(s[: k + 1]) for k in range(1, s.size)]))


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
    """Verdict for one run from its per-cycle mean trait scores s_0..s_N."""
    s = np.asarray(scores, dtype=float)
    if s.size < 2 or not np.all(np.isfinite(s)):
        return Verdict("inconclusive", f"needs >= 2 finite cycle scores, got {s.tolist()}", float("nan"), float("nan"), None, None)
    end = float(s[-1] - s[0])
    slope = prefix_slope(s.tolist())
    late = s[criteria.late_from :] - s[0] if s.size > criteria.late_from else np.array([])
    max_late = float(late.max()) if late.size else None
    min_late = float(late.min()) if late.size else None
    up, down = [], []
    if end >= criteria.delta:
        up.append(f"end delta {end:+.1f} >= {criteria.delta:g}")
    if end <= -criteria.delta:
        down.append(f"end delta {end:+.1f} <= -{criteria.delta:g}")
    if s.size >= criteria.slope_min_cycles and slope >= criteria.min_slope:
        up.append(f"mean prefix slope {slope:+.2f} >= {criteria.min_slope:g}/cycle")
    if s.size >= criteria.slope_min_cycles and slope <= -criteria.min_slope:
        down.append(f"mean prefix slope {slope:+.2f} <= -{criteria.min_slope:g}/cycle")
    if max_late is not None and max_late >= criteria.delta:
        up.append(f"late delta {max_late:+.1f} >= {criteria.delta:g} (cycle >= {criteria.late_from})")
    if min_late is not None and min_late <= -criteria.delta:
        down.append(f"late delta {min_late:+.1f} <= -{criteria.delta:g} (cycle >= {criteria.late_from})")
    slope_only = (up and all("slope" in c for c in up) and end < 0) or (down and all("slope" in c for c in down) and end > 0)
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
    return Verdict(verdict, rule, end, slope, max_late, min_late, up, down)


def bootstrap_interval(values: list[float], level: float = 0.95, n_boot: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a statistic across seeds, by a percentile bootstrap over seeds."""
    mean, low, high, _ = mean_ci(values, level=level, n_boot=n_boot, seed=seed)
    return mean, low, high


def replicated_verdict(runs: list[list[float]], criteria: Criteria = Criteria(), level: float = 0.95) -> dict:
    """Across seeds of one condition: bootstrap intervals of s_N - s_0 and of the mean prefix slope,
    the per-seed verdicts, and "replicated amplification" = the majority of seeds amplified AND the
    interval of s_N - s_0 lies entirely above zero (mirrored for decay)."""
    verdicts = [classify(r, criteria) for r in runs]
    ends = [v.end_delta for v in verdicts if np.isfinite(v.end_delta)]
    slopes = [v.mean_prefix_slope for v in verdicts if np.isfinite(v.mean_prefix_slope)]
    end_mean, end_lo, end_hi = bootstrap_interval(ends, level)
    slope_mean, slope_lo, slope_hi = bootstrap_interval(slopes, level)
    counts = {name: sum(v.verdict == name for v in verdicts) for name in ("amplified", "static", "decayed", "inconclusive")}
    n = len(runs)
    if n >= 2 and counts["amplified"] > n / 2 and end_lo > 0:
        overall = "replicated amplification"
    elif n >= 2 and counts["decayed"] > n / 2 and end_hi < 0:
        overall = "replicated decay"
    elif n < 2:
        overall = f"single seed: {verdicts[0].verdict}" if verdicts else "no runs"
    else:
        overall = "not replicated"
    return {
        "n_seeds": n,
        "verdicts": counts,
        "overall": overall,
        "end_delta": {"mean": end_mean, "low": end_lo, "high": end_hi},
        "mean_prefix_slope": {"mean": slope_mean, "low": slope_lo, "high": slope_hi},
        "level": level,
    }


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
