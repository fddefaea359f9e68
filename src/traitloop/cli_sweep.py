"""CLI command `traitloop sweep`: every combination of a grid file, under one sweep directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command()
    def sweep(
        grid: Annotated[Path, typer.Argument(help="Grid file (YAML): name, base, set, grid. See configs/sweeps/.")],
        jobs: Annotated[
            int | None, typer.Option("--jobs", "-j", min=1, help="local: runs at a time (each a subprocess; default 1).")
        ] = None,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Parent directory of the sweep (overrides out_dir).")] = None,
        executor: Annotated[
            Literal["local", "ray"],
            typer.Option(help="local: subprocesses on this machine; ray: one Ray task per run on a Ray cluster (docs/SCALE.md)."),
        ] = "local",
        address: Annotated[
            str | None,
            typer.Option(help="ray: the cluster: auto (this machine's), ray://HOST:10001; default $RAY_ADDRESS, else a new local Ray."),
        ] = None,
        gpus_per_run: Annotated[
            float | None,
            typer.Option(min=0, help="ray: GPUs each run holds (0.5: two runs share one); default 1 if the cluster has GPUs, else 0."),
        ] = None,
        cpus_per_run: Annotated[
            float | None, typer.Option(min=0.01, help="ray: CPUs each run holds (and its OMP_NUM_THREADS; default 1).")
        ] = None,
        max_retries: Annotated[
            int | None, typer.Option(min=0, help="ray: retries of a run whose worker or node died or ran out of memory (default 2).")
        ] = None,
    ) -> None:
        """Run every combination of a grid. Rerunning the same command skips finished runs and resumes
        the rest; a failed run does not stop the sweep (exit code 1 at the end if any failed)."""
        from traitloop.errors import UserError
        from traitloop.progress import Reporter
        from traitloop.sweep import LocalExecutor, RayExecutor, exit_code, load_sweep, run_sweep, summary_table

        ray_only = {"--address": address, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run, "--max-retries": max_retries}
        if executor == "local" and any(v is not None for v in ray_only.values()):
            given = ", ".join(k for k, v in ray_only.items() if v is not None)
            raise UserError(f"{given}: only with --executor ray")
        if executor == "ray" and jobs is not None:
            raise UserError("--jobs: only with --executor local (Ray runs as many at a time as --gpus-per-run / --cpus-per-run allow)")

        # validates every run first: bad input -> exit 2, nothing written
        loaded = load_sweep(grid, out_dir, absolute=executor == "ray")
        reporter = Reporter()
        if executor == "ray":
            runner = RayExecutor(
                address=address,
                gpus_per_run=gpus_per_run,
                cpus_per_run=cpus_per_run or 1.0,
                max_retries=2 if max_retries is None else max_retries,
                reporter=reporter,
            )
        else:
            runner = LocalExecutor(workers=jobs or 1)
        try:
            runs = run_sweep(loaded, runner, reporter=reporter)
        finally:
            if isinstance(runner, RayExecutor):
                runner.close()
        Console().print(summary_table(loaded, runs))
        code = exit_code(runs)
        if code:
            raise typer.Exit(code)  # cli.main passes the code on as the exit status
