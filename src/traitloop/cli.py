"""The `traitloop` command. Bad input -> one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from traitloop.config import build_config, describe_fields, load_config
from traitloop.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
models_app = typer.Typer(no_args_is_help=True, help="Embedded and cached models.")
traits_app = typer.Typer(no_args_is_help=True, help="The trait library.")
app.add_typer(models_app, name="models")
app.add_typer(traits_app, name="traits")
out = Console()
err = Console(stderr=True)

DEMO_CONFIGS = Path(__file__).parent / "configs"


def _run_experiment(config, force: bool) -> Path:
    from traitloop.loop import Experiment

    rows = Experiment(config, force=force).run()
    print_scores(rows, f"{config.name}: {config.setting} / {config.trait} / {config.init}")
    root = config.run_dir
    out.print(f"\nrun directory: [bold]{root}[/bold]")
    out.print(f"scores:        {root / 'scores.csv'}")
    out.print(f"figure:        {root / 'figures' / 'trait_coherence.png'}")
    return root


def print_scores(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in ["cycle", "trait (0-100) [95% CI]", "coherence (nats/tok)", "repetition", "distinct-2", "answers", "train ex."]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["cycle"]),
            f"{r['trait_mean']:.1f} [{r['trait_ci_low']:.1f}, {r['trait_ci_high']:.1f}]",
            f"{r['coherence_mean']:.3f}",
            f"{r['repetition_mean']:.3f}",
            f"{r['distinct2_mean']:.3f}",
            str(r["n_answers"]),
            str(r["n_train_examples"]),
        )
    out.print(table)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/ and `traitloop config-docs`).")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.learning_rate=1e-4")] = [],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Parent directory for the run (overrides out_dir).")] = None,
    force: Annotated[bool, typer.Option(help="If the run dir holds a run with another config, move it aside and start anew.")] = False,
) -> None:
    """Run (or resume) one experiment. Rerunning the same command resumes where it stopped."""
    overrides = list(set_) + ([f"out_dir={out_dir}"] if out_dir else [])
    _run_experiment(load_config(config, overrides), force)


@app.command()
def demo(
    quick: Annotated[bool, typer.Option(help="A ~3-minute version (2 cycles, few answers) used by the tests.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent directory for the demo run.")] = Path("runs"),
    set_: Annotated[list[str], typer.Option("--set", help="Override a key of the demo config.")] = [],
    force: Annotated[bool, typer.Option(help="Move an old demo run made with another config aside.")] = False,
) -> None:
    """SFT on the embedded SmolLM2 seeded with bliss: a complete small experiment on a CPU."""
    name = "demo-quick.yaml" if quick else "demo.yaml"
    _run_experiment(load_config(DEMO_CONFIGS / name, list(set_) + [f"out_dir={out_dir}"]), force)


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
    from traitloop.models import resolve
    from traitloop.settings.sft import seed_rows
    from traitloop.traits import load_trait

    cfg = load_config(config, list(set_))
    seed_rows(load_trait(cfg.trait), cfg.n_seed)
    resolve(cfg.model.ref)
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
    """Built-in traits."""
    from traitloop.traits import builtin_traits, load_trait

    for name in builtin_traits():
        t = load_trait(name)
        out.print(f"[bold]{name}[/bold]: {t.description.split('.')[0]}.")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except UserError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted: rerun the same command to resume; finished stages are kept")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        raise


__all__ = ["app", "build_config", "main"]
