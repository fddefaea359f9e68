"""The report's data: find run directories, load runs, group them into conditions, and compute
everything the report prints, as plain Python data and plain text. No HTML or Markdown here; that
is traitloop.report_html, which renders what this module returns.

    find_run_dirs(ROOT)              -> run directories (ROOT itself, or up to two levels below)
    load_collection([ROOT, ...], T)  -> Collection: Runs, their Conditions, runs left out and why
    summarize(collection)            -> verdicts per run and per condition, trade-off, the rule

Run directories are read only through traitloop.store (RunStore: config, manifest, scores, base
metrics, eval rows, agreement). Runs with equal ExperimentConfig.condition_dict form one condition
(the one definition sweeps use too). Verdicts come from traitloop.verdicts.
Also here: the per-run inputs for figures (coherence_limits, n_sampled_series), the sample
browser's data (sample_data), NaN-free JSON-ready data (clean), and the rows of the plain-text
tables both renderers share (score_rows, judge_rows, idempotence_rows, with their headers).
Bad input (no runs, a damaged file) is a UserError.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from traitloop.analysis import Criteria, classify, idempotence, tradeoff
from traitloop.config import NOT_A_CONDITION, NOT_SCIENCE
from traitloop.errors import UserError
from traitloop.openai_client import redact_urls
from traitloop.power import DEFAULT_NOISE, Design, Noise, minimum_detectable_effect, noise_from_runs
from traitloop.store import BASE, RunStore
from traitloop.verdicts import QuestionScores, SeedRun, decide_condition, decide_run

MAX_LABEL_KEYS = 3  # a condition label names at most this many differing config keys


# ---- loading -------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run directory, loaded: its config, manifest, per-cycle scores and base metrics."""

    path: Path
    name: str
    source: Path  # the directory the user named that holds this run
    config: dict[str, Any]  # config.yaml, a password in a server URL masked (redact_url): it is shown and exported
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

    @property
    def store(self) -> RunStore:
        return RunStore(self.path)

    @cached_property
    def eval_rows(self) -> list[list[dict[str, Any]]] | None:
        """Each finished cycle's eval.jsonl rows, or None when some cycle has none (then verdicts
        can only screen point means). Read once: the verdict, the seeds and the noise all use them."""
        rows = [self.store.eval_rows(int(r["cycle"])) for r in self.rows]
        return None if any(r is None for r in rows) else rows

    @cached_property
    def question_scores(self) -> QuestionScores | None:
        rows = self.eval_rows
        return QuestionScores.from_rows([int(r["cycle"]) for r in self.rows], rows) if rows is not None else None

    @property
    def cycle0_source(self) -> str:
        """The run whose cycle 0 this run measured: itself, or the run it copied cycle 0 from."""
        source = self.config.get("cycle0_from")
        return Path(str(source)).name if source else self.path.name


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


def load_run(path: Path, name: str, source: Path) -> Run:
    """Read one run directory through the store (config.yaml, manifest.json, scores.csv, base/metrics.json)."""
    store = RunStore(path)
    if not store.is_run():
        raise UserError(
            f"{path} has scores.csv but no config.yaml, so it is not a complete run directory; restore its config.yaml "
            "or move the directory out of the way"
        )
    config = redact_urls(store.config_data())  # shown in reports and exports: a password in a server URL masked
    store.check_format()
    return Run(
        path=path, name=name, source=source, config=config, manifest=store.manifest(), rows=store.scores(), base=store.base_metrics()
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
    """The flattened config without the keys that do not change results (seed, where things are):
    ExperimentConfig.condition_dict, the one definition sweeps use too. A config.yaml this version
    cannot read falls back to dropping NOT_SCIENCE."""
    from pydantic import ValidationError

    from traitloop.config import ExperimentConfig

    try:
        return flatten(ExperimentConfig.model_validate(config).condition_dict())
    except ValidationError:
        dropped = (*NOT_SCIENCE, *NOT_A_CONDITION)
        return {k: v for k, v in flatten(config).items() if not any(k == d or k.startswith(f"{d}.") for d in dropped)}


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
        raise UserError(
            f"no finished cycles in {', '.join(map(str, sources))}: every scores.csv is empty ({'; '.join(skipped)}); "
            "report a run once it has finished cycle 0"
        )
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # identical names from different sources: number them
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({i + 1})"
    return Collection(title, sources, runs, group_conditions(runs, by_source=several), skipped)


# ---- numbers and summaries ----------------------------------------------------------------------
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
    """A condition's interval over independent seeds, or just the value with one (no interval)."""
    if condition["n_independent"] < 2:
        return f"{num(condition[key]['mean'], digits, True)} (one independent seed: no interval)"
    return interval(condition[key], digits)


def seeds_text(condition: dict[str, Any]) -> str:
    """ "5" or "5 (1 independent)" when seeds share a cycle 0."""
    n, k = condition["n_seeds"], condition["n_independent"]
    return str(n) if n == k else f"{n} ({k} independent)"


def mde_value(x: Any) -> str:
    """A minimum detectable effect in points; None = not reachable on the 0-100 scale."""
    return "not reachable" if x is None else f"{x:.0f}"


def mde_text(condition: dict[str, Any]) -> str:
    """The minimum detectable rise of one run, and of the condition's seeds when there are enough."""
    text = f"one run: {mde_value(condition['mde_run'])}"
    if condition["n_independent"] >= condition["min_seeds"]:
        text += f"; {condition['n_independent']} seeds: {mde_value(condition['mde_seeds'])}"
    return text


def run_interval(verdict: dict[str, Any], key: str, statistic: str, digits: int) -> str:
    """A run's criterion value with its paired question-bootstrap interval where there is one."""
    bounds = (verdict.get("intervals") or {}).get(statistic)
    value = num(verdict.get(key), digits, True)
    return f"{value} [{num(bounds[0], digits, True)}, {num(bounds[1], digits, True)}]" if bounds else value


def p_text(verdict: dict[str, Any]) -> str:
    """The smallest one-sided p-value of the run's permutation test, with the threshold it must meet."""
    p_values = verdict.get("p_values")
    if not p_values:
        return "n/a"
    best = min(min(p["up"], p["down"]) for p in p_values.values())
    return f"{best:.3f} (needs <= {verdict['threshold']:.3f})"


def rule_text(criteria: Criteria = Criteria()) -> str:
    """The verdict rule in words (PROTOCOL.md, "Calling a run amplified", and traitloop.verdicts)."""
    return (
        f"Screening (PROTOCOL.md) on per-cycle mean trait scores s_0..s_N (0-100), each the mean over eval questions: "
        f"(1) end delta s_N - s_0 >= {criteria.delta:g} points; (2) mean slope of the least-squares fits to "
        f"s_0..s_k, k = 1..N, >= {criteria.min_slope:g} points/cycle (only with >= {criteria.slope_min_cycles} cycles); (3) late delta s_k - s_0 >= {criteria.delta:g} "
        f"for some k >= {criteria.late_from}; mirrored for falls. Per run: a fired criterion counts only when a permutation "
        f"test of cycle labels within each eval question puts it beyond the noise (one-sided p <= {criteria.alpha:g} / the number of "
        "criteria that apply), so a run with no true change is called amplified (or decayed) at most "
        f"{criteria.alpha:.0%} of the time; amplified / decayed when one does, inconclusive when a criterion fires only within the "
        "noise, when criteria fire in both directions, or when only the slope is beyond the noise and it points against s_N - s_0; "
        "static when none fires. "
        f"Intervals are {criteria.level:.0%} bootstraps over eval questions, paired across cycles. Across seeds: replicated "
        f"amplification = at least {criteria.min_seeds} independent seeds (each its own cycle 0), the {criteria.level:.0%} Student-t "
        "interval of s_N - s_0 over seeds above 0, and the mean curve over seeds passing a screening criterion (mirrored for "
        f"decay); static when that interval lies within +-{criteria.delta:g}; fewer seeds give 'insufficient seeds'. "
        "MDE: the smallest rise over the run called amplified 80% of the time, simulated at this condition's measured noise "
        "(traitloop power)."
    )


def run_summary(run: Run, criteria: Criteria = Criteria()) -> dict[str, Any]:
    """Verdict (screening and the noise-aware decision), idempotence and changes of one run."""
    screening = classify(run.trait_curve, criteria)
    scores = run.question_scores
    verdict = screening.as_dict()
    verdict["screening"] = screening.verdict
    if scores is None:
        verdict["verdict"] = "inconclusive"
        verdict["rule"] = (
            f"no per-question eval data (cycle-*/eval.jsonl) to test against the noise; screening alone says {screening.verdict}: {screening.rule}"
        )
    else:
        decision = decide_run(scores, criteria, seed=int(run.seed or 0))
        verdict.update(
            verdict=decision.verdict,
            rule=decision.rule,
            end_delta=decision.statistics.get("end", screening.end_delta),
            mean_prefix_slope=decision.statistics.get("slope", screening.mean_prefix_slope),
            intervals=decision.intervals,
            p_values=decision.p_values,
            threshold=decision.threshold,
            n_questions=decision.n_questions,
            dropped_questions=decision.dropped_questions,
            unit=decision.unit,
        )
    return {
        "run": run.name,
        "seed": run.seed,
        "s_first": run.trait_curve[0],
        "s_last": run.trait_curve[-1],
        "verdict": verdict,
        "idempotence": idempotence(run.trait_curve),
        "delta_trait": run.trait_curve[-1] - run.trait_curve[0],
        "delta_coherence": run.coherence_curve[-1] - run.coherence_curve[0],
    }


def seed_runs(condition: Condition, verdicts: dict[str, str]) -> list[SeedRun]:
    """The condition's runs as seeds: question-mean curves where eval data exist; runs whose cycle-0
    scores are identical (copied) share one cycle-0 source."""
    seeds, first_cycle0 = [], {}
    for run in condition.runs:
        scores = run.question_scores
        curve = scores.curve.tolist() if scores is not None else run.trait_curve
        source = run.cycle0_source
        if scores is not None:
            fingerprint = json.dumps([scores.questions, scores.means[0].round(6).tolist()])
            source = first_cycle0.setdefault(fingerprint, source)
        seeds.append(SeedRun(run.name, curve, source, verdicts.get(run.name)))
    return seeds


def eval_data(runs: list[Run]) -> list[list[list[dict[str, Any]]]]:
    """The eval rows (per cycle) of every run that has them all: what noise_from_runs reads."""
    return [r.eval_rows for r in runs if r.eval_rows is not None]


def condition_noise(condition: Condition) -> tuple[Design, Noise]:
    """One seed's design and the noise measured on the condition's runs (the default noise where
    they hold too little to measure it)."""
    data = eval_data(condition.runs)
    first = condition.runs[0].question_scores
    # samples per question: answers over questions in each run's cycle 0, the smallest
    samples = min((len(per[0]) // max(1, len({str(x.get("question")) for x in per[0]})) for per in data), default=3)
    design = Design(
        cycles=len(condition.runs[0].rows), questions=first.means.shape[1] if first is not None else 12, samples=max(1, samples)
    )
    try:
        noise = noise_from_runs(data, f"measured on {len(data)} run(s) of this condition")
    except ValueError:
        noise = DEFAULT_NOISE
    return design, noise


MDE_SIMS = 200  # simulations per step of the report's MDE search (traitloop power uses more)


def condition_summary(condition: Condition, verdicts: dict[str, str], criteria: Criteria = Criteria()) -> dict[str, Any]:
    """decide_condition over the condition's seeds, its label and run names, and the minimum
    detectable effects of one run and of all its independent seeds."""
    result = decide_condition(seed_runs(condition, verdicts), criteria)
    design, noise = condition_noise(condition)
    fast = replace(criteria, n_permutations=500)
    mde_run = minimum_detectable_effect(design, noise, fast, MDE_SIMS, seed=0, resolution=1.0)
    mde_seeds = None
    if result["n_independent"] >= criteria.min_seeds:
        mde_seeds = minimum_detectable_effect(
            replace(design, seeds=result["n_independent"]), noise, criteria, MDE_SIMS, seed=0, resolution=1.0
        )
    return {
        "condition": condition.title,
        "trait": condition.trait,
        "label": condition.label,
        "runs": [r.name for r in condition.runs],
        **result,
        "mde_run": mde_run,
        "mde_seeds": mde_seeds,
        "noise": noise.as_dict(),
    }


def summarize(collection: Collection, criteria: Criteria = Criteria()) -> dict[str, Any]:
    """All numbers the report prints: per run, per condition, and the trade-off across runs."""
    runs = collection.runs
    with warnings.catch_warnings():  # scipy warns on (near-)constant changes; the report shows n/a or the value
        warnings.simplefilter("ignore")
        trade = tradeoff([r.trait_curve for r in runs], [r.coherence_curve for r in runs])
    run_summaries = [run_summary(r, criteria) for r in runs]
    verdicts = {s["run"]: s["verdict"]["verdict"] for s in run_summaries}
    conditions = [condition_summary(c, verdicts, criteria) for c in collection.conditions]
    mde_of = {name: c["mde_run"] for c in conditions for name in c["runs"]}
    for summary in run_summaries:
        summary["mde"] = mde_of[summary["run"]]  # one run of its condition, at the condition's noise
    return {
        "rule": rule_text(criteria),
        "runs": run_summaries,
        "conditions": conditions,
        "tradeoff": trade,
    }


# ---- figure inputs --------------------------------------------------------------------------------
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


# ---- sample browser data and JSON-ready data ----------------------------------------------------------
def cycle_columns(run: Run) -> list[tuple[str, int]]:
    """(column name, cycle) for base (if present) and each cycle that has answers."""
    columns = [("base", BASE)] + [(f"cycle {int(r['cycle'])}", int(r["cycle"])) for r in run.rows]
    return [(name, k) for name, k in columns if run.store.has(k, "eval")]


def sample_data(run: Run) -> dict[str, Any]:
    """One run's answers for the browser: questions in first-seen order and, per question and
    column (base, cycle 0, ...), the answers with their trait and coherence scores."""
    columns = cycle_columns(run)
    per_column = [run.store.read_rows(k, "eval") for _, k in columns]
    questions = list(dict.fromkeys(str(row.get("question", "")) for rows in per_column for row in rows))
    index = {q: i for i, q in enumerate(questions)}
    cells: list[list[list[dict[str, Any]]]] = [[[] for _ in columns] for _ in questions]
    for c, rows in enumerate(per_column):
        for row in rows:
            cells[index[str(row.get("question", ""))]][c].append(
                {
                    "sample": row.get("sample"),
                    "answer": str(row.get("answer", "")),
                    "trait": finite(row.get("trait")),
                    "coherence": finite(row.get("coherence")),
                }
            )
    return {"name": run.name, "columns": [name for name, _ in columns], "questions": questions, "cells": cells}


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


# ---- table rows (plain text, shared by the HTML and the Markdown) --------------------------------------
def score_rows(run: Run) -> list[list[str]]:
    """Per-cycle score table rows (base first when present), formatted."""
    rows = []
    for r in ([{**run.base, "cycle": "base"}] if run.base else []) + run.rows:
        rows.append(
            [
                str(r.get("cycle")),
                f"{num(r.get('trait_mean'))} [{num(r.get('trait_ci_low'))}, {num(r.get('trait_ci_high'))}]",
                f"{num(r.get('coherence_score_mean'))} [{num(r.get('coherence_score_ci_low'))}, {num(r.get('coherence_score_ci_high'))}]",
                f"{num(r.get('coherence_mean'), 3)} [{num(r.get('coherence_ci_low'), 3)}, {num(r.get('coherence_ci_high'), 3)}]",
                num(r.get("repetition_mean"), 3),
                num(r.get("distinct2_mean"), 3),
                num(r.get("distinct2_across"), 3),
                num(r.get("self_similarity"), 3),
                f"{num(r.get('heldout_high_ppl'), 0)} / {num(r.get('heldout_low_ppl'), 0)}",
                num(r.get("n_answers"), 0) + (f" ({low})" if (low := scored_warning(r)) else ""),
                num(r.get("n_train_examples"), 0)
                + (f" ({num(r.get('n_dropped_coherence'), 0)} dropped by the coherence filter)" if r.get("n_dropped_coherence") else ""),
            ]
        )
    return rows


SCORE_HEADERS = [
    "cycle",
    "trait [95% CI]",
    "coherence 0-100 [95% CI]",
    "typicality nats/token [95% CI]",
    "repetition",
    "distinct-2",
    "distinct-2 across answers",
    "self-similarity",
    "perplexity high / low-trait texts",
    "answers",
    "train examples",
]
MIN_SCORED = 0.9  # a cycle whose judge scored fewer of its answers than this is flagged


def scored_warning(row: dict[str, Any]) -> str:
    """ "only 27 of 36 scored" when the judge scored under MIN_SCORED of a cycle's answers, else ""."""
    n, scored = finite(row.get("n_answers")), finite(row.get("n_trait_scored"))
    if not n or scored is None or scored / n >= MIN_SCORED:
        return ""
    return f"only {scored:.0f} of {n:.0f} scored"


def judge_rows(runs: list[Run]) -> list[list[str]]:
    """Per run: judge identity, the probe's held-out fit on probe.jsonl, its validity on the trait's
    validation set for the run's kind of text (traitloop.judges.validity) and judge agreement."""
    rows = []
    for run in runs:
        j = run.manifest.get("judge", {}) or {}
        v = j.get("validity") or {}
        agreement = run.store.agreement()
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
                str(v.get("kind", "")),
                num(v.get("floor")),
                num(v.get("spearman"), 2),
                num(v.get("auc_vs_plain"), 2),
                num(v.get("cross_trait_auc"), 2),
                validity_text(v),
                str(run.manifest.get("coherence", "")),
                agree_text,
            ]
        )
    return rows


def validity_text(validity: dict[str, Any]) -> str:
    """Whether the judge is valid for a run's trait and kind, in words."""
    if not validity:
        return "not recorded (run made before validity was measured)"
    if validity.get("valid") is None:
        return f"unmeasured: {validity.get('unmeasured', '')}"
    return "yes" if validity["valid"] else "no (" + "; ".join(validity.get("unmet", [])) + "): verdict exploratory"


def judge_warning(runs: list[Run]) -> str:
    """One line for above the verdicts: the runs whose judge is not valid for their trait (their verdicts are
    exploratory) or was not measured; "" when there are none."""
    validity = {r.name: (r.manifest.get("judge") or {}).get("validity") or {} for r in runs}
    invalid = [r for r in runs if validity[r.name].get("valid") is False]
    unmeasured = [r.name for r in runs if validity[r.name].get("valid") is None]  # or not recorded at all
    lines = []
    if invalid:
        why = sorted({f"{r.config.get('trait')} {validity[r.name]['kind']}s ({'; '.join(validity[r.name]['unmet'])})" for r in invalid})
        lines.append(
            f"Exploratory: the trait judge is not valid for {', '.join(why)}, so the verdict of "
            f"{', '.join(r.name for r in invalid)} is exploratory, not a finding (docs/JUDGES.md)."
        )
    if unmeasured:
        lines.append(
            f"Judge validity unmeasured or not recorded for {', '.join(unmeasured)}: read their verdicts as exploratory (docs/JUDGES.md)."
        )
    return " ".join(lines)


def agreement_text(agreement: Any) -> str:
    """agreement.json in one line: "key: value; ..." for an object (numbers to 3 digits), else its JSON."""
    if not isinstance(agreement, dict):
        return json.dumps(agreement)[:300]
    return "; ".join(f"{k}: {num(v, 3) if isinstance(v, float) else v}" for k, v in flatten(agreement).items())


JUDGE_HEADERS = [
    "run",
    "judge",
    "kind",
    "held-out accuracy",
    "held-out AUC",
    "near-miss accuracy",
    "held-out method",
    "validated on",
    "floor",
    "Spearman",
    "AUC vs plain",
    "cross-trait AUC",
    "valid for this run",
    "coherence metric",
    "judge agreement",
]


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


IDEMPOTENCE_HEADERS = [
    "run",
    "trait change (last - first)",
    "coherence change",
    "|s_1 - s_0|",
    "mean |s_k - s_(k-1)|, k >= 2",
    "ratio later / first",
]
