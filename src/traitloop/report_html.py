"""The report's rendering: one self-contained report.html (and a report.md) for a run, a sweep, or several.

    write_report(RUN_OR_SWEEP)      -> RUN_OR_SWEEP/report.html, report.md, figures/
    write_compare([A, B, ...], OUT) -> OUT/compare.html, compare.md, figures/

traitloop.report_data finds the run directories, loads each run, groups runs that differ only in
`seed` into conditions and computes the verdicts (with traitloop.analysis). This module draws the
figures with traitloop.report and renders HTML and Markdown as plain strings.

The HTML needs no network: figures are inline base64 PNG, data is inline JSON, and the page's
stylesheet and script, kept as package data in report_assets/report.css and report_assets/report.js,
are read at render time and inlined. Model answers are untrusted text: they reach the page only
inside a JSON block whose `<`, `>` and `&` are \\u-escaped, and the script puts them on the page
with textContent, never as HTML.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from traitloop import report as figures
from traitloop.analysis import Criteria
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text
from traitloop.report_data import (
    IDEMPOTENCE_HEADERS,
    JUDGE_HEADERS,
    SCORE_HEADERS,
    Collection,
    Run,
    clean,
    coherence_limits,
    differing_keys,
    flatten,
    idempotence_rows,
    judge_rows,
    judge_warning,
    load_collection,
    mde_text,
    mde_value,
    n_sampled_series,
    num,
    p_text,
    run_interval,
    sample_data,
    score_rows,
    seed_interval,
    seeds_text,
    summarize,
    unflatten,
)
from traitloop.verdicts import check_min_seeds

ASSETS = "report_assets"  # package data next to this module: the page's stylesheet and script


def asset(name: str) -> str:
    """The text of report_assets/<name> (report.css, report.js), read at render time and inlined."""
    return (resources.files("traitloop") / ASSETS / name).read_text(encoding="utf-8")


# ---- JSON for the page ------------------------------------------------------------------------------
def script_json(obj: Any) -> str:
    """JSON that is safe inside <script type="application/json">: <, > and & are \\u-escaped, so no
    text (an answer containing "</script>") can end the block."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


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
        return [
            Figure(
                f"{run.name}: trait and coherence per cycle",
                path,
                "Bands: 95% bootstrap intervals over eval questions; dotted: the untrained base model.",
            )
        ]
    out = [
        Figure(
            "All conditions on shared axes",
            figures.plot_overview(
                [(c.title, [r.trait_curve for r in c.runs], [r.coherence_curve for r in c.runs]) for c in conditions],
                fig_dir / "overview.png",
                collection.title,
                coherence_ylim=ylim,
            ),
            "Per condition: mean across seeds with a 95% Student-t band over seeds (thin lines: single seeds).",
        )
    ]
    for i, c in enumerate(conditions, start=1):
        name = fig_dir / f"condition-{i:02d}-{slug(c.title)}.png"
        if len(c.runs) == 1:
            run = c.runs[0]
            path = figures.plot_trait_coherence(run.rows, name, f"{c.title} (run {run.name})", base=run.base, coherence_ylim=ylim)
            out.append(
                Figure(
                    f"Condition {c.title} (one seed)",
                    path,
                    "Bands: 95% bootstrap intervals over eval questions; dotted: the untrained base model.",
                )
            )
        else:
            path = figures.plot_condition(
                [r.trait_curve for r in c.runs], [r.coherence_curve for r in c.runs], name, c.title, coherence_ylim=ylim
            )
            out.append(
                Figure(
                    f"Condition {c.title} ({len(c.runs)} seeds)",
                    path,
                    "Thin lines: one per seed; thick line: mean across seeds with a 95% Student-t band over seeds.",
                )
            )
    if len(conditions) > 1:
        panels = {(c.trait, c.label): [r.trait_curve for r in c.runs] for c in conditions}
        path = figures.plot_sweep_grid(panels, fig_dir / "grid.png", "trait per cycle: rows = trait, columns = condition")
        out.append(
            Figure(
                "Sweep grid", path, "Rows: trait; columns: condition. Thin lines: seeds; thick: mean with a 95% Student-t band over seeds."
            )
        )
    points = [
        (c.title, r.trait_curve[-1] - r.trait_curve[0], r.coherence_curve[-1] - r.coherence_curve[0]) for c in conditions for r in c.runs
    ]
    path = figures.plot_tradeoff(points, fig_dir / "tradeoff.png", "amplification vs coherence, one dot per run")
    out.append(Figure("Trait change vs coherence change", path, "One dot per run: last minus first cycle."))
    n_sampled_points = n_sampled_series(conditions)
    if n_sampled_points:
        path = figures.plot_vs_n_sampled(n_sampled_points, fig_dir / "n_sampled.png", "trait change vs data quantity")
        out.append(
            Figure("Trait change vs n_sampled", path, "Dots: runs; line: mean per n_sampled with a 95% Student-t interval over runs.")
        )
    return out


def run_title(run: Run) -> str:
    """ "SFT / bliss / reset / embedded:... (n_seed=.., n_sampled=..)", as loop.py titles its figure."""
    c = run.config
    model = c.get("model", {}).get("ref", "?") if isinstance(c.get("model"), dict) else "?"
    return f"{run.name}: {str(c.get('setting', '?')).upper()} / {c.get('trait', '?')} / {c.get('init', '?')} / {model} (n_seed={c.get('n_seed')}, n_sampled={c.get('n_sampled')})"


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
    """Per condition: seeds, per-run verdict counts, the replicated verdict and why, intervals over
    seeds, and the minimum detectable effect."""
    rows = ""
    for c in summary["conditions"]:
        counts = c["verdicts"]
        cells = [
            e(c["label"]),
            e(c["trait"]),
            e(seeds_text(c)),
            e(f"{counts['amplified']} / {counts['static']} / {counts['decayed']} / {counts['inconclusive']}"),
            verdict_badge(c["overall"]) + f'<br><span class="rule">{e(c["reason"])}</span>',
            e(seed_interval(c, "end_delta", 1)),
            e(seed_interval(c, "mean_prefix_slope", 2)),
            e(mde_text(c)),
        ]
        rows += "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    return (
        '<table class="verdicts"><thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in CONDITION_HEADERS)
        + f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def run_table_html(summary: dict[str, Any], condition_of: dict[str, str]) -> str:
    """Per run: first and last trait score, the criteria values with their intervals, the test's p,
    the screening flag, the verdict and the rule that decided it."""
    rows = ""
    for r in summary["runs"]:
        v = r["verdict"]
        cells = [
            e(r["run"]),
            e(condition_of[r["run"]]),
            e(r["seed"]),
            e(num(r["s_first"])),
            e(num(r["s_last"])),
            e(run_interval(v, "end_delta", "end", 1)),
            e(run_interval(v, "mean_prefix_slope", "slope", 2)),
            e(num(v["max_late_delta"], 1, True)),
            e(p_text(v)),
            e(mde_value(r["mde"])),
            e(v["screening"]),
            verdict_badge(v["verdict"]),
            f'<span class="rule">{e(v["rule"])}</span>',
        ]
        rows += "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    return (
        '<table class="verdicts"><thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in RUN_HEADERS)
        + f"</tr></thead><tbody>{rows}</tbody></table>"
    )


RUN_TABLE_NOTE = (
    "Intervals of the end delta and slope: 95% bootstrap over eval questions, paired across cycles, plus the "
    "model-to-model noise the verdict allows for. Smallest p: the permutation test's smallest one-sided p over "
    "criteria and directions. MDE: the smallest rise over the run (points) that one run like this is called "
    "amplified for 80% of the time, at the noise measured on its condition (traitloop power)."
)
CONDITION_HEADERS = [
    "condition",
    "trait",
    "seeds",
    "runs amplified / static / decayed / inconclusive",
    "verdict",
    "s_N - s_0 over seeds [95% t CI]",
    "mean prefix slope [95% t CI]",
    "MDE (points over the run)",
]
RUN_HEADERS = [
    "run",
    "condition",
    "seed",
    "s_0",
    "s_N",
    "end delta [95% CI]",
    "mean prefix slope [95% CI]",
    "max late delta",
    "smallest p",
    "MDE",
    "screening",
    "verdict",
    "rule",
]


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
        rows = [
            [r.name] + [json.dumps(f.get(k)) if not isinstance(f.get(k), str) else f.get(k) for k in differ]
            for r, f in zip(collection.runs, flats)
        ]
        text = "<h3>What differs between runs</h3>" + table(["run"] + differ, rows) + "<h3>Shared by all runs</h3>" + text
    sweep_files = [s / "sweep.yaml" for s in collection.sources if (s / "sweep.yaml").is_file()]
    for path in sweep_files:
        text += f"<h3>{e(path)}</h3><pre>{e(path.read_text(encoding='utf-8'))}</pre>"
    return text


def sample_browser_html() -> str:
    """The sample browser's controls and empty grid; report.js fills them from the JSON block."""
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
    if judge_warning(runs):
        sections.append(f'<p class="warning">{e(judge_warning(runs))}</p>')
    sections.append(
        "<h2>Verdicts</h2>"
        f'<p class="rule-text">{e(summary["rule"])}</p>'
        + (("<h3>Per condition (seeds pooled)</h3>" + condition_table_html(summary)) if not single else "")
        + "<h3>Per run</h3>"
        + f'<p class="meta">{e(RUN_TABLE_NOTE)}</p>'
        + run_table_html(summary, condition_of)
    )
    if collection.skipped:
        sections.append("<h2>Runs left out</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in collection.skipped) + "</ul>")
    sections.append("<h2>Figures</h2>" + "".join(figure_html(f, report_dir) for f in figs))
    sections.append("<h2>Sample browser</h2>" + sample_browser_html())
    sections.append(
        "<h2>Scores per cycle</h2>"
        '<p class="meta">Trait: judge score 0-100 with a 95% bootstrap interval over eval questions (a question\'s answers are resampled together). Coherence: mean log-prob per token of the answer under the frozen base model (nats; higher = more fluent).</p>'
        + "".join(details(r.name, table(SCORE_HEADERS, score_rows(r), "numbers"), open_=single or len(runs) <= 3) for r in runs)
    )
    t = summary["tradeoff"]
    sections.append(
        "<h2>Trade-off and idempotence</h2>"
        f"<p>Across {len(runs)} run(s), correlation of trait change with coherence change: Pearson {e(num(t['pearson'], 2))}, "
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
        f"<title>{e(collection.title)}</title><style>\n{asset('report.css')}</style></head><body>"
        + header
        + "".join(f"<section>{s}</section>" for s in sections)
        + f'<script type="application/json" id="report-data">{script_json(report_data)}</script>'
        + f'<script type="application/json" id="sample-data">{script_json(clean(samples))}</script>'
        + f"<script>\n{asset('report.js')}</script></body></html>\n"
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
    parts = [
        f"# {collection.title}\n",
        f"{len(collection.runs)} run(s), {len(collection.conditions)} condition(s), from {', '.join(str(s) for s in collection.sources)}.\n",
        f"Rule: {summary['rule']}\n",
    ]
    if judge_warning(collection.runs):
        parts.append(f"**{judge_warning(collection.runs)}**\n")
    if len(collection.runs) > 1:
        rows = [
            [
                c["label"],
                c["trait"],
                seeds_text(c),
                f"{c['verdicts']['amplified']}/{c['verdicts']['static']}/{c['verdicts']['decayed']}/{c['verdicts']['inconclusive']}",
                f"**{c['overall']}**: {c['reason']}",
                seed_interval(c, "end_delta", 1),
                seed_interval(c, "mean_prefix_slope", 2),
                mde_text(c),
            ]
            for c in summary["conditions"]
        ]
        parts.append("## Verdicts per condition\n\n" + md_table(CONDITION_HEADERS, rows))
    rows = [
        [
            r["run"],
            condition_of[r["run"]],
            r["seed"],
            num(r["s_first"]),
            num(r["s_last"]),
            run_interval(r["verdict"], "end_delta", "end", 1),
            run_interval(r["verdict"], "mean_prefix_slope", "slope", 2),
            num(r["verdict"]["max_late_delta"], 1, True),
            p_text(r["verdict"]),
            mde_value(r["mde"]),
            r["verdict"]["screening"],
            f"**{r['verdict']['verdict']}**",
            r["verdict"]["rule"],
        ]
        for r in summary["runs"]
    ]
    parts.append("## Verdicts per run\n\n" + RUN_TABLE_NOTE + "\n\n" + md_table(RUN_HEADERS, rows))
    parts.append("## Scores per cycle\n")
    for run in collection.runs:
        parts.append(f"### {run.name}\n\n" + md_table(SCORE_HEADERS, score_rows(run)))
    t = summary["tradeoff"]
    parts.append(
        f"## Trade-off and idempotence\n\nPearson {num(t['pearson'], 2)}, Spearman {num(t['spearman'], 2)} (trait change vs coherence change across runs).\n\n"
        + md_table(IDEMPOTENCE_HEADERS, idempotence_rows(summary))
    )
    parts.append(
        "## Figures\n\n" + "".join(f"- {f.title}: `{relative(f.png, report_dir)}` (SVG: `{relative(f.svg, report_dir)}`)\n" for f in figs)
    )
    return "\n".join(parts)


# ---- entry points -----------------------------------------------------------------------------------------
def write_outputs(collection: Collection, out_dir: Path, stem: str, criteria: Criteria = Criteria()) -> Path:
    """Figures into out_dir/figures, then out_dir/<stem>.html and <stem>.md; returns the HTML path."""
    check_min_seeds(criteria.min_seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = clean(summarize(collection, criteria))
    figs = make_figures(collection, out_dir / "figures")
    html_path = out_dir / f"{stem}.html"
    atomic_write_text(html_path, render_html(collection, summary, figs, out_dir))
    atomic_write_text(out_dir / f"{stem}.md", render_markdown(collection, summary, figs, out_dir))
    return html_path


def write_report(path: str | Path, criteria: Criteria = Criteria()) -> Path:
    """report.html + report.md (+ figures/) inside a run or sweep directory; returns report.html."""
    root = Path(path).expanduser()
    collection = load_collection([root], f"traitloop report: {root.resolve().name}")
    return write_outputs(collection, root, "report", criteria)


def write_compare(paths: list[str | Path], out: str | Path = "compare", criteria: Criteria = Criteria()) -> Path:
    """compare.html + compare.md (+ figures/) in `out` for several runs or sweeps on shared axes;
    conditions are grouped within each input. Returns compare.html."""
    if not paths:
        raise UserError("compare needs at least one run or sweep directory")
    roots = [Path(p).expanduser() for p in paths]
    collection = load_collection(roots, "traitloop compare: " + " vs ".join(r.resolve().name for r in roots))
    return write_outputs(collection, Path(out).expanduser(), "compare", criteria)
