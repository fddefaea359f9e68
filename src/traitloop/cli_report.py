"""CLI commands for reports: `traitloop report DIR` and `traitloop compare DIR_A DIR_B ...`.

Both only read run directories and write HTML, Markdown and figures; the work is in
traitloop.report_html (rendering, the entry points) and traitloop.report_data (loading, verdicts).
Bad input (a path that is not a run or sweep directory, a run with no finished cycle) is a
UserError, which the CLI prints and turns into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    directory: Annotated[Path, typer.Argument(help="A run directory (with scores.csv) or a sweep directory holding runs.")],
) -> None:
    """Write report.html (self-contained: verdicts, figures, config, judge, timings, sample browser) and report.md into DIRECTORY."""
    from traitloop.report_html import write_report

    html_path = write_report(directory)
    typer.echo(f"report:   {html_path}")
    typer.echo(f"markdown: {html_path.with_suffix('.md')}")
    typer.echo(f"figures:  {html_path.parent / 'figures'}")


def compare(
    directories: Annotated[list[Path], typer.Argument(help="Run or sweep directories to compare.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for compare.html, compare.md and figures/.")] = Path("compare"),
) -> None:
    """Same figures and verdicts for several runs or sweeps on shared axes: writes compare.html and compare.md into --out."""
    from traitloop.report_html import write_compare

    html_path = write_compare(directories, out)
    typer.echo(f"compare:  {html_path}")
    typer.echo(f"markdown: {html_path.with_suffix('.md')}")
    typer.echo(f"figures:  {html_path.parent / 'figures'}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("report")(report)
    app.command("compare")(compare)
