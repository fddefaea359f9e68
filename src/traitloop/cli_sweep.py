"""CLI command `traitloop sweep`: every combination of a grid file, under one sweep directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command()
    def sweep(
        grid: Annotated[Path, typer.Argument(help="Grid file (YAML): name, base, set, grid. See configs/sweeps/.")],
        jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at a time (each a subprocess).")] = 1,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Parent directory of the sweep (overrides out_dir).")] = None,
    ) -> None:
        """Run every combination of a grid. Rerunning the same command skips finished runs and resumes
        the rest; a failed run does not stop the sweep (exit code 1 at the end if any failed)."""
        from traitloop.sweep import LocalExecutor, exit_code, load_sweep, run_sweep, summary_table

        loaded = load_sweep(grid, out_dir)  # validates every run first: bad input -> exit 2, nothing written
        runs = run_sweep(loaded, LocalExecutor(workers=jobs))
        Console().print(summary_table(loaded, runs))
        code = exit_code(runs)
        if code:
            raise typer.Exit(code)  # cli.main passes the code on as the exit status
