"""Figures for runs and collections of runs (PNG and SVG): matplotlib only, plain data in, files out.

Every plotting function takes plain lists and dicts (score rows as in scores.csv, per-cycle curves),
draws one idea, and writes `path` (PNG) plus the same figure as SVG beside it, both atomically. The
trait axis is always 0-100 so figures stay comparable; the coherence axis (mean log-prob per token,
negative nats) can be given shared limits by the caller so several figures line up.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from traitloop.analysis import t_interval

TRAIT_COLOR = "tab:purple"
COHERENCE_COLOR = "tab:green"
TRAIT_LABEL = "trait score (0-100)"
COHERENCE_LABEL = "coherence (nats/token)"


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def condition_color(index: int) -> str:
    """A stable colour for the index-th condition (tab10, then repeating)."""
    palette = ["tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:green", "tab:gray"]
    return palette[index % len(palette)]


def save_figure(fig, path: Path) -> Path:
    """Write fig as PNG at `path` and as SVG beside it (temp file, then rename); close it."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        tmp = target.with_name(f".{target.name}")
        fig.savefig(tmp, format=fmt)
        tmp.replace(target)
    plt.close(fig)
    return path


def seed_band(curves: list[list[float]], level: float = 0.95) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per cycle across seeds: (cycles, mean, low, high), a Student-t interval over seeds.

    Seeds may have different lengths (a run still going): each cycle uses the seeds that reached it.
    With one seed the band collapses onto the line.
    """
    n_cycles = max((len(c) for c in curves), default=0)
    cycles, mean, low, high = [], [], [], []
    for k in range(n_cycles):
        m, lo, hi, n = t_interval([c[k] for c in curves if k < len(c)], level=level)
        if n:
            cycles.append(k)
            mean.append(m)
            low.append(lo)
            high.append(hi)
    return cycles, mean, low, high


def draw_seeds(ax, curves: list[list[float]], color: str, label: str | None = None) -> None:
    """One thin line per seed, then the mean across seeds with its t-interval band, on ax."""
    for curve in curves:
        ax.plot(range(len(curve)), curve, "--", color=color, lw=1.0, alpha=0.7)  # visible at the band edges
    cycles, mean, low, high = seed_band(curves)
    n = len(curves)
    ax.plot(cycles, mean, "o-", color=color, lw=2, ms=4, label=f"{label} (mean of {n} seed{'s' if n != 1 else ''})" if label else None)
    ax.fill_between(cycles, low, high, color=color, alpha=0.18)


def _integer_cycles(ax, n_cycles: int) -> None:
    """x axis = cycle numbers 0..n_cycles-1, as integers."""
    ax.set_xlabel("cycle (generation)")
    if n_cycles:
        ax.set_xticks(range(n_cycles))


def plot_trait_coherence(
    rows: list[dict[str, Any]],
    path: Path,
    title: str,
    base: dict[str, Any] | None = None,
    coherence_ylim: tuple[float, float] | None = None,
) -> Path:
    """One run: trait and coherence per cycle with their 95% bootstrap bands (over eval questions), and
    the untrained base model as dotted reference lines when given. Writes PNG (path) and SVG."""
    plt = _pyplot()
    cycles = [r["cycle"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(cycles, [r["trait_mean"] for r in rows], "o-", color=TRAIT_COLOR, label="trait (probe, 0-100)")
    ax.fill_between(cycles, [r["trait_ci_low"] for r in rows], [r["trait_ci_high"] for r in rows], color=TRAIT_COLOR, alpha=0.2)
    if base:
        ax.axhline(base["trait_mean"], color=TRAIT_COLOR, ls=":", lw=1.2, label="untrained base: trait")
        ax.axhspan(base["trait_ci_low"], base["trait_ci_high"], color=TRAIT_COLOR, alpha=0.06)
    ax.set_xlabel("cycle (generation)")
    ax.set_ylabel(TRAIT_LABEL, color=TRAIT_COLOR)
    ax.set_ylim(0, 100)
    ax.set_xticks(cycles)
    ax2 = ax.twinx()
    ax2.plot(cycles, [r["coherence_mean"] for r in rows], "s--", color=COHERENCE_COLOR, label="coherence (log-lik under base)")
    ax2.fill_between(
        cycles, [r["coherence_ci_low"] for r in rows], [r["coherence_ci_high"] for r in rows], color=COHERENCE_COLOR, alpha=0.15
    )
    if base:
        ax2.axhline(base["coherence_mean"], color=COHERENCE_COLOR, ls=":", lw=1.2, label="untrained base: coherence")
    ax2.set_ylabel("coherence: mean log-prob per token (nats)", color=COHERENCE_COLOR)
    if coherence_ylim:
        ax2.set_ylim(*coherence_ylim)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_condition(
    trait_curves: list[list[float]],
    coherence_curves: list[list[float]],
    path: Path,
    title: str,
    coherence_ylim: tuple[float, float] | None = None,
) -> Path:
    """One condition (several seeds): trait (left) and coherence (right) per cycle, a thin line per
    seed and the mean across seeds with a 95% Student-t band over seeds."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    draw_seeds(left, trait_curves, TRAIT_COLOR, "trait")
    left.set_ylim(0, 100)
    left.set_ylabel(TRAIT_LABEL)
    draw_seeds(right, coherence_curves, COHERENCE_COLOR, "coherence")
    right.set_ylabel(COHERENCE_LABEL)
    if coherence_ylim:
        right.set_ylim(*coherence_ylim)
    n_cycles = max((len(c) for c in trait_curves), default=0)
    for ax in (left, right):
        _integer_cycles(ax, n_cycles)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_overview(
    conditions: list[tuple[str, list[list[float]], list[list[float]]]],
    path: Path,
    title: str,
    coherence_ylim: tuple[float, float] | None = None,
) -> Path:
    """Several conditions on shared axes: per condition (label, trait curves, coherence curves) the
    mean across seeds with its Student-t band; trait left, coherence right."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    n_cycles = 0
    for i, (label, trait_curves, coherence_curves) in enumerate(conditions):
        color = condition_color(i)
        draw_seeds(left, trait_curves, color, label)
        draw_seeds(right, coherence_curves, color, label)
        n_cycles = max([n_cycles] + [len(c) for c in trait_curves])
    left.set_ylim(0, 100)
    left.set_ylabel(TRAIT_LABEL)
    left.set_title("trait", fontsize=10)
    right.set_ylabel(COHERENCE_LABEL)
    right.set_title("coherence", fontsize=10)
    if coherence_ylim:
        right.set_ylim(*coherence_ylim)
    for ax in (left, right):
        _integer_cycles(ax, n_cycles)
        ax.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 3), 1, 1))
    return save_figure(fig, path)


def plot_sweep_grid(panels: dict[tuple[str, str], list[list[float]]], path: Path, title: str) -> Path:
    """A grid of trait panels: rows = trait, columns = condition label; each panel has a thin line
    per seed and the mean with its band. `panels` maps (trait, label) -> trait curves; an empty
    cell (no runs for that pair) says so."""
    plt = _pyplot()
    traits = sorted({t for t, _ in panels})
    labels = sorted({lab for _, lab in panels})
    fig, axes = plt.subplots(
        len(traits),
        len(labels),
        figsize=(3.2 * len(labels) + 0.8, 2.6 * len(traits) + 0.8),
        dpi=110,
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    n_cycles = max((len(c) for curves in panels.values() for c in curves), default=0)
    for i, trait in enumerate(traits):
        for j, label in enumerate(labels):
            ax = axes[i][j]
            curves = panels.get((trait, label))
            if curves:
                draw_seeds(ax, curves, TRAIT_COLOR)
                ax.text(0.02, 0.95, f"{len(curves)} seed{'s' if len(curves) != 1 else ''}", transform=ax.transAxes, fontsize=7, va="top")
            else:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="gray")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(textwrap.fill(label, 34), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{trait}\ntrait (0-100)", fontsize=9)
            if i == len(traits) - 1:
                _integer_cycles(ax, n_cycles)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tradeoff(points: list[tuple[str, float, float]], path: Path, title: str) -> Path:
    """Trait change vs coherence change (last minus first cycle), one dot per run, coloured by its
    condition label; `points` = (label, delta_trait, delta_coherence)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    labels = list(dict.fromkeys(label for label, _, _ in points))
    for i, label in enumerate(labels):
        xs = [dt for lab, dt, _ in points if lab == label]
        ys = [dc for lab, _, dc in points if lab == label]
        ax.scatter(xs, ys, color=condition_color(i), label=label, s=30, alpha=0.85)
    ax.axhline(0, color="gray", lw=0.8)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_xlabel("trait change, last - first cycle (points)")
    ax.set_ylabel("coherence change, last - first cycle (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_vs_n_sampled(points: list[tuple[str, float, float]], path: Path, title: str) -> Path:
    """Data quantity: trait change (last - first cycle) against n_sampled, one dot per run and the
    mean per n_sampled with a 95% Student-t interval, one series per group label; `points` =
    (label, n_sampled, delta_trait)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    labels = list(dict.fromkeys(label for label, _, _ in points))
    for i, label in enumerate(labels):
        color = condition_color(i)
        mine = [(n, d) for lab, n, d in points if lab == label]
        ax.scatter([n for n, _ in mine], [d for _, d in mine], color=color, s=18, alpha=0.45)
        xs = sorted({n for n, _ in mine})
        stats = [t_interval([d for n, d in mine if n == x]) for x in xs]
        means = [s[0] for s in stats]
        errors = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
        ax.errorbar(xs, means, yerr=errors, fmt="o-", color=color, capsize=3, label=label)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ticks = sorted({n for _, n, _ in points})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("n_sampled (generated training examples per cycle, log scale)")
    ax.set_ylabel("trait change, last - first cycle (points)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
