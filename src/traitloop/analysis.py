"""Statistics on score tables: pure functions, no I/O."""

from __future__ import annotations

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
