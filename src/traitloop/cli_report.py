"""CLI commands for verdicts and reports: `traitloop report DIR`, `traitloop compare DIR_A DIR_B ...`
and `traitloop power` (plan an experiment's size before running it).

report and compare only read run directories and write HTML, Markdown and figures; the work is in
traitloop.report_html (rendering, the entry points), traitloop.report_data (loading) and
traitloop.verdicts (the decisions). power simulates with traitloop.power. Bad input (a path that is
not a run or sweep directory, a run with no finished cycle, min seeds below 3) is a UserError, which
the CLI prints and turns into exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

MinSeeds = Annotated[int, typer.Option("--min-seeds", help="Independent seeds a replicated verdict needs (at least 3).")]
CycleSd = Annotated[
    float | None,
    typer.Option(
        "--cycle-sd",
        help="Points a cycle's mean trait moves when its model is retrained; the per-run verdict allows for it (default: measured on the demo sweep, docs/RESULTS.md; `traitloop power --from SWEEP` measures yours).",
    ),
]


def criteria_of(min_seeds: int, cycle_sd: float | None):
    """The verdict settings from the command line (defaults where not given)."""
    from traitloop.analysis import Criteria
    from traitloop.errors import UserError

    if cycle_sd is not None and not cycle_sd >= 0:
        raise UserError(
            f"--cycle-sd {cycle_sd:g}: a standard deviation cannot be negative; give 0 or more points, or leave it out for the default"
        )
    return Criteria(min_seeds=min_seeds) if cycle_sd is None else Criteria(min_seeds=min_seeds, cycle_sd=cycle_sd)


def report(
    directory: Annotated[Path, typer.Argument(help="A run directory (with scores.csv) or a sweep directory holding runs.")],
    min_seeds: MinSeeds = 5,
    cycle_sd: CycleSd = None,
) -> None:
    """Write report.html (self-contained: verdicts, figures, config, judge, timings, sample browser) and report.md into DIRECTORY."""
    from traitloop.report_html import write_report

    html_path = write_report(directory, criteria_of(min_seeds, cycle_sd))
    typer.echo(f"report:   {html_path}")
    typer.echo(f"markdown: {html_path.with_suffix('.md')}")
    typer.echo(f"figures:  {html_path.parent / 'figures'}")


def compare(
    directories: Annotated[list[Path], typer.Argument(help="Run or sweep directories to compare.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for compare.html, compare.md and figures/.")] = Path("compare"),
    min_seeds: MinSeeds = 5,
    cycle_sd: CycleSd = None,
) -> None:
    """Same figures and verdicts for several runs or sweeps on shared axes: writes compare.html and compare.md into --out."""
    from traitloop.errors import UserError
    from traitloop.report_html import write_compare

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; give a directory for compare.html (it is created if missing)")
    html_path = write_compare(directories, out, criteria_of(min_seeds, cycle_sd))
    typer.echo(f"compare:  {html_path}")
    typer.echo(f"markdown: {html_path.with_suffix('.md')}")
    typer.echo(f"figures:  {html_path.parent / 'figures'}")


def power(
    cycles: Annotated[int, typer.Option(help="Cycles scored, cycle 0 included (a config with cycles: 3 scores 4); at least 2.")] = 4,
    questions: Annotated[int, typer.Option(help="Eval questions per cycle (eval.questions); at least 2.")] = 12,
    samples: Annotated[int, typer.Option(help="Samples per question (eval.samples_per_question); at least 1.")] = 3,
    seeds: Annotated[int, typer.Option(help="Independent seeds per condition (1: the per-run verdict); at least 1.")] = 1,
    effect: Annotated[float, typer.Option(help="True rise in trait points from cycle 0 to the last cycle, for the power.")] = 15.0,
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="Take the noise from a finished run or sweep directory (default: the documented default noise)."),
    ] = None,
    min_seeds: MinSeeds = 5,
    cycle_sd: CycleSd = None,
    sims: Annotated[
        int, typer.Option(help="Simulated experiments per rate (Monte-Carlo error about sqrt(p(1-p)/sims)); at least 50.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed of the simulation.")] = 0,
    rule: Annotated[
        str,
        typer.Option(
            help="tested: the verdict the reports give; screening: the paper's criteria on point means alone (one seed), for comparison."
        ),
    ] = "tested",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (false_amplified, false_decayed, power, mde, ...).")
    ] = False,
) -> None:
    """False amplified / decayed rates under no change, the power to detect a rise of --effect points,
    and the minimum detectable effect at 80% power, simulated with the verdict code the reports use."""
    from traitloop.errors import UserError
    from traitloop.power import DEFAULT_NOISE, RULES, Design, plan
    from traitloop.verdicts import check_min_seeds

    check_design(cycles, questions, samples, seeds, sims)
    check_min_seeds(min_seeds)
    if rule not in RULES:
        raise UserError(f"--rule {rule}: choose one of {', '.join(RULES)}")
    if rule == "screening" and seeds != 1:
        raise UserError("--rule screening judges one run: use --seeds 1")
    noise = DEFAULT_NOISE if from_ is None else noise_of(from_)
    # the verdict allows for the model noise simulated, unless told otherwise (--cycle-sd)
    criteria = criteria_of(min_seeds, noise.cycle_sd if cycle_sd is None else cycle_sd)
    result = plan(Design(cycles, questions, samples, seeds), noise, effect, criteria, n_sims=sims, seed=seed, rule=rule)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    kind = (
        "screening flag alone (point means)"
        if rule == "screening"
        else "per-run verdict"
        if seeds == 1
        else f"condition verdict over {seeds} seeds"
    )
    n = noise
    typer.echo(f"design: {cycles} cycles x {questions} questions x {samples} samples, {seeds} seed(s): the {kind}")
    typer.echo(
        f"noise ({n.source}): base {n.base:g}, question sd {n.question_sd:g}, answer sd {n.answer_sd:g}, cycle sd {n.cycle_sd:g}, question x cycle sd {n.question_cycle_sd:g}"
    )
    typer.echo(f"verdict allows for model noise sd {criteria.cycle_sd:g} per cycle (report --cycle-sd)")
    typer.echo(f"false amplified (no true change): {result['false_amplified']:.3f}")
    typer.echo(f"false decayed   (no true change): {result['false_decayed']:.3f}")
    typer.echo(f"power for a rise of {effect:g} points:  {result['power']:.3f}")
    mde = result["mde"]
    typer.echo(f"minimum detectable rise (80% power): {'not reachable on the 0-100 scale' if mde is None else f'{mde:.1f} points'}")
    if result["interval_coverage"] is not None:
        typer.echo(f"coverage of the {criteria.level:.0%} interval of s_N - s_0 over seeds: {result['interval_coverage']:.3f}")
    if result["note"]:
        typer.echo(f"note: {result['note']}")
    typer.echo(f"({sims} simulated experiments per rate, {result['mde_sims']} per step of the MDE search)")


def check_design(cycles: int, questions: int, samples: int, seeds: int, sims: int) -> None:
    """power's sizes, each with the smallest value the simulation can use (a UserError below it)."""
    from traitloop.errors import UserError

    for option, value, least, message in (
        (
            "--cycles",
            cycles,
            2,
            "a change needs cycle 0 and at least one later scored cycle; give 2 or more (a config with cycles: 3 scores 4)",
        ),
        ("--questions", questions, 2, "the interval over questions needs at least 2 eval questions; give 2 or more"),
        ("--samples", samples, 1, "each question needs at least 1 sampled answer; give 1 or more"),
        ("--seeds", seeds, 1, "give 1 seed (the per-run verdict) or the seeds of a condition (3 or more for a replicated verdict)"),
        ("--sims", sims, 50, "fewer than 50 simulated experiments per rate give rates too noisy to read; give 50 or more"),
    ):
        if value < least:
            raise UserError(f"{option} {value}: {message}")


def noise_of(directory: Path):
    """The noise measured on every run under a run or sweep directory."""
    from traitloop.errors import UserError
    from traitloop.power import noise_from_runs
    from traitloop.report_data import eval_data, load_collection

    data = eval_data(load_collection([directory], "power").runs)
    try:
        return noise_from_runs(data, f"measured on {len(data)} run(s) in {directory}")
    except ValueError as err:
        raise UserError(
            f"--from {directory}: cannot measure the noise ({err}); it needs eval.jsonl with 2+ questions and 2+ samples each"
        ) from None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("report")(report)
    app.command("compare")(compare)
    app.command("power")(power)
