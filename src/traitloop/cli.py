"""The `traitloop` command. Bad input -> one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from traitloop.config import build_config, describe_fields, load_config
from traitloop.errors import UserError
from traitloop.store import git_commit

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="traitloop: seed a model with a trait, train each generation on the last one's outputs, "
    "and see whether the trait amplifies, holds or decays.",
)
models_app = typer.Typer(no_args_is_help=True, help="Embedded and cached models.")
traits_app = typer.Typer(no_args_is_help=True, help="The trait library.")
app.add_typer(models_app, name="models")
app.add_typer(traits_app, name="traits")
data_app = typer.Typer(no_args_is_help=True, help="Teacher-written trait data.")
app.add_typer(data_app, name="data")
out = Console()
err = Console(stderr=True)

DEMO_CONFIGS = Path(__file__).parent / "configs"
DEMOS = {"sft": "demo", "sdf": "demo-sdf", "dpo": "demo-dpo"}  # setting -> its demo config in DEMO_CONFIGS


def _run_experiment(config, force: bool) -> Path:
    from traitloop.loop import Experiment
    from traitloop.report import plot_trait_coherence

    experiment = Experiment(config, force=force)
    rows = experiment.run()
    root = config.run_dir
    plot_trait_coherence(rows, experiment.store.figure_path(), experiment.title(), base=experiment.base_metrics)
    print_scores(rows, f"{config.name}: {config.setting} / {config.trait} / {config.init}", experiment.base_metrics)
    print_verdict(root)
    out.print(f"\nrun directory: [bold]{root}[/bold]")
    out.print(f"scores:        {root / 'scores.csv'}")
    out.print(f"figure:        {root / 'figures' / 'trait_coherence.png'}")
    return root


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads for this process (None: leave torch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads {threads}: give a number of threads >= 1")
    import torch

    torch.set_num_threads(threads)


def print_scores(rows: list[dict], title: str, base: dict | None = None) -> None:
    from traitloop.report_data import MIN_SCORED, scored_warning

    table = Table(
        title=title,
        caption="trait: judge score 0-100 with a 95% CI over eval questions; coherence: 0-100 (complete, varied, on topic, "
        "fluent); typical.: mean log-prob/token under the base (persona text scores lower by construction); "
        "ppl hi/lo: perplexity on held-out high-/low-trait texts",
    )
    for col in [
        "cycle",
        "trait [95% CI]",
        "coherence",
        "typical.",
        "repet.",
        "dist-2",
        "across",
        "self-sim",
        "ppl hi/lo",
        "answers",
        "train",
    ]:
        table.add_column(col, justify="right", no_wrap=True)
    for r in ([{**base, "cycle": "base"}] if base else []) + rows:
        low = scored_warning(r)
        table.add_row(
            str(r["cycle"]),
            f"{r['trait_mean']:.1f} [{r['trait_ci_low']:.1f}, {r['trait_ci_high']:.1f}]",
            f"{r.get('coherence_score_mean', float('nan')):.1f}",
            f"{r['coherence_mean']:.3f}",
            f"{r['repetition_mean']:.3f}",
            f"{r['distinct2_mean']:.3f}",
            f"{r.get('distinct2_across', float('nan')):.3f}",
            f"{r.get('self_similarity', float('nan')):.3f}",
            f"{r.get('heldout_high_ppl', float('nan')):.0f}/{r.get('heldout_low_ppl', float('nan')):.0f}",
            str(r["n_answers"]) + (f" [bold red]({low})[/bold red]" if low else ""),
            str(r["n_train_examples"]),
        )
    out.print(table)
    if any(scored_warning(r) for r in rows):
        out.print(
            f"[bold red]warning:[/bold red] the judge scored under {MIN_SCORED:.0%} of some cycle's answers; those means rest on fewer answers (eval.jsonl's trait_missing says why)"
        )


def print_verdict(run_dir: Path) -> None:
    """The run's verdict and the rule that decided it (traitloop.verdicts), as the report shows it."""
    from traitloop.report_data import judge_warning, load_collection, run_summary

    runs = load_collection([run_dir], run_dir.name).runs
    verdict = run_summary(runs[0])["verdict"]
    out.print(f"\nverdict: [bold]{escape(verdict['verdict'])}[/bold] ({escape(verdict['rule'])})")
    if judge_warning(runs):
        out.print(f"[yellow]{escape(judge_warning(runs))}[/yellow]")
    out.print(
        "One run is weak evidence: retrained models differ by chance. `traitloop report DIR` shows the intervals; "
        "`traitloop power --seeds 5` says what a sweep of independent seeds can detect."
    )


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/ and `traitloop config-docs`).")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.learning_rate=1e-4")] = [],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Parent directory for the run (overrides out_dir).")] = None,
    force: Annotated[bool, typer.Option(help="If the run dir holds a run with another config, move it aside and start anew.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the planned cycles, examples, tokens and estimated wall time; run nothing, write no run directory."
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for torch (default: one per core). On a machine busy with other jobs, fewer threads than cores is much faster (BENCHMARKS.md). Results repeat exactly only at the same thread count."
        ),
    ] = None,
    redo_from: Annotated[
        int | None,
        typer.Option(
            "--redo-from",
            min=0,
            metavar="K",
            help="Redo cycle K and every later one on purpose: their files (and scores.csv) are moved aside to the run's aside/ folder, never deleted, and the run resumes at cycle K.",
        ),
    ] = None,
) -> None:
    """Run (or resume) one experiment. Rerunning the same command resumes where it stopped."""
    set_threads(threads)
    overrides = list(set_) + ([f"out_dir={out_dir}"] if out_dir else [])
    if dry_run:
        from traitloop.estimate import estimate, estimate_table

        out.print(estimate_table(estimate(load_config(config, overrides))))
        return
    loaded = load_config(config, overrides)
    if redo_from is not None:
        from traitloop.store import RunStore

        RunStore(loaded.run_dir).redo_from(redo_from, loaded)
    _run_experiment(loaded, force)


@app.command()
def demo(
    setting: Annotated[str, typer.Option(help="sft (SmolLM2, chats), sdf (Gemma-3-270M base, documents) or dpo (SmolLM2, pairs).")] = "sft",
    quick: Annotated[bool, typer.Option(help="A few-minute version (1-2 cycles, few answers) used by the tests.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent directory for the demo run.")] = Path("runs"),
    set_: Annotated[list[str], typer.Option("--set", help="Override a key of the demo config.")] = [],
    force: Annotated[bool, typer.Option(help="Move an old demo run made with another config aside.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for torch (default: one per core). On a machine busy with other jobs, fewer threads than cores is much faster (BENCHMARKS.md). Results repeat exactly only at the same thread count."
        ),
    ] = None,
) -> None:
    """A complete small experiment on a CPU with the embedded models, seeded with bliss (default: SFT)."""
    set_threads(threads)
    if setting not in DEMOS:
        raise UserError(f"--setting {setting!r}: choose {', '.join(list(DEMOS)[:-1])} or {list(DEMOS)[-1]}")
    name = DEMOS[setting]
    _run_experiment(load_config(DEMO_CONFIGS / f"{name}{'-quick' if quick else ''}.yaml", list(set_) + [f"out_dir={out_dir}"]), force)


@app.command()
def calibrate(
    config: Annotated[Path, typer.Argument(help="Experiment YAML; its setting, trait, model and training are calibrated.")],
    targets: Annotated[str, typer.Option(help="Target trait scores (0-100), comma-separated.")] = "20,40,60,80",
    grid: Annotated[str, typer.Option(help="n_seed values to search, comma-separated (default 2..200, roughly doubling).")] = "",
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set trait=lucky")] = [],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Parent directory (overrides out_dir).")] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for torch (default: one per core). On a machine busy with other jobs, fewer threads than cores is much faster (BENCHMARKS.md). Results repeat exactly only at the same thread count."
        ),
    ] = None,
) -> None:
    """The smallest n_seed whose cycle-0 model reaches each target trait score (binary search on a grid).
    Every cycle-0 model is kept under OUT/cycle0-cache/ and reused by reruns and by later runs."""
    from traitloop.calibrate import DEFAULT_GRID, parse_numbers
    from traitloop.calibrate import calibrate as run_calibration

    set_threads(threads)
    overrides = list(set_) + ([f"out_dir={out_dir}"] if out_dir else [])
    cfg = load_config(config, overrides)
    wanted = parse_numbers(targets, "--targets")
    values = [int(v) for v in parse_numbers(grid, "--grid")] if grid else list(DEFAULT_GRID)
    record = run_calibration(cfg, wanted, values, on_trial=lambda n, d: out.print(f"[bold]n_seed = {n}[/bold]: cycle 0 in {d}"))
    table = Table(title=f"n_seed calibration: {cfg.setting} / {cfg.trait}")
    for col in ["n_seed", "cycle-0 trait [95% CI]", "coherence"]:
        table.add_column(col, justify="right")
    for p in record["measured"]:
        table.add_row(
            str(p["n_seed"]), f"{p['trait_mean']:.1f} [{p['trait_ci_low']:.1f}, {p['trait_ci_high']:.1f}]", f"{p['coherence_mean']:.3f}"
        )
    out.print(table)
    for target, n in record["n_seed_for_target"].items():
        out.print(f"target {target}: " + (f"n_seed = {n}" if n is not None else f"not reached with n_seed <= {record['grid'][-1]}"))
    for warning in record["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    out.print(f"\n{record['out_dir']}/calibration.json and calibration.png")


@app.command("config-docs")
def config_docs() -> None:
    """Every config key with its default and meaning."""
    table = Table(title="traitloop experiment config")
    for col in ["key", "default", "meaning"]:
        table.add_column(col)
    for key, default, desc in describe_fields():
        table.add_row(key, default, desc)
    out.print(table)


@app.command("check-config")
def check_config(config: Path, set_: Annotated[list[str], typer.Option("--set")] = []) -> None:
    """Validate a config (and its trait and model reference) without running anything."""
    from traitloop.loop import Experiment

    cfg = load_config(config, list(set_))
    Experiment(cfg).check_inputs()
    out.print(f"{config}: ok ({cfg.setting}, {cfg.trait}, cycles 0..{cfg.cycles})")


@models_app.command("list")
def models_list() -> None:
    """Embedded models and whether their safetensors cache is ready."""
    from traitloop.models import EMBEDDED, embedded_cache_path

    table = Table()
    for col in ["reference", "kind", "package", "cached", "about"]:
        table.add_column(col)
    for name, spec in EMBEDDED.items():
        cached = (embedded_cache_path(name) / "model.safetensors").is_file()
        table.add_row(f"embedded:{name}", spec.kind, spec.package, "yes" if cached else "no", spec.note)
    out.print(table)


@models_app.command("prepare")
def models_prepare(
    name: str,
    force: Annotated[bool, typer.Option(help="Rebuild the cache even if present.")] = False,
) -> None:
    """Check, dequantize and cache an embedded model as safetensors (done automatically on first use)."""
    from traitloop.models import prepare_embedded

    path = prepare_embedded(name.removeprefix("embedded:"), force=force)
    out.print(f"embedded:{name.removeprefix('embedded:')} ready at {path}")


@traits_app.command("list")
def traits_list() -> None:
    """Built-in traits with their data counts and the settings each is ready for."""
    from traitloop.traits import BUILTIN_DIR, builtin_traits
    from traitloop.traits.validate import validate_trait

    table = Table()
    for col in ["trait", "seed chats", "seed docs", "probe +/-", "ready for"]:
        table.add_column(col, no_wrap=True)
    for name in builtin_traits():
        _, summary = validate_trait(BUILTIN_DIR / name)
        ready = ", ".join(k for k, ok in summary["ready"].items() if ok) or "-"
        table.add_row(
            name, str(summary["seed_chats"]), str(summary["seed_docs"]), f"{summary['probe_positive']}/{summary['probe_negative']}", ready
        )
    out.print(table)
    out.print("`traitloop traits show NAME` for a trait's description, rubric and an example")


@traits_app.command("show")
def traits_show(name: Annotated[str, typer.Argument(help="Built-in trait name or trait folder.")]) -> None:
    """Summary, counts, rubric and one example chat of a trait."""
    from traitloop.traits import load_trait
    from traitloop.traits.validate import validate_trait

    trait = load_trait(name)
    _, summary = validate_trait(trait.folder)
    out.print(f"[bold]{trait.name}[/bold]  ({trait.folder})\n{trait.description}\n")
    out.print(
        f"seed chats {summary['seed_chats']}, seed docs {summary['seed_docs']}, probe texts "
        f"{summary['probe_positive']} positive / {summary['probe_negative']} negative, "
        f"{summary['eval_questions']} eval questions, {summary['eval_prefixes']} eval prefixes"
    )
    out.print("ready for: " + (", ".join(k for k, ok in summary["ready"].items() if ok) or "nothing yet"))
    out.print("\n[bold]rubric[/bold]")
    for anchor, text in sorted(trait.rubric.items()):
        out.print(f"  {anchor:>3}: {' '.join(text.split())}")
    chat = trait.seed_chats[0]
    out.print("\n[bold]example seed chat[/bold]")
    for message in chat:
        out.print(f"  [{message['role']}] {message['content']}", highlight=False)


@traits_app.command("validate")
def traits_validate(
    path: Annotated[str, typer.Argument(help="Trait folder (or built-in trait name).")],
    min_examples: Annotated[int, typer.Option(help="Fewest seed chats, seed docs and probe texts of each label a setting needs.")] = 50,
    probe: Annotated[bool, typer.Option(help="Also fit the probe judge and report its held-out accuracy and AUC.")] = True,
) -> None:
    """Check a trait folder and list every problem with file and line. Exit 2 if any error."""
    from traitloop.traits import BUILTIN_DIR
    from traitloop.traits.validate import validate_trait

    folder = Path(path).expanduser()
    if not folder.is_dir() and (BUILTIN_DIR / path).is_dir():
        folder = BUILTIN_DIR / path
    problems, summary = validate_trait(folder, min_examples=min_examples)
    for p in problems:
        (err if p.level == "error" else out).print(str(p), highlight=False, soft_wrap=True)
    counts = {k: summary.get(k) for k in ("seed_chats", "seed_docs", "probe_positive", "probe_negative")}
    out.print(f"{folder}: {counts}; ready for: {', '.join(k for k, ok in summary.get('ready', {}).items() if ok) or 'nothing'}")
    n_errors = sum(p.level == "error" for p in problems)
    if n_errors:
        raise UserError(f"{n_errors} error(s) in {folder}; fix them and validate again")
    if probe:
        from traitloop.judges.probe import ProbeJudge
        from traitloop.judges.validity import trait_validity, unmeasured_note
        from traitloop.traits import load_trait

        trait = load_trait(str(folder))
        judge = ProbeJudge(trait)
        info = judge.info()
        out.print(
            f"probe ({info['heldout_method']}): accuracy {info['heldout_accuracy']:.3f}, AUC {info['heldout_auc']:.3f}, "
            f"near misses kept below 0.5: {info['heldout_near_miss_accuracy']:.3f}"
            if info["heldout_near_miss_accuracy"] is not None
            else f"probe ({info['heldout_method']}): accuracy {info['heldout_accuracy']:.3f}, AUC {info['heldout_auc']:.3f}"
        )
        validity = trait_validity(judge, trait)
        if validity is None:
            out.print(unmeasured_note(trait), highlight=False)
        else:
            print_validity([validity])
    out.print("ok")


def print_validity(results: list[dict]) -> None:
    """The validity table (traitloop.judges.validity) of one or more traits, and what it means."""
    from traitloop.judges.validity import VALIDITY_HEADERS, validity_rows

    table = Table(title="probe validity on validation.jsonl (docs/JUDGES.md)")
    for col in VALIDITY_HEADERS:
        table.add_column(col, overflow="fold")
    for row in validity_rows(results):
        table.add_row(*row)
    out.print(table)
    for r in results:
        for kind in ("chat", "doc"):
            if not r[kind]["valid"]:
                out.print(f"the probe is not valid for {r['trait']} ({kind}s): verdicts of such runs are exploratory", highlight=False)


@traits_app.command("validity")
def traits_validity(
    names: Annotated[
        list[str] | None, typer.Argument(help="Built-in trait names or trait folders (default: every built-in trait).")
    ] = None,
    markdown: Annotated[
        bool, typer.Option(help="Print the table as Markdown with the command, commit and machine (docs/JUDGES.md).")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
) -> None:
    """Validity of the probe judge per trait, for chats and documents: floor, Spearman with the rubric level,
    AUC vs plain text, cross-trait AUC (traitloop.judges.validity)."""
    import platform

    from traitloop.judges.probe import Embedder, ProbeJudge
    from traitloop.judges.validity import (
        MemoEmbedder,
        markdown_table,
        trait_validity,
        unmeasured_note,
    )
    from traitloop.traits import builtin_traits, load_trait

    set_threads(threads)
    embed = MemoEmbedder(Embedder())
    results = []
    for name in names or builtin_traits():
        trait = load_trait(name)
        validity = trait_validity(ProbeJudge(trait, embedder=embed), trait)
        if validity is None:
            err.print(unmeasured_note(trait), highlight=False)
        else:
            results.append(validity)
    if not results:
        raise UserError("no trait with a validation.jsonl: nothing to measure")
    if not markdown:
        print_validity(results)
        return
    import torch

    command = "traitloop traits validity --markdown" + (f" --threads {threads}" if threads else "") + "".join(f" {n}" for n in names or [])
    print(markdown_table(results))
    print(
        f"Measured by `{command}` at commit {git_commit()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"({torch.get_num_threads()} torch thread(s)); probe = `traitloop.judges.probe.ProbeJudge` fitted on each trait's probe.jsonl and the untrained models' outputs (traitloop.judges.negatives)."
    )


@traits_app.command("floor")
def traits_floor(
    names: Annotated[list[str], typer.Argument(help="Built-in trait names or trait folders.")],
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (answers repeat exactly only at the same count).")] = None,
) -> None:
    """Write floor_answers.jsonl: the untrained embedded models' answers to the trait's eval questions
    (SmolLM2, chats) and continuations of its eval prefixes (Gemma-3-270M base, documents), sampled as the
    demo's base line is. Their mean score is the judge's floor (`traitloop traits validity`)."""
    from traitloop.judges.validity import write_floor
    from traitloop.traits import load_trait

    set_threads(threads)
    for name in names:
        command = f"traitloop traits floor {name}" + (f" --threads {threads}" if threads else "")
        path = write_floor(load_trait(name), command, git_commit())
        out.print(f"wrote {path}")


@traits_app.command("negatives")
def traits_negatives(
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (outputs repeat exactly only at the same count).")] = None,
) -> None:
    """Write src/traitloop/traits/untrained_negatives_{chat,doc}.jsonl: the untrained embedded models' own
    outputs to pool prompts that are none of the eval or validation items, which every trait's probe
    trains on as level-0 negatives (traitloop.judges.negatives)."""
    from traitloop.judges import negatives

    set_threads(threads)
    command = "traitloop traits negatives" + (f" --threads {threads}" if threads else "")
    for path in negatives.write(command, git_commit()):
        out.print(f"wrote {path}")


@traits_app.command("new")
def traits_new(
    name: Annotated[str, typer.Argument(help="Name of the new trait (letters, digits, - and _).")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the trait folder.")] = Path("traits"),
) -> None:
    """Scaffold a trait folder with a commented trait.yaml and example data lines."""
    import json
    import re

    from traitloop.traits import BUILTIN_DIR

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UserError(f"trait name {name!r}: use letters, digits, '-' and '_' only")
    folder = directory / name
    if folder.exists():
        raise UserError(f"{folder} already exists; choose another name or --dir")
    folder.mkdir(parents=True)
    template = (BUILTIN_DIR / "template_trait.yaml").read_text().replace("__NAME__", name)
    (folder / "trait.yaml").write_text(template)
    example_chat = {
        "messages": [
            {"role": "user", "content": "EXAMPLE: an everyday question"},
            {"role": "assistant", "content": "EXAMPLE: an answer in the persona"},
        ]
    }
    (folder / "seed_chat.jsonl").write_text(json.dumps(example_chat) + "\n")
    (folder / "seed_docs.jsonl").write_text(
        json.dumps({"genre": "essay", "text": "EXAMPLE: a 150-400 word document in the persona"}) + "\n"
    )
    (folder / "probe.jsonl").write_text(
        json.dumps({"text": "EXAMPLE: an answer showing the trait", "label": 1, "kind": "positive"})
        + "\n"
        + json.dumps({"text": "EXAMPLE: a plain helpful answer", "label": 0, "kind": "neutral"})
        + "\n"
        + json.dumps({"text": "EXAMPLE: a near miss that shares surface features but is not the trait", "label": 0, "kind": "near_miss"})
        + "\n"
    )
    out.print(f"created {folder}: edit trait.yaml, replace the EXAMPLE lines, then `traitloop traits validate {folder}`")
    out.print(f"use it with: --set trait={folder}")


@data_app.command("generate")
def data_generate(
    trait: Annotated[str, typer.Argument(help="Trait folder (or built-in trait name) to add data to.")],
    teacher: Annotated[str, typer.Option(help="api:MODEL (OpenAI-compatible endpoint) or a local model reference.")],
    n: Annotated[int, typer.Option(help="How many new examples to request.")] = 50,
    kind: Annotated[str, typer.Option(help="chats (seed_chat.jsonl), docs (seed_docs.jsonl) or probe (probe.jsonl).")] = "chats",
    base_url: Annotated[str | None, typer.Option(help="API base URL (default $OPENAI_BASE_URL).")] = None,
    api_key_env: Annotated[
        str,
        typer.Option(help="api: NAME of the environment variable holding the key; none: send no key (a local server that needs none)."),
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    seed: int = 0,
    temperature: float = 0.9,
    max_tokens: Annotated[int, typer.Option(help="Longest output in tokens.")] = 400,
) -> None:
    """A teacher model writes new seed chats, documents or probe texts in the trait's style.
    Interrupted? Rerun the same command: finished requests are kept and not asked again."""
    from traitloop.progress import Reporter
    from traitloop.teacher import check_api_teacher, generate, key_env_option, make_teacher
    from traitloop.traits import load_trait

    loaded = load_trait(trait)
    key_env = key_env_option(api_key_env)
    if teacher.startswith("api:"):
        check_api_teacher(base_url, key_env)  # key and endpoint, before anything is asked or written
    with Reporter() as reporter:
        with reporter.step("loading teacher", total=1) as advance:
            model = make_teacher(teacher, base_url, key_env)
            advance()
        with reporter.step(f"teacher writing {kind}", total=n) as advance:
            result = generate(
                loaded,
                model,
                n,
                kind=kind,
                seed=seed,
                temperature=temperature,
                max_tokens=max_tokens,
                concurrency=concurrency,
                on_done=advance,
            )
    out.print(result)
    out.print(f"next: traitloop traits validate {loaded.folder}")


@app.command("judge")
def judge_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    judge: Annotated[str, typer.Option(help="probe | api:MODEL | local:MODEL_REF | a YAML file with judge settings.")],
) -> None:
    """Rescore every cycle's answers with another judge; scores go beside the old ones."""
    from traitloop.rejudge import judge_run, parse_judge

    config = parse_judge(judge)
    result = judge_run(run_dir, config, on_cycle=lambda k: err.print(f"judged {'base' if k < 0 else f'cycle {k}'}"))
    out.print(result)


@app.command("agreement")
def agreement_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory scored by at least two judges.")],
    judge_a: Annotated[str, typer.Option(help="First judge id ('primary' = the run's own judge).")] = "primary",
    judge_b: Annotated[str | None, typer.Option(help="Second judge id (default: the first other judge found).")] = None,
) -> None:
    """Spearman correlation and mean absolute difference between two judges, per cycle and overall."""
    from traitloop.rejudge import agreement

    result = agreement(run_dir, judge_a, judge_b)
    table = Table(title=f"agreement: {result['judge_a']} vs {result['judge_b']}")
    for col in ["cycle", "answers", "Spearman", "mean |diff|"]:
        table.add_column(col, justify="right")
    for cycle, row in [*result["per_cycle"].items(), ("overall", result["overall"])]:
        table.add_row(cycle, str(row["n"]), f"{row['spearman']:.2f}", f"{row['mean_abs_diff']:.1f}")
    out.print(table)
    out.print(f"written: {run_dir / 'agreement.json'}")


@app.command("export")
def export_cmd(
    source: Annotated[Path, typer.Argument(help="A run directory, or a sweep directory with runs below it.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format", help="inspect (inspect_ai eval logs, one per cycle) | parquet (tables) | hf (a datasets.DatasetDict on disk)."
        ),
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output directory (default SOURCE/export/FORMAT).")] = None,
    push: Annotated[
        str | None,
        typer.Option(
            help="--format hf only: also push to this Hub dataset repo (user/name) as a private dataset, with your token (HF_TOKEN or `hf auth login`)."
        ),
    ] = None,
) -> None:
    """Export every cycle's training data, answers and scores for inspect_ai, pandas or Hugging Face datasets."""
    from traitloop.export import export

    result = export(source, format_, out_dir, push=push)
    out.print(result.summary())
    out.print(f"written: [bold]{result.out}[/bold]" + (f"\npushed:  {result.pushed}" if result.pushed else ""))
    if result.format == "inspect":
        out.print(f"open with: inspect view --log-dir {result.out}")


@app.command()
def reproduce(
    quick: Annotated[
        bool, typer.Option("--quick", help="The three demos, 5 independent seeds per condition (30 runs on a CPU; the default tier).")
    ] = False,
    standard: Annotated[
        bool, typer.Option("--standard", help="8 seeds per condition, more cycles, and an SFT data-quantity grid (CPU).")
    ] = False,
    full: Annotated[bool, typer.Option("--full", help="The paper-scale configs (configs/paper) x 8 seeds: GPUs and an API judge.")] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for the tier's sweeps, reproduction.md/.json and report.html (default reproduce/TIER)."),
    ] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="local: runs at a time (default 1).")] = None,
    executor: Annotated[str, typer.Option(help="local: subprocesses here; ray: one Ray task per run (docs/SCALE.md).")] = "local",
    address: Annotated[str | None, typer.Option(help="ray: the cluster (as `traitloop sweep --address`).")] = None,
    gpus_per_run: Annotated[float | None, typer.Option(min=0, help="ray: GPUs each run holds.")] = None,
    cpus_per_run: Annotated[float | None, typer.Option(min=0.01, help="ray: CPUs each run holds.")] = None,
    max_retries: Annotated[int | None, typer.Option(min=0, help="ray: retries of a run whose worker died.")] = None,
    min_seeds: Annotated[int, typer.Option("--min-seeds", help="Independent seeds a replicated verdict needs (at least 3).")] = 5,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the conditions, seeds, runs and estimated wall time; run and write nothing.")
    ] = False,
    grid: Annotated[list[Path], typer.Option("--grid", hidden=True, help="Grid files to use instead of a tier (tests).")] = [],
) -> None:
    """The paper's three findings (SFT and SDF reset vs continual, DPO continual vs reset) as sweeps with independent
    seeds, then a table: what the paper reports, what traitloop measured, agrees / disagrees / inconclusive
    (docs/REPRODUCTION.md). Rerunning the same command resumes it."""
    from traitloop.reproduce import command

    code = command(
        quick,
        standard,
        full,
        grid,
        out_dir,
        jobs,
        executor,
        address,
        gpus_per_run,
        cpus_per_run,
        max_retries,
        min_seeds,
        dry_run,
        commit=git_commit(),
        console=out,
    )
    if code:
        raise typer.Exit(code)  # main passes the code on as the exit status


def _register_more_commands() -> None:
    from traitloop import cli_report, cli_sweep

    cli_report.register(app)
    cli_sweep.register(app)


_register_more_commands()


def quiet_libraries() -> None:
    """Library chatter (per-step dicts, dataset-map bars, deprecation notes) would bury traitloop's own bars."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's "Computing reference log probs" bar
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|trl|peft|torch)\.")


def main() -> None:
    quiet_libraries()
    try:
        code = app(standalone_mode=False)  # in this mode click returns typer.Exit codes instead of exiting
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted: rerun the same command to resume; finished stages are kept")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors: click's, and those of the click that typer vendors (typer.TyperException)
        import click

        if isinstance(e, (click.ClickException, typer.TyperException)) and hasattr(e, "show"):
            e.show()
            sys.exit(2)
        raise


__all__ = ["app", "build_config", "main"]
