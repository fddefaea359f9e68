"""Figures for a run: trait and coherence per cycle, with bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_trait_coherence(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = [r["cycle"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(cycles, [r["trait_mean"] for r in rows], "o-", color="tab:purple", label="trait (probe, 0-100)")
    ax.fill_between(cycles, [r["trait_ci_low"] for r in rows], [r["trait_ci_high"] for r in rows], color="tab:purple", alpha=0.2)
    ax.set_xlabel("cycle (generation)")
    ax.set_ylabel("trait score (0-100)", color="tab:purple")
    ax.set_ylim(0, 100)
    ax.set_xticks(cycles)
    ax2 = ax.twinx()
    ax2.plot(cycles, [r["coherence_mean"] for r in rows], "s--", color="tab:green", label="coherence (log-lik under base)")
    ax2.fill_between(cycles, [r["coherence_ci_low"] for r in rows], [r["coherence_ci_high"] for r in rows], color="tab:green", alpha=0.15)
    ax2.set_ylabel("coherence: mean log-prob per token (nats)", color="tab:green")
    lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
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
