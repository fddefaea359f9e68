"""The report: one self-contained report.html (and a report.md) for a run, a sweep, or several.

    write_report(RUN_OR_SWEEP)      -> RUN_OR_SWEEP/report.html, report.md, figures/
    write_compare([A, B, ...], OUT) -> OUT/compare.html, compare.md, figures/

The steps, each its own function: find the run directories (a directory with scores.csv, or one
whose sub-directories up to two levels down hold them), load each run, group runs that differ only
in `seed` into conditions, compute verdicts with traitloop.analysis, draw figures with
traitloop.report, then render HTML and Markdown as plain strings.

The HTML needs no network: figures are inline base64 PNG, data is inline JSON, the script is
inline. Model answers are untrusted text: they reach the page only inside a JSON block whose `<`,
`>` and `&` are \\u-escaped, and the script puts them on the page with textContent, never as HTML.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from traitloop import report as figures
from traitloop.analysis import Criteria, classify, idempotence, replicated_verdict, tradeoff
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text, read_jsonl

INT_COLUMNS = {"cycle", "n_answers", "n_trait_scored", "n_train_examples"}
NOT_SCIENCE = {"seed", "name", "out_dir"}  # runs differing only in these belong to one condition
MAX_LABEL_KEYS = 3  # a condition label names at most this many differing config keys


# ---- loading -------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run directory, loaded: its config, manifest, per-cycle scores and base metrics."""

    path: Path
    name: str
    source: Path  # the directory the user named that holds this run
    config: dict[str, Any]
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    base: dict[str, Any] | None

    @property
    def trait_curve(self) -> list[float]:
        return [r["trait_mean"] for r in self.rows]

    @property
    def coherence_curve(self) -> list[float]:
        return [r["coherence_mean"] for r in self.rows]

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.manifest.get("seed"))


@dataclass
class Condition:
    """Runs whose configs are equal apart from seed, name and out_dir (and that share a source)."""

    key: str
    trait: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.trait} · {self.label}"


@dataclass
class Collection:
    """Everything one report shows: runs, their conditions, and runs left out with the reason."""

    title: str
    sources: list[Path]
    runs: list[Run]
    conditions: list[Condition]
    skipped: list[str]


def find_run_dirs(root: Path) -> list[Path]:
    """`root` itself when it holds scores.csv, else every directory up to two levels below it that
    does (a sweep: SWEEP/runs/<name>/scores.csv). Bad or empty input is a UserError."""
    if not root.exists():
        raise UserError(f"{root} does not exist; give a run directory or a sweep directory")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give a run directory (with scores.csv) or a sweep directory")
    if (root / "scores.csv").is_file():
        return [root]
    found = sorted({p.parent for pattern in ("*/scores.csv", "*/*/scores.csv") for p in root.glob(pattern)})
    if not found:
        raise UserError(
            f"{root} holds no runs: expected scores.csv in it (a run directory) or in its sub-directories "
            "up to two levels down (a sweep directory). A run writes scores.csv when it finishes; "
            "run `traitloop run CONFIG` first."
        )
    return found


def _number(text: str | None, column: str, path: Path) -> float | int:
    """One scores.csv cell as int (counts, cycle) or float (scores); blank -> nan."""
    if text is None or text.strip() == "":
        return math.nan
    try:
        return int(text) if column in INT_COLUMNS else float(text)
    except ValueError:
        raise UserError(f"{path}: column {column!r} holds {text!r}, not a number; the file is damaged") from None


def read_scores(path: Path) -> list[dict[str, Any]]:
    """scores.csv as a list of dicts with numbers, sorted by cycle."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"cycle", "trait_mean", "coherence_mean"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {sorted(missing)}; is this a traitloop scores.csv?")
        rows = [{k: _number(v, k, path) for k, v in row.items() if k is not None} for row in reader]
    return sorted(rows, key=lambda r: r["cycle"])


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or None when it is absent; a broken file is a UserError."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg})") from None


def load_run(path: Path, name: str, source: Path) -> Run:
    """Read one run directory (config.yaml, manifest.json, scores.csv, base/metrics.json)."""
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{path} has scores.csv but no config.yaml; it is not a complete run directory")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{config_path}: not valid YAML ({err})") from None
    return Run(
        path=path,
        name=name,
        source=source,
        config=config,
        manifest=read_json_file(path / "manifest.json") or {},
        rows=read_scores(path / "scores.csv"),
        base=read_json_file(path / "base" / "metrics.json"),
    )


def run_names(paths: list[Path], source: Path, prefix: bool) -> list[str]:
    """Short unique display names: the directory name, or its path below `source` when names
    repeat; with `prefix`, the source's name in front (several sources in one comparison)."""
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [p.relative_to(source).as_posix() if p != source else p.name for p in paths]
    if prefix:
        names = [n if p == source else f"{source.name}/{n}" for p, n in zip(paths, names)]
    return names


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested config keys as dotted paths."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}: the inverse of flatten."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def science(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config without the keys that do not change results (seed, name, out_dir)."""
    return {k: v for k, v in flatten(config).items() if k not in NOT_SCIENCE}


def differing_keys(configs: list[dict[str, Any]], exclude: set[str] = frozenset()) -> list[str]:
    """Dotted keys whose values are not the same in every flattened config, in first-seen order."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in exclude and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def describe(config: dict[str, Any], keys: list[str], source: str | None = None) -> str:
    """A short label like "demo · init=reset, n_sampled=8" (at most MAX_LABEL_KEYS keys shown)."""
    parts = [f"{k}={config.get(k)}" for k in keys[:MAX_LABEL_KEYS]]
    if len(keys) > MAX_LABEL_KEYS:
        parts.append(f"+{len(keys) - MAX_LABEL_KEYS} more")
    text = ", ".join(parts)
    if source:
        return f"{source} · {text}" if text else source
    return text or "all runs"


def group_conditions(runs: list[Run], by_source: bool) -> list[Condition]:
    """Group runs whose science configs are equal (within one source when by_source) and label each
    group by the config keys that differ between groups (trait has its own column)."""
    groups: dict[str, Condition] = {}
    for run in runs:
        key = json.dumps(science(run.config), sort_keys=True, default=str)
        if by_source:
            key = f"{run.source}|{key}"
        if key not in groups:
            groups[key] = Condition(key=key, trait=str(run.config.get("trait", "?")), label="")
        groups[key].runs.append(run)
    conditions = list(groups.values())
    configs = [science(c.runs[0].config) for c in conditions]
    keys = differing_keys(configs, exclude={"trait"})
    for condition, config in zip(conditions, configs):
        condition.label = describe(config, keys, condition.runs[0].source.name if by_source else None)
    return conditions


def load_collection(sources: list[Path], title: str) -> Collection:
    """Find and load every run under the sources and group them; runs with no finished cycle are
    left out (listed in `skipped`), and a collection with none left is a UserError."""
    runs: list[Run] = []
    skipped: list[str] = []
    several = len(sources) > 1
    for source in sources:
        paths = find_run_dirs(source)
        for path, name in zip(paths, run_names(paths, source, prefix=several)):
            run = load_run(path, name, source)
            if run.rows:
                runs.append(run)
            else:
                skipped.append(f"{name}: scores.csv has no cycles yet")
    if not runs:
        raise UserError(f"no finished cycles in {', '.join(map(str, sources))}: every scores.csv is empty ({'; '.join(skipped)})")
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # identical names from different sources: number them
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({i + 1})"
    return Collection(title, sources, runs, group_conditions(runs, by_source=several), skipped)


# ---- numbers --------------------------------------------------------------------------------------
def finite(x: Any) -> float | None:
    """x as a float, or None when it is missing or not finite (JSON has no NaN)."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def num(x: Any, digits: int = 1, signed: bool = False) -> str:
    """A number for a table cell; "n/a" when missing or not finite."""
    value = finite(x)
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval(d: dict[str, float], digits: int = 1) -> str:
    """{"mean", "low", "high"} -> "+12.3 [+4.5, +20.1]"."""
    return f"{num(d['mean'], digits, True)} [{num(d['low'], digits, True)}, {num(d['high'], digits, True)}]"


def seed_interval(condition: dict[str, Any], key: str, digits: int) -> str:
    """A condition's interval over seeds, or just the value when there is one seed (no interval)."""
    if condition["n_seeds"] < 2:
        return f"{num(condition[key]['mean'], digits, True)} (one seed: no interval)"
    return interval(condition[key], digits)


def rule_text(criteria: Criteria = Criteria()) -> str:
    """The verdict rule in words (PROTOCOL.md, "Calling a run amplified")."""
    return (
        f"On per-cycle mean trait scores s_0..s_N (0-100). Amplified when any criterion holds: "
        f"(1) end delta s_N - s_0 >= {criteria.delta:g} points; (2) mean slope of the least-squares fits to "
        f"s_0..s_k, k = 1..N, >= {criteria.min_slope:g} points/cycle; (3) late delta s_k - s_0 >= {criteria.delta:g} "
        f"for some k >= {criteria.late_from}. Decayed when the mirrored (falling) criteria hold; static when "
        "neither; inconclusive when both, or with fewer than 2 cycles. Across seeds, replicated amplification = "
        "a majority of seeds amplified AND the 95% bootstrap interval of s_N - s_0 over seeds lies above 0 "
        "(mirrored for replicated decay)."
    )


def run_summary(run: Run) -> dict[str, Any]:
    """Verdict, idempotence and changes of one run, as plain data."""
    verdict = classify(run.trait_curve)
    return {
        "run": run.name,
        "seed": run.seed,
        "s_first": run.trait_curve[0],
        "s_last": run.trait_curve[-1],
        "verdict": verdict.as_dict(),
        "idempotence": idempotence(run.trait_curve),
        "delta_trait": run.trait_curve[-1] - run.trait_curve[0],
        "delta_coherence": run.coherence_curve[-1] - run.coherence_curve[0],
    }


def condition_summary(condition: Condition) -> dict[str, Any]:
    """replicated_verdict over the condition's seeds, plus its label and run names."""
    return {
        "condition": condition.title,
        "trait": condition.trait,
        "label": condition.label,
        "runs": [r.name for r in condition.runs],
        **replicated_verdict([r.trait_curve for r in condition.runs]),
    }


def summarize(collection: Collection) -> dict[str, Any]:
    """All numbers the report prints: per run, per condition, and the trade-off across runs."""
    runs = collection.runs
    with warnings.catch_warnings():  # scipy warns on (near-)constant changes; the report shows n/a or the value
        warnings.simplefilter("ignore")
        trade = tradeoff([r.trait_curve for r in runs], [r.coherence_curve for r in runs])
    return {
        "rule": rule_text(),
        "runs": [run_summary(r) for r in runs],
        "conditions": [condition_summary(c) for c in collection.conditions],
        "tradeoff": trade,
    }


def coherence_limits(runs: list[Run]) -> tuple[float, float] | None:
    """Shared y limits for coherence across runs (their intervals and base values, padded 5%)."""
    values = []
    for run in runs:
        for row in run.rows + ([run.base] if run.base else []):
            values += [finite(row.get(k)) for k in ("coherence_mean", "coherence_ci_low", "coherence_ci_high")]
    values = [v for v in values if v is not None]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = 0.05 * (high - low) or 0.1
    return low - pad, high + pad


# ---- figures ----------------------------------------------------------------------------------------
@dataclass
class Figure:
    title: str
    png: Path
    caption: str

    @property
    def svg(self) -> Path:
        return self.png.with_suffix(".svg")


def slug(text: str) -> str:
    """A file-name-safe version of text."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"


def make_figures(collection: Collection, fig_dir: Path) -> list[Figure]:
    """Draw every figure the collection calls for into fig_dir (PNG + SVG) and describe each.

    One run: its trait/coherence figure. Several: an overview of all conditions on shared axes,
    one figure per condition (seed lines + mean, or the run's own figure for a single seed), the
    sweep grid when there are several conditions, the trade-off scatter, and score vs n_sampled
    when n_sampled varies."""
    runs, conditions = collection.runs, collection.conditions
    ylim = coherence_limits(runs)
    if len(runs) == 1:
        run = runs[0]
        path = figures.plot_trait_coherence(run.rows, fig_dir / "trait_coherence.png", run_title(run), base=run.base, coherence_ylim=ylim)
        return [Figure(f"{run.name}: trait and coherence per cycle", path, "Bands: 95% bootstrap intervals over answers; dotted: the untrained base model.")]
    out = [
        Figure(
            "All conditions on shared axes",
            figures.plot_overview([(c.title, [r.trait_curve for r in c.runs], [r.coherence_curve for r in c.runs]) for c in conditions], fig_dir / "overview.png", collection.title, coherence_ylim=ylim),
            "Per condition: mean across seeds with a 95% bootstrap band over seeds (thin lines: single seeds).",
        )
    ]
    for i, c in enumerate(conditions, start=1):
        name = fig_dir / f"condition-{i:02d}-{slug(c.title)}.png"
        if len(c.runs) == 1:
            run = c.runs[0]
            path = figures.plot_trait_coherence(run.rows, name, f"{c.title} (run {run.name})", base=run.base, coherence_ylim=ylim)
            out.append(Figure(f"Condition {c.title} (one seed)", path, "Bands: 95% bootstrap intervals over answers; dotted: the untrained base model."))
        else:
            path = figures.plot_condition([r.trait_curve for r in c.runs], [r.coherence_curve for r in c.runs], name, c.title, coherence_ylim=ylim)
            out.append(Figure(f"Condition {c.title} ({len(c.runs)} seeds)", path, "Thin lines: one per seed; thick line: mean across seeds with a 95% bootstrap band over seeds."))
    if len(conditions) > 1:
        panels = {(c.trait, c.label): [r.trait_curve for r in c.runs] for c in conditions}
        path = figures.plot_sweep_grid(panels, fig_dir / "grid.png", "trait per cycle: rows = trait, columns = condition")
        out.append(Figure("Sweep grid", path, "Rows: trait; columns: condition. Thin lines: seeds; thick: mean with a 95% bootstrap band."))
    points = [(c.title, r.trait_curve[-1] - r.trait_curve[0], r.coherence_curve[-1] - r.coherence_curve[0]) for c in conditions for r in c.runs]
    path = figures.plot_tradeoff(points, fig_dir / "tradeoff.png", "amplification vs coherence, one dot per run")
    out.append(Figure("Trait change vs coherence change", path, "One dot per run: last minus first cycle."))
    n_sampled_points = n_sampled_series(conditions)
    if n_sampled_points:
        path = figures.plot_vs_n_sampled(n_sampled_points, fig_dir / "n_sampled.png", "trait change vs data quantity")
        out.append(Figure("Trait change vs n_sampled", path, "Dots: runs; line: mean per n_sampled with a 95% bootstrap interval over runs."))
    return out


def n_sampled_series(conditions: list[Condition]) -> list[tuple[str, float, float]]:
    """(group label, n_sampled, s_N - s_0) per run for a data-quantity study; groups = runs equal in
    every other key (trait included). Empty unless some group holds two or more n_sampled values."""
    runs = [r for c in conditions for r in c.runs if r.config.get("n_sampled") is not None]
    configs = [science(r.config) for r in runs]
    keys = differing_keys(configs, exclude={"n_sampled"})
    labels = [describe(cfg, keys) for cfg in configs]
    if not any(len({r.config["n_sampled"] for r, lab in zip(runs, labels) if lab == label}) > 1 for label in set(labels)):
        return []
    return [(label, float(r.config["n_sampled"]), r.trait_curve[-1] - r.trait_curve[0]) for r, label in zip(runs, labels)]


def run_title(run: Run) -> str:
    """"SFT / bliss / reset / embedded:... (n_seed=.., n_sampled=..)", as loop.py titles its figure."""
    c = run.config
    model = c.get("model", {}).get("ref", "?") if isinstance(c.get("model"), dict) else "?"
    return f"{run.name}: {str(c.get('setting', '?')).upper()} / {c.get('trait', '?')} / {c.get('init', '?')} / {model} (n_seed={c.get('n_seed')}, n_sampled={c.get('n_sampled')})"


# ---- sample browser data -------------------------------------------------------------------------------
def cycle_columns(run: Run) -> list[tuple[str, Path]]:
    """(column name, eval.jsonl) for base (if present) and each cycle that has answers."""
    columns = [("base", run.path / "base" / "eval.jsonl")]
    columns += [(f"cycle {int(r['cycle'])}", run.path / f"cycle-{int(r['cycle']):03d}" / "eval.jsonl") for r in run.rows]
    return [(name, path) for name, path in columns if path.is_file()]


def sample_data(run: Run) -> dict[str, Any]:
    """One run's answers for the browser: questions in first-seen order and, per question and
    column (base, cycle 0, ...), the answers with their trait and coherence scores."""
    columns = cycle_columns(run)
    per_column = [read_jsonl(path) for _, path in columns]
    questions = list(dict.fromkeys(str(row.get("question", "")) for rows in per_column for row in rows))
    index = {q: i for i, q in enumerate(questions)}
    cells: list[list[list[dict[str, Any]]]] = [[[] for _ in columns] for _ in questions]
    for c, rows in enumerate(per_column):
        for row in rows:
            cells[index[str(row.get("question", ""))]][c].append(
                {"sample": row.get("sample"), "answer": str(row.get("answer", "")), "trait": finite(row.get("trait")), "coherence": finite(row.get("coherence"))}
            )
    return {"name": run.name, "columns": [name for name, _ in columns], "questions": questions, "cells": cells}


def script_json(obj: Any) -> str:
    """JSON that is safe inside <script type="application/json">: <, > and & are \\u-escaped, so no
    text (an answer containing "</script>") can end the block."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def clean(obj: Any) -> Any:
    """obj with every non-finite float replaced by None (JSON has no NaN) and paths as strings."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, float):
        return finite(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---- HTML -----------------------------------------------------------------------------------------------
def e(x: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(x), quote=True)


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; every cell is escaped text."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def verdict_badge(verdict: str) -> str:
    """A coloured label for a verdict (class = its first word)."""
    return f'<span class="badge {e(verdict.split()[0].rstrip(":"))}">{e(verdict)}</span>'


def condition_table_html(summary: dict[str, Any]) -> str:
    """Per condition: seeds, verdict counts, replicated verdict, intervals of end delta and slope."""
    head = ["condition", "trait", "seeds", "amplified / static / decayed / inconclusive", "verdict", "s_N - s_0: mean [95% CI]", "mean prefix slope [95% CI]"]
    rows = ""
    for c in summary["conditions"]:
        counts = c["verdicts"]
        cells = [
            e(c["label"]),
            e(c["trait"]),
            e(c["n_seeds"]),
            e(f"{counts['amplified']} / {counts['static']} / {counts['decayed']} / {counts['inconclusive']}"),
            verdict_badge(c["overall"]),
            e(seed_interval(c, "end_delta", 1)),
            e(seed_interval(c, "mean_prefix_slope", 2)),
        ]
        rows += "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    return '<table class="verdicts"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr></thead><tbody>{rows}</tbody></table>"


def run_table_html(summary: dict[str, Any], condition_of: dict[str, str]) -> str:
    """Per run: first and last trait score, the criteria values, verdict and the rule that fired."""
    head = ["run", "condition", "seed", "s_0", "s_N", "end delta", "mean prefix slope", "max late delta", "verdict", "rule"]
    rows = ""
    for r in summary["runs"]:
        v = r["verdict"]
        cells = [
            e(r["run"]),
            e(condition_of[r["run"]]),
            e(r["seed"]),
            e(num(r["s_first"])),
            e(num(r["s_last"])),
            e(num(v["end_delta"], 1, True)),
            e(num(v["mean_prefix_slope"], 2, True)),
            e(num(v["max_late_delta"], 1, True)),
            verdict_badge(v["verdict"]),
            f'<span class="rule">{e(v["rule"])}</span>',
        ]
        rows += "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    return '<table class="verdicts"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr></thead><tbody>{rows}</tbody></table>"


def score_rows(run: Run) -> list[list[str]]:
    """Per-cycle score table rows (base first when present), formatted."""
    rows = []
    for r in ([{**run.base, "cycle": "base"}] if run.base else []) + run.rows:
        rows.append(
            [
                str(r.get("cycle")),
                f"{num(r.get('trait_mean'))} [{num(r.get('trait_ci_low'))}, {num(r.get('trait_ci_high'))}]",
                f"{num(r.get('coherence_mean'), 3)} [{num(r.get('coherence_ci_low'), 3)}, {num(r.get('coherence_ci_high'), 3)}]",
                num(r.get("repetition_mean"), 3),
                num(r.get("distinct2_mean"), 3),
                num(r.get("n_answers"), 0),
                num(r.get("n_train_examples"), 0),
            ]
        )
    return rows


SCORE_HEADERS = ["cycle", "trait [95% CI]", "coherence nats/token [95% CI]", "repetition", "distinct-2", "answers", "train examples"]


def details(summary_text: str, body: str, open_: bool) -> str:
    """A collapsible block, open or closed."""
    return f"<details{' open' if open_ else ''}><summary>{e(summary_text)}</summary>{body}</details>"


def figure_html(fig: Figure, report_dir: Path) -> str:
    """A figure as an inline base64 PNG with its caption and the paths of its PNG/SVG files."""
    data = base64.b64encode(fig.png.read_bytes()).decode("ascii")
    where = f"{relative(fig.png, report_dir)}, {relative(fig.svg, report_dir)}"
    return f'<figure><img alt="{e(fig.title)}" src="data:image/png;base64,{data}"><figcaption><b>{e(fig.title)}.</b> {e(fig.caption)} <span class="path">Files: {e(where)}</span></figcaption></figure>'


def relative(path: Path, base: Path) -> str:
    """path relative to base when it lies below it, else absolute."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def judge_rows(runs: list[Run]) -> list[list[str]]:
    """Per run: judge identity, probe validity (held-out accuracy/AUC) and judge agreement."""
    rows = []
    for run in runs:
        j = run.manifest.get("judge", {}) or {}
        agreement = read_json_file(run.path / "agreement.json")
        agree_text = agreement_text(agreement) if agreement is not None else "no agreement.json"
        rows.append(
            [
                run.name,
                str(j.get("judge", "?")),
                str(j.get("kind", "?")),
                num(j.get("heldout_accuracy"), 3),
                num(j.get("heldout_auc"), 3),
                num(j.get("heldout_near_miss_accuracy"), 3),
                str(j.get("heldout_method", "")),
                str(run.manifest.get("coherence", "")),
                agree_text,
            ]
        )
    return rows


def agreement_text(agreement: Any) -> str:
    """agreement.json in one line: "key: value; ..." for an object (numbers to 3 digits), else its JSON."""
    if not isinstance(agreement, dict):
        return json.dumps(agreement)[:300]
    return "; ".join(f"{k}: {num(v, 3) if isinstance(v, float) else v}" for k, v in flatten(agreement).items())


JUDGE_HEADERS = ["run", "judge", "kind", "held-out accuracy", "held-out AUC", "near-miss accuracy", "held-out method", "coherence metric", "judge agreement"]


def timing_table(run: Run) -> str:
    """Seconds per stage and cycle (base = the untrained model's evaluation), from the manifest."""
    cycles = run.manifest.get("cycles", {}) or {}
    order = sorted(cycles, key=lambda k: int(k) if str(k).lstrip("-").isdigit() else 10**9)
    stages = list(dict.fromkeys(s for k in order for s in (cycles[k].get("timings_s") or {})))
    if not stages:
        return "<p>No timings recorded in manifest.json.</p>"
    rows = []
    for k in order:
        timings = cycles[k].get("timings_s") or {}
        rows.append(["base" if str(k) == "-1" else str(k)] + [num(timings.get(s), 1) if s in timings else "" for s in stages])
    return table(["cycle"] + [f"{s} (s)" for s in stages], rows, "numbers")


def config_html(collection: Collection) -> str:
    """The config shared by every run as YAML, and a table of what differs between runs."""
    flats = [flatten(r.config) for r in collection.runs]
    differ = differing_keys(flats)
    shared = {k: v for k, v in flats[0].items() if k not in differ}
    text = f"<pre>{e(yaml.safe_dump(unflatten(shared), sort_keys=False))}</pre>"
    if differ:
        rows = [[r.name] + [json.dumps(f.get(k)) if not isinstance(f.get(k), str) else f.get(k) for k in differ] for r, f in zip(collection.runs, flats)]
        text = "<h3>What differs between runs</h3>" + table(["run"] + differ, rows) + "<h3>Shared by all runs</h3>" + text
    sweep_files = [s / "sweep.yaml" for s in collection.sources if (s / "sweep.yaml").is_file()]
    for path in sweep_files:
        text += f"<h3>{e(path)}</h3><pre>{e(path.read_text(encoding='utf-8'))}</pre>"
    return text


def idempotence_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Per run: trait and coherence change, and the idempotence numbers."""
    return [
        [
            r["run"],
            num(r["delta_trait"], 1, True),
            num(r["delta_coherence"], 3, True),
            num(r["idempotence"]["first_step"], 1),
            num(r["idempotence"]["later_steps"], 1),
            num(r["idempotence"]["ratio"], 2),
        ]
        for r in summary["runs"]
    ]


IDEMPOTENCE_HEADERS = ["run", "trait change (last - first)", "coherence change", "|s_1 - s_0|", "mean |s_k - s_(k-1)|, k >= 2", "ratio later / first"]


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; font-size: 1.2rem; }
h3 { font-size: 1rem; margin: 1rem 0 .4rem; }
.meta, .path, .rule-text { color: #555; font-size: .85rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .85rem; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f5; } tbody tr:nth-child(even) { background: #fafafa; }
td .rule { color: #444; font-size: .8rem; }
.badge { display: inline-block; padding: .05rem .45rem; border-radius: .6rem; font-weight: 600; font-size: .8rem; white-space: nowrap; background: #e8e8e8; }
.badge.amplified, .badge.replicated { background: #fde2e1; color: #9b1c1c; } .badge.decayed { background: #dbeafe; color: #1e40af; }
.badge.static { background: #e5e7eb; color: #374151; } .badge.inconclusive, .badge.not { background: #fef3c7; color: #92400e; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e3e3e3; } figcaption { font-size: .85rem; color: #333; }
pre { background: #f6f6f8; padding: .6rem; overflow-x: auto; font-size: .8rem; }
details { margin: .4rem 0; } summary { cursor: pointer; font-weight: 600; }
.controls { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; margin: .5rem 0; }
.controls label { font-size: .9rem; } .controls select { max-width: 60ch; }
#sb-grid { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(230px, 1fr); gap: .6rem; overflow-x: auto; }
.sb-column h4 { margin: .2rem 0 .4rem; font-size: .9rem; background: #f3f3f5; padding: .2rem .4rem; }
.sb-answer { border: 1px solid #ddd; border-radius: 4px; padding: .4rem; margin-bottom: .4rem; font-size: .85rem; }
.sb-scores { color: #555; font-size: .75rem; margin-bottom: .2rem; } .sb-text { white-space: pre-wrap; overflow-wrap: anywhere; }
.sb-empty { color: #888; font-size: .8rem; } [hidden] { display: none !important; }
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sample-data").textContent);
  var runSelect = document.getElementById("sb-run");
  var questionSelect = document.getElementById("sb-question");
  var minInput = document.getElementById("sb-min-trait");
  var grid = document.getElementById("sb-grid");
  var count = document.getElementById("sb-count");

  function option(value, text) {
    var o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;
    return o;
  }
  function currentRun() { return data.runs[Number(runSelect.value)]; }
  function fmt(x, digits) { return x === null || x === undefined ? "n/a" : x.toFixed(digits); }

  function fillQuestions() {
    questionSelect.replaceChildren();
    currentRun().questions.forEach(function (q, i) { questionSelect.appendChild(option(i, q)); });
  }

  function answerCard(a) {
    var card = document.createElement("div");
    card.className = "sb-answer";
    card.dataset.trait = a.trait === null ? "" : String(a.trait);
    var scores = document.createElement("div");
    scores.className = "sb-scores";
    scores.textContent = "sample " + a.sample + " · trait " + fmt(a.trait, 1) + " · coherence " + fmt(a.coherence, 2);
    var text = document.createElement("div");
    text.className = "sb-text";
    text.textContent = a.answer;
    card.append(scores, text);
    return card;
  }

  function render() {
    var run = currentRun();
    var q = Number(questionSelect.value);
    grid.replaceChildren();
    run.columns.forEach(function (name, c) {
      var column = document.createElement("div");
      column.className = "sb-column";
      column.dataset.column = name;
      var head = document.createElement("h4");
      head.textContent = name;
      column.appendChild(head);
      var answers = run.cells[q][c];
      if (answers.length === 0) {
        var empty = document.createElement("div");
        empty.className = "sb-empty";
        empty.textContent = "no answers to this question";
        column.appendChild(empty);
      }
      answers.forEach(function (a) { column.appendChild(answerCard(a)); });
      var filtered = document.createElement("div");
      filtered.className = "sb-empty sb-filtered";
      filtered.textContent = "all answers here score below the minimum";
      column.appendChild(filtered);
      grid.appendChild(column);
    });
    applyFilter();
  }

  function applyFilter() {
    var min = Number(minInput.value);
    if (!isFinite(min) || min < 0) { min = 0; }
    var shown = 0, total = 0;
    grid.querySelectorAll(".sb-answer").forEach(function (card) {
      var t = card.dataset.trait === "" ? null : Number(card.dataset.trait);
      var keep = min <= 0 || (t !== null && t >= min);
      card.hidden = !keep;
      total += 1;
      if (keep) { shown += 1; }
    });
    grid.querySelectorAll(".sb-column").forEach(function (column) {
      var cards = column.querySelectorAll(".sb-answer");
      var visible = column.querySelectorAll(".sb-answer:not([hidden])");
      column.querySelector(".sb-filtered").hidden = cards.length === 0 || visible.length > 0;
    });
    count.textContent = "showing " + shown + " of " + total + " answers";
  }

  data.runs.forEach(function (r, i) { runSelect.appendChild(option(i, r.name)); });
  document.getElementById("sb-run-label").hidden = data.runs.length < 2;
  runSelect.addEventListener("change", function () { fillQuestions(); render(); });
  questionSelect.addEventListener("change", render);
  minInput.addEventListener("input", applyFilter);
  if (data.runs.length === 0 || currentRun().questions.length === 0) {
    count.textContent = "no eval answers found";
    return;
  }
  fillQuestions();
  render();
})();
"""


def sample_browser_html() -> str:
    """The sample browser's controls and empty grid; SCRIPT fills them from the JSON block."""
    return (
        '<div class="controls">'
        '<label id="sb-run-label">run <select id="sb-run"></select></label>'
        '<label>question <select id="sb-question"></select></label>'
        '<label>min trait score <input id="sb-min-trait" type="number" min="0" max="100" step="1" value="0" style="width:5em"></label>'
        '<span id="sb-count" class="meta"></span></div>'
        '<p class="meta">Columns: the untrained base (when evaluated) and each cycle. With a minimum above 0, '
        "answers scoring below it, and unscored answers, are hidden.</p>"
        '<div id="sb-grid"></div>'
    )


def render_html(collection: Collection, summary: dict[str, Any], figs: list[Figure], report_dir: Path) -> str:
    """The whole page as one string: every section, figures inline, data and script inline."""
    runs = collection.runs
    single = len(runs) == 1
    condition_of = {r.name: c.title for c in collection.conditions for r in c.runs}
    sections = []
    sections.append(
        "<h2>Verdicts</h2>"
        f'<p class="rule-text">{e(summary["rule"])}</p>'
        + (("<h3>Per condition (seeds pooled)</h3>" + condition_table_html(summary)) if not single else "")
        + "<h3>Per run</h3>"
        + run_table_html(summary, condition_of)
    )
    if collection.skipped:
        sections.append("<h2>Runs left out</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in collection.skipped) + "</ul>")
    sections.append("<h2>Figures</h2>" + "".join(figure_html(f, report_dir) for f in figs))
    sections.append("<h2>Sample browser</h2>" + sample_browser_html())
    sections.append(
        "<h2>Scores per cycle</h2>"
        '<p class="meta">Trait: probe score 0-100 with a 95% bootstrap interval over answers. Coherence: mean log-prob per token of the answer under the frozen base model (nats; higher = more fluent).</p>'
        + "".join(details(r.name, table(SCORE_HEADERS, score_rows(r), "numbers"), open_=single or len(runs) <= 3) for r in runs)
    )
    t = summary["tradeoff"]
    sections.append(
        "<h2>Trade-off and idempotence</h2>"
        f'<p>Across {len(runs)} run(s), correlation of trait change with coherence change: Pearson {e(num(t["pearson"], 2))}, '
        f'Spearman {e(num(t["spearman"], 2))} <span class="meta">(n/a with fewer than 3 runs or no variation)</span>.</p>'
        + table(IDEMPOTENCE_HEADERS, idempotence_rows(summary), "numbers")
    )
    sections.append("<h2>Judge and validity</h2>" + table(JUDGE_HEADERS, judge_rows(runs)))
    sections.append("<h2>Timings</h2>" + "".join(details(f"{r.name}: seconds per stage", timing_table(r), open_=single) for r in runs))
    sections.append("<h2>Config</h2>" + details("config.yaml (click to show)", config_html(collection), open_=False))
    samples = {"runs": [sample_data(r) for r in runs]}
    report_data = clean({"title": collection.title, "summary": summary, "scores": {r.name: {"rows": r.rows, "base": r.base} for r in runs}})
    header = (
        f"<h1>{e(collection.title)}</h1>"
        f'<p class="meta">Generated {e(time.strftime("%Y-%m-%d %H:%M:%S"))} by traitloop from '
        f"{e(', '.join(str(s) for s in collection.sources))}: {len(runs)} run(s), {len(collection.conditions)} condition(s).</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(collection.title)}</title><style>{STYLE}</style></head><body>"
        + header
        + "".join(f"<section>{s}</section>" for s in sections)
        + f'<script type="application/json" id="report-data">{script_json(report_data)}</script>'
        + f'<script type="application/json" id="sample-data">{script_json(clean(samples))}</script>'
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


# ---- Markdown ---------------------------------------------------------------------------------------------
def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; | in cells is escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(collection: Collection, summary: dict[str, Any], figs: list[Figure], report_dir: Path) -> str:
    """Verdicts, per-cycle score tables and figure paths, for pasting into notes."""
    condition_of = {r.name: c.title for c in collection.conditions for r in c.runs}
    parts = [f"# {collection.title}\n", f"{len(collection.runs)} run(s), {len(collection.conditions)} condition(s), from {', '.join(str(s) for s in collection.sources)}.\n", f"Rule: {summary['rule']}\n"]
    if len(collection.runs) > 1:
        rows = [
            [c["label"], c["trait"], c["n_seeds"], f"{c['verdicts']['amplified']}/{c['verdicts']['static']}/{c['verdicts']['decayed']}/{c['verdicts']['inconclusive']}", f"**{c['overall']}**", seed_interval(c, "end_delta", 1), seed_interval(c, "mean_prefix_slope", 2)]
            for c in summary["conditions"]
        ]
        parts.append("## Verdicts per condition\n\n" + md_table(["condition", "trait", "seeds", "ampl/static/decay/inconcl", "verdict", "s_N - s_0 [95% CI]", "slope [95% CI]"], rows))
    rows = [
        [r["run"], condition_of[r["run"]], r["seed"], num(r["s_first"]), num(r["s_last"]), num(r["verdict"]["end_delta"], 1, True), num(r["verdict"]["mean_prefix_slope"], 2, True), f"**{r['verdict']['verdict']}**", r["verdict"]["rule"]]
        for r in summary["runs"]
    ]
    parts.append("## Verdicts per run\n\n" + md_table(["run", "condition", "seed", "s_0", "s_N", "end delta", "slope", "verdict", "rule"], rows))
    parts.append("## Scores per cycle\n")
    for run in collection.runs:
        parts.append(f"### {run.name}\n\n" + md_table(SCORE_HEADERS, score_rows(run)))
    t = summary["tradeoff"]
    parts.append(f"## Trade-off and idempotence\n\nPearson {num(t['pearson'], 2)}, Spearman {num(t['spearman'], 2)} (trait change vs coherence change across runs).\n\n" + md_table(IDEMPOTENCE_HEADERS, idempotence_rows(summary)))
    parts.append("## Figures\n\n" + "".join(f"- {f.title}: `{relative(f.png, report_dir)}` (SVG: `{relative(f.svg, report_dir)}`)\n" for f in figs))
    return "\n".join(parts)


# ---- entry points -----------------------------------------------------------------------------------------
def write_outputs(collection: Collection, out_dir: Path, stem: str) -> Path:
    """Figures into out_dir/figures, then out_dir/<stem>.html and <stem>.md; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = clean(summarize(collection))
    figs = make_figures(collection, out_dir / "figures")
    html_path = out_dir / f"{stem}.html"
    atomic_write_text(html_path, render_html(collection, summary, figs, out_dir))
    atomic_write_text(out_dir / f"{stem}.md", render_markdown(collection, summary, figs, out_dir))
    return html_path


def write_report(path: str | Path) -> Path:
    """report.html + report.md (+ figures/) inside a run or sweep directory; returns report.html."""
    root = Path(path).expanduser()
    collection = load_collection([root], f"traitloop report: {root.resolve().name}")
    return write_outputs(collection, root, "report")


def write_compare(paths: list[str | Path], out: str | Path = "compare") -> Path:
    """compare.html + compare.md (+ figures/) in `out` for several runs or sweeps on shared axes;
    conditions are grouped within each input. Returns compare.html."""
    if not paths:
        raise UserError("compare needs at least one run or sweep directory")
    roots = [Path(p).expanduser() for p in paths]
    collection = load_collection(roots, "traitloop compare: " + " vs ".join(r.resolve().name for r in roots))
    return write_outputs(collection, Path(out).expanduser(), "compare")
