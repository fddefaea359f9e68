"""n_seed calibration (PROTOCOL "Calibration of n_seed"): for each target trait score, the smallest
n_seed on a grid whose cycle-0 model reaches it, found by binary search.

Every cycle-0 model tried is an ordinary run with cycles=0 under out_dir/cycle0-cache/ (named by a
hash of everything that decides cycle 0: ExperimentConfig.cycle0_config), so
- a rerun of the calibration reuses every trial already trained (resume for free), and
- a later `traitloop run` whose cycle 0 is one of them adopts it instead of training it again.
Binary search assumes the score rises with n_seed; every measured point is kept in calibration.json,
and a point that breaks that assumption is reported there as a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.jsonl import write_json

DEFAULT_GRID = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 200)


def parse_numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{what}: give at least one number")
    return values


def calibrate(config: ExperimentConfig, targets: list[float], grid: list[int], on_trial=None, run_cycle0=None) -> dict[str, Any]:
    """Binary search per target over `grid`; returns (and writes) the calibration record.
    run_cycle0(trial_config) -> cycle 0's metrics row (default: train and evaluate it, traitloop.loop)."""
    from traitloop.settings import get_setting
    from traitloop.traits import load_trait

    if any(not 0 <= t <= 100 for t in targets):
        raise UserError(f"--targets: trait scores are 0-100, got {targets}")
    available = len(get_setting(config.setting).seed_examples(load_trait(config.trait)))
    usable = sorted({int(n) for n in grid if 1 <= n <= available})
    if not usable:
        raise UserError(f"--grid: no n_seed in {grid} is between 1 and the {available} seed examples trait '{config.trait}' has")
    out_dir = Path(config.out_dir) / f"{config.name}-calibration"
    measured: dict[int, dict[str, Any]] = {}

    def score(n: int) -> float:
        if n not in measured:
            trial = config.model_copy(update={"n_seed": n}).cycle0_config()
            if on_trial:
                on_trial(n, trial.run_dir)
            row = (run_cycle0 or _run_cycle0)(trial)
            measured[n] = {
                "n_seed": n,
                "trait_mean": row["trait_mean"],
                "trait_ci_low": row["trait_ci_low"],
                "trait_ci_high": row["trait_ci_high"],
                "coherence_mean": row["coherence_mean"],
                "run_dir": str(trial.run_dir),
            }
        return measured[n]["trait_mean"]

    found: dict[str, int | None] = {}
    notes: list[str] = []
    for target in sorted(targets):
        lo, hi = 0, len(usable) - 1
        if score(usable[hi]) >= target:
            while lo < hi:
                mid = (lo + hi) // 2
                if score(usable[mid]) >= target:
                    hi = mid
                else:
                    lo = mid + 1
            answer: int | None = usable[lo]
        else:
            answer = None  # not reached with the most seed data...
        # ...but the score need not rise with n_seed: a smaller n_seed measured for another target may reach it
        reached = [n for n, m in measured.items() if m["trait_mean"] >= target]
        if reached and (answer is None or min(reached) < answer):
            notes.append(
                f"target {target:g}: the search's answer was {answer}, but n_seed={min(reached)} (measured "
                "for another target) reaches it; that smaller n_seed is reported"
            )
            answer = min(reached)
        found[f"{target:g}"] = answer

    points = [measured[n] for n in sorted(measured)]
    warnings = [
        f"score fell from n_seed={a['n_seed']} ({a['trait_mean']:.1f}) to n_seed={b['n_seed']} ({b['trait_mean']:.1f}): "
        "the binary search assumes it rises; treat the nearby answers with care"
        for a, b in zip(points, points[1:])
        if b["trait_mean"] < a["trait_mean"] - max(0.0, (a["trait_ci_high"] - a["trait_ci_low"]) / 2)
    ] + notes
    record = {
        "config": config.model_dump(mode="json"),
        "targets": [float(t) for t in sorted(targets)],
        "grid": usable,
        "n_seed_for_target": found,
        "measured": points,
        "warnings": warnings,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "calibration.json", record)
    plot_calibration(record, out_dir / "calibration.png")
    record["out_dir"] = str(out_dir)
    return record


def plot_calibration(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = record["measured"]
    xs = [p["n_seed"] for p in pts]
    ys = [p["trait_mean"] for p in pts]
    err = [[y - p["trait_ci_low"] for y, p in zip(ys, pts)], [p["trait_ci_high"] - y for y, p in zip(ys, pts)]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label="cycle-0 trait score (95% CI)")
    for target in record["targets"]:
        n = record["n_seed_for_target"][f"{target:g}"]
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.annotate(
            f"target {target:g}: n_seed = {n if n is not None else 'not reached'}",
            (xs[0], target),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
            color="dimgrey",
        )
    ax.set_xscale("log")
    ax.set_xlabel("n_seed (log scale)")
    ax.set_ylabel("trait score (0-100)")
    cfg = record["config"]
    ax.set_title(f"n_seed calibration: {cfg['setting'].upper()} / {cfg['trait']} / {cfg['model']['ref']}", fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_cycle0(trial: ExperimentConfig) -> dict[str, Any]:
    from traitloop.loop import Experiment

    return Experiment(trial).run()[0]
