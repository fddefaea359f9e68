"""Figures for a run: trait and coherence per cycle, with bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_trait_coherence(rows: list[dict[str, Any]], path: Path, title: str, base: dict[str, Any] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = [r["cycle"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(cycles, [r["trait_mean"] for r in rows], "o-", color="tab:purple", label="trait (probe, 0-100)")
    ax.fill_between(cycles, [r["trait_ci_low"] for r in rows], [r["trait_ci_high"] for r in rows], color="tab:purple", alpha=0.2)
    if base:
        ax.axhline(base["trait_mean"], color="tab:purple", ls=":", lw=1.2, label="untrained base: trait")
        ax.axhspan(base["trait_ci_low"], base["trait_ci_high"], color="tab:purple", alpha=0.06)
    ax.set_xlabel("cycle (generation)")
    ax.set_ylabel("trait score (0-100)", color="tab:purple")
    ax.set_ylim(0, 100)
    ax.set_xticks(cycles)
    ax2 = ax.twinx()
    ax2.plot(cycles, [r["coherence_mean"] for r in rows], "s--", color="tab:green", label="coherence (log-lik under base)")
    ax2.fill_between(cycles, [r["coherence_ci_low"] for r in rows], [r["coherence_ci_high"] for r in rows], color="tab:green", alpha=0.15)
    if base:
        ax2.axhline(base["coherence_mean"], color="tab:green", ls=":", lw=1.2, label="untrained base: coherence")
    ax2.set_ylabel("coherence: mean log-prob per token (nats)", color="tab:green")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
