"""`python -m bench [--quick] [--threads N] [--only sampling,training,...]` (or `make bench`): traitloop against a plain
transformers + TRL reference pipeline on identical work, and against this machine's measured peak.

Prints a table (benchmark, traitloop, reference, ratio, utilisation) and the candidate speed-ups,
writes every figure to bench/results/latest.json (bench/results/quick.json with --quick; a subset
chosen with --only goes to only-<names>.json / quick-only-<names>.json instead), and the
throughput that `traitloop run --dry-run` estimates from to $TRAITLOOP_CACHE/throughput.json (a
--quick run does not replace figures from a full one). Default size: about 15 minutes on 2 cores;
--quick: about 3-5 minutes.

`python -m bench --gpu` / `--gpu-smoke`: the GPU benchmark instead (bench/gpu.py, its own options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench import cases, machine, speedups
from bench.report import num as fmt  # one formatting for the printed table and BENCHMARKS.md
from bench.report import pct

BENCHMARKS = {
    "sampling": cases.sampling,
    "training": cases.training,
    "dpo": cases.dpo,
    "judge": cases.judging,
    "cycle": cases.cycle,
    "speedups": speedups.all_speedups,
}
RESULTS = Path(__file__).parent / "results"


def results_table(rows: list[cases.Row], peak: dict) -> Table:
    table = Table(
        title="traitloop vs reference pipeline (same work, same process run)",
        caption=f"ratio = traitloop / reference. utilisation = model FLOPs / measured peak "
        f"(fp32 {peak['fp32']['best']:.0f}, bf16 {peak['bf16']['best']:.0f} GFLOP/s); "
        f"{machine.FORMULA}",
    )
    for col in ["benchmark", "unit", "traitloop", "reference", "ratio", "utilisation (traitloop / ref)"]:
        table.add_column(col, justify="left" if col == "benchmark" else "right", overflow="fold")
    for r in rows:
        better = "" if r.ratio is None else ("better" if (r.ratio > 1) == r.higher_is_better else "worse")
        util = "-" if r.util_traitloop is None else f"{pct(r.util_traitloop)} / {pct(r.util_reference)}"
        table.add_row(
            r.name,
            r.unit + (" (higher better)" if r.higher_is_better else " (lower better)"),
            fmt(r.traitloop),
            fmt(r.reference),
            f"{fmt(r.ratio)} {better}".strip(),
            util,
        )
    return table


def speedup_table(rows: list[dict]) -> Table:
    table = Table(title="candidate speed-ups (measured inside bench; traitloop's code unchanged)")
    for col in ["candidate", "unit", "baseline", "candidate", "gain", "check"]:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["unit"], fmt(r["baseline"]), fmt(r["candidate"]), f"{fmt(r['gain'])}x", r["check"])
    return table


def profile_table(rows: list[cases.Row]) -> Table | None:
    cycle = next((r for r in rows if r.name.startswith("full cycle")), None)
    if cycle is None:
        return None
    ours, ref = cycle.extra["traitloop_profile"], cycle.extra["reference_profile"]
    table = Table(title="where a cycle's time goes (seconds, cycles 0..1)")
    for col in ["stage", "traitloop", "share", "reference", "share"]:
        table.add_column(col, justify="right")
    for key in sorted(set(ours) | set(ref), key=lambda k: -ours.get(k, 0)):
        table.add_row(
            key,
            fmt(ours.get(key, 0)),
            pct(ours.get(key, 0) / cycle.traitloop),
            fmt(ref.get(key, 0)),
            pct(ref.get(key, 0) / cycle.reference),
        )
    return table


def write_throughput(ctx: cases.Context, cpu: dict) -> str:
    """What `traitloop run --dry-run` estimates from (see traitloop.estimate)."""
    from traitloop.estimate import load_throughput, save_throughput, throughput_path

    old = load_throughput()
    if ctx.size_name == "quick" and old and old.get("source") == "python -m bench":
        return f"kept {throughput_path()} (from a full run; --quick figures are too small to estimate from)"
    figures = {k: v for k, v in ctx.measured.items() if k != "cycle_profile"}
    figures.update(
        {
            "model_ref": cases.MODEL_REF,
            "params": ctx.params,
            "model_load_s": round(ctx.load_s, 2),
            "threads": torch.get_num_threads(),
            "cpu_model": cpu["cpu_model"],
            "cores": cpu["cores"],
            "source": "python -m bench" + (" --quick" if ctx.size_name == "quick" else ""),
            "measured_at": cpu["date"],
        }
    )
    return str(save_throughput(figures))


def main() -> None:
    if {"--gpu", "--gpu-smoke"} & set(sys.argv[1:]):  # the GPU benchmark, with its own options (bench/gpu.py)
        from bench import gpu

        return gpu.main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (~3 minutes), for development")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads for every benchmark and the peak (default: all cores)"
    )
    args = parser.parse_args()
    from traitloop.cli import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the cycle subprocesses start with the same count
    console = Console(width=200)
    started, load_before = time.time(), os.getloadavg()
    cpu = machine.info()
    console.print(
        f"machine: {cpu['cores']} cores, {cpu['cpu_model']}, torch {cpu['torch']} ({args.threads} threads), "
        f"load average {load_before[0]:.1f}"
    )
    peak = machine.peak(quick=args.quick)
    bandwidth = machine.memory_bandwidth_gbs()
    console.print(
        f"peak matmul ({args.threads} threads): fp32 {peak['fp32']['best']:.0f} GFLOP/s, bf16 "
        f"{peak['bf16']['best']:.0f} GFLOP/s; memory copy {bandwidth:.1f} GB/s"
    )
    peak_all_cores = None
    if args.threads != os.cpu_count():
        torch.set_num_threads(os.cpu_count() or 1)
        peak_all_cores = machine.peak(quick=args.quick)
        torch.set_num_threads(args.threads)
        console.print(
            f"peak matmul (all {os.cpu_count()} cores): fp32 {peak_all_cores['fp32']['best']:.0f}, "
            f"bf16 {peak_all_cores['bf16']['best']:.0f} GFLOP/s"
        )
    ctx = cases.Context("quick" if args.quick else "full", peak)

    rows: list[cases.Row] = []
    ups: list[dict] = []
    for name in args.only.split(","):
        t0 = time.time()
        console.print(f"[bold]{name}[/bold] ...")
        if name == "speedups":
            ups = BENCHMARKS[name](ctx)
        else:
            rows += BENCHMARKS[name](ctx)
        console.print(f"  {name}: {time.time() - t0:.0f} s")

    console.print(results_table(rows, peak))
    if (profile := profile_table(rows)) is not None:
        console.print(profile)
    if ups:
        console.print(speedup_table(ups))
    result = {
        "command": "python -m bench"
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads != os.cpu_count() else ""),
        "machine": cpu,
        "threads": args.threads,
        "peak_gflops": peak,
        "peak_gflops_all_cores": peak_all_cores,
        "memory_copy_gbs": bandwidth,
        "params": ctx.params,
        "flop_formula": machine.FORMULA,
        "size": cases.SIZES[ctx.size_name],
        "load_average_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.time() - started, 1),
        "rows": [r.to_dict() for r in rows],
        "speedups": ups,
    }
    RESULTS.mkdir(exist_ok=True)
    names = args.only.split(",")
    # a subset never overwrites the full run's figures, which BENCHMARKS.md is written from
    stem = "latest" if set(BENCHMARKS) <= set(names) else "only-" + "-".join(names)
    if args.quick:
        stem = "quick" if stem == "latest" else f"quick-{stem}"
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    console.print(f"results: {path}")
    if "sampling" in args.only and "training" in args.only:
        console.print(f"throughput for `traitloop run --dry-run`: {write_throughput(ctx, cpu)}")
    console.print(f"total {result['wall_s']:.0f} s; load average {result['load_average_start_end']}")


if __name__ == "__main__":
    main()
