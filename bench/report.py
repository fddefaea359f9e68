"""Markdown tables for BENCHMARKS.md from a results file: `python -m bench.report [bench/results/latest.json]`.

One table per benchmark (command, machine, date, traitloop, reference, ratio, utilisation), then the
cycle profile and the candidate speed-ups. The prose around them in BENCHMARKS.md is written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def num(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if abs(x) >= 10 else f"{x:.2f}"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render(result: dict) -> str:
    m = result["machine"]
    machine = (
        f"{m['cores']} cores, {m['cpu_model']} ({', '.join(m['cpu_flags'])}), torch {m['torch']}, "
        f"{result.get('threads', m['cores'])} torch thread(s)" + (f", {m['libraries']}" if m.get("libraries") else "")
    )
    peak = result["peak_gflops"]
    out = [
        f"Command: `{result['command']}`  ",
        f"Machine: {machine}, shared with other jobs (load average {result['load_average_start_end'][0]} at start, "
        f"{result['load_average_start_end'][1]} at end)  ",
        f"Date: {m['date']}; whole bench {result['wall_s'] / 60:.1f} min  ",
        f"Measured peak: fp32 {peak['fp32']['best']:.0f} GFLOP/s, bf16 {peak['bf16']['best']:.0f} GFLOP/s "
        f"(square matmuls {', '.join(str(k) for k in peak['fp32']['per_size'])}); memory copy "
        f"{result['memory_copy_gbs']:.1f} GB/s; model N = {result['params']:,} parameters  ",
        f"FLOPs: {result['flop_formula']}",
        "",
    ]
    for r in result["rows"]:
        direction = "higher is better" if r["higher_is_better"] else "lower is better"
        out += [
            f"### {r['name']}",
            "",
            "| | traitloop | reference | ratio (traitloop / reference) | utilisation (traitloop / reference) |",
            "|---|---|---|---|---|",
            f"| {r['unit']} ({direction}) | {num(r['traitloop'])} | {num(r['reference'])} | {num(r['ratio'])} | "
            f"{pct(r['util_traitloop'])} / {pct(r['util_reference'])} |",
            "",
        ]
        if r.get("note"):
            out += [f"{r['note']}.", ""]
    cycle = next((r for r in result["rows"] if r["name"].startswith("full cycle")), None)
    if cycle:
        ours, ref = cycle["extra"]["traitloop_profile"], cycle["extra"]["reference_profile"]
        out += [
            "### Where a cycle's time goes (seconds, cycles 0..1)",
            "",
            "| stage | traitloop | share | reference | share |",
            "|---|---|---|---|---|",
        ]
        for key in sorted(set(ours) | set(ref), key=lambda k: -ours.get(k, 0)):
            out.append(
                f"| {key} | {num(ours.get(key, 0))} | {pct(ours.get(key, 0) / cycle['traitloop'])} | "
                f"{num(ref.get(key, 0))} | {pct(ref.get(key, 0) / cycle['reference'])} |"
            )
        out.append("")
    if result.get("speedups"):
        out += ["### Candidate speed-ups", "", "| candidate | unit | baseline | candidate | gain | check |", "|---|---|---|---|---|---|"]
        for s in result["speedups"]:
            out.append(
                f"| {s['name']} | {s['unit']} | {num(s['baseline'])} | {num(s['candidate'])} | "
                f"{num(s['gain'])}x | {s['check'].replace('|', '&#124;')} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    print(render(json.loads(path.read_text())))
