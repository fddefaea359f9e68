"""`traitloop export`: a run or a sweep in the formats other tools read.

    inspect  one inspect_ai eval log per cycle (and one for the base model), under OUT/<run>/:
             samples = the eval questions and answers (sample id = the question's number in the run,
             epoch = its sample + 1), scores = trait, coherence (and the LLM judge's coherence
             rating), repetition and distinct-2; the judge's reading per answer in the sample's
             metadata, its identity (manifest.json "judge") in the log's; the run config as the
             task's arguments; the run's start and last update as the log's times. Written with
             inspect_ai's own classes and write_eval_log, so `inspect view --log-dir OUT` opens them.
    parquet  OUT/<table>.parquet for the tables below.
    hf       the same tables as a datasets.DatasetDict (one split per table), save_to_disk(OUT);
             with push, also pushed to the Hugging Face Hub as a private dataset.

Tables (every row names its run; cycle -1 is the untrained base model, store.BASE):
    runs     one row per run x cycle: run, condition (its label, as the report names it), seed, the
             condition's config fields flattened as `config.<dotted key>` columns
             (ExperimentConfig.condition_dict), and the cycle's scores.csv row.
    metrics  scores.csv of every run (SCORES_COLUMNS), with the base model's row (cycle -1) first.
    eval     every eval.jsonl row (answers and their scores) of the base and every finished cycle,
             with run, cycle and index (the row's line in its file, from 0).
    data     every cycle's training rows (data.jsonl) with run, cycle and index.
Fields parquet cannot hold as they are (lists, mappings, and columns whose values have different
types) are JSON strings; the parquet files name them in their schema metadata (key "traitloop":
{"json_columns": [...], "table": ...}), the hf splits in their info.description (the same JSON).

Runs are found as the report finds them (report_data.find_run_dirs: the directory itself, or runs up
to two levels below it) and read only through the store (traitloop.store.RunStore).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from traitloop.errors import UserError
from traitloop.report_data import Collection, Run, load_collection, science
from traitloop.store import BASE, SCORES_COLUMNS

FORMATS = ("inspect", "parquet", "hf")
TABLES = ("runs", "metrics", "eval", "data")
SCORE_KEYS = ("trait", "coherence", "coherence_score", "coherence_judge", "repetition", "distinct2")  # eval.jsonl fields that are scores
INSTALL = "pip install 'traitloop[export]' (or: pip install inspect-ai pyarrow)"


@dataclass
class ExportResult:
    """What an export wrote: the format, the output directory, the files (or the dataset directory),
    the runs exported and, for hf with push, the Hub repository."""

    format: str
    out: Path
    files: list[Path]
    runs: list[str]
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows (parquet, hf); log -> samples (inspect)
    pushed: str | None = None

    def summary(self) -> str:
        """One line: what was exported, for the command line."""
        if self.format == "inspect":
            what = f"{len(self.files)} eval log(s), {sum(self.rows.values())} samples"
        else:
            what = ", ".join(f"{table} {n} rows" for table, n in self.rows.items())
        return f"exported {len(self.runs)} run(s) as {self.format}: {what}"


def export(source: str | Path, fmt: str, out: str | Path | None = None, push: str | None = None) -> ExportResult:
    """Export the run or sweep at `source` as `fmt` (inspect | parquet | hf) into `out`
    (default SOURCE/export/FMT); `push` (hf only): a Hub dataset repo to push to. Bad input is a UserError."""
    source = Path(source)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose inspect, parquet or hf")
    if push and fmt != "hf":
        raise UserError(f"--push needs --format hf (the Hub holds datasets), not --format {fmt}")
    target = Path(out) if out is not None else source / "export" / fmt
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {target} is a file; give a directory (it is created when missing)")
    if fmt == "inspect":
        _require("inspect_ai", "--format inspect")
    else:
        _require("pyarrow", f"--format {fmt}")
    collection = load_collection([source], source.name)
    target.mkdir(parents=True, exist_ok=True)
    names = [r.name for r in collection.runs]
    if fmt == "inspect":
        files, counts = write_inspect(collection, target)
        return ExportResult(fmt, target, files, names, counts)
    tables = build_tables(collection)
    if fmt == "parquet":
        return ExportResult(fmt, target, write_parquet(tables, target, source), names, {k: len(v) for k, v in tables.items()})
    dataset = to_dataset_dict(tables)
    dataset.save_to_disk(str(target))
    result = ExportResult(fmt, target, [target], names, {k: len(v) for k, v in tables.items()})
    if push:
        push_dataset(dataset, push)
        result.pushed = push
    return result


def _require(module: str, what: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module}, which is not installed: {INSTALL}") from None


def cycles(run: Run, base: bool = True) -> list[int]:
    """The run's finished cycles (scores.csv), after the base model (BASE) when it was evaluated and `base`."""
    finished = [int(r["cycle"]) for r in run.rows]
    return ([BASE] if base and run.store.has(BASE, "eval") else []) + finished


def cycle_label(cycle: int) -> str:
    return "base" if cycle == BASE else f"cycle-{cycle:03d}"


# ---- tables (parquet, hf) -------------------------------------------------------------------------
def build_tables(collection: Collection) -> dict[str, list[dict[str, Any]]]:
    """The runs, metrics, eval and data tables of every run in the collection, as lists of rows."""
    label = {id(r): c.label for c in collection.conditions for r in c.runs}
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
    for run in collection.runs:
        store = run.store
        config = {f"config.{k}": v for k, v in science(run.config).items()}
        for row in run.rows:
            tables["runs"].append({"run": run.name, "condition": label[id(run)], "seed": run.seed, **row, **config})
        if run.base:
            tables["metrics"].append({"run": run.name, **{c: run.base.get(c) for c in SCORES_COLUMNS}, "cycle": BASE})
        tables["metrics"] += [{"run": run.name, **row} for row in run.rows]
        for k in cycles(run):
            for i, row in enumerate(store.eval_rows(k) or []):
                tables["eval"].append({"run": run.name, "cycle": k, "index": i, **row})
            if k != BASE and store.has(k, "data"):
                for i, row in enumerate(store.read_rows(k, "data")):
                    tables["data"].append({"run": run.name, "cycle": k, "index": i, **row})
    return tables


def columns(rows: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[str]]:
    """Rows -> {column: values} in first-seen key order (missing keys are None), and the columns made
    JSON strings: those holding lists or mappings, or values of different types."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cols: dict[str, list[Any]] = {}
    json_columns = []
    for key in keys:
        values = [row.get(key) for row in rows]
        kinds = {_kind(v) for v in values if v is not None}
        if "nested" in kinds or (len(kinds) > 1 and kinds != {"int", "float"}):
            values = [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]
            json_columns.append(key)
        elif kinds == {"int", "float"}:
            values = [None if v is None else float(v) for v in values]
        cols[key] = values
    return cols, json_columns


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple, dict)):
        return "nested"
    return type(value).__name__


def arrow_table(rows: list[dict[str, Any]], metadata: dict[str, Any] | None = None):
    """One table as a pyarrow Table; the JSON-string columns are named in the schema metadata."""
    import pyarrow as pa

    cols, json_columns = columns(rows)
    table = pa.table({k: pa.array(v) for k, v in cols.items()})
    meta = {"json_columns": json_columns, **(metadata or {})}
    return table.replace_schema_metadata({"traitloop": json.dumps(meta)})


def write_parquet(tables: dict[str, list[dict[str, Any]]], target: Path, source: Path) -> list[Path]:
    import pyarrow.parquet as pq

    files = []
    for name, rows in tables.items():
        if not rows:
            continue
        path = target / f"{name}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(arrow_table(rows, {"table": name, "source": str(source)}), tmp)
        tmp.replace(path)
        files.append(path)
    return files


def to_dataset_dict(tables: dict[str, list[dict[str, Any]]]):
    """The tables as a datasets.DatasetDict, one split per non-empty table; each split's info.description
    is the same JSON as the parquet files' "traitloop" metadata (its JSON-string columns)."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    splits = {}
    for name, rows in tables.items():
        if rows:
            table = arrow_table(rows, {"table": name})
            splits[name] = Dataset(table, info=DatasetInfo(description=table.schema.metadata[b"traitloop"].decode()))
    return DatasetDict(splits)


def push_dataset(dataset, repo: str) -> None:
    """Push to the Hub with the user's token (HF_TOKEN or `hf auth login`), as a private dataset."""
    try:
        dataset.push_to_hub(repo, private=True)
    except Exception as err:  # huggingface_hub's errors: no token, no network, no such namespace, no rights
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--push {repo}: the Hub refused or could not be reached ({first}); log in with `hf auth login` or set HF_TOKEN, "
            "check the repo name (user/name), and retry (the dataset is saved locally)"
        ) from None


# ---- inspect_ai eval logs --------------------------------------------------------------------------
def write_inspect(collection: Collection, target: Path) -> tuple[list[Path], dict[str, int]]:
    """One eval log per cycle of every run: OUT/<run>/<base|cycle-NNN>.eval."""
    from inspect_ai.log import write_eval_log

    files, counts = [], {}
    for run in collection.runs:
        questions = _question_numbers(run)
        for k in cycles(run):
            rows = run.store.eval_rows(k)
            if rows is None:
                continue
            path = target / run.name / f"{cycle_label(k)}.eval"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_eval_log(eval_log(run, k, rows, questions), str(path))
            files.append(path)
            counts[str(path.relative_to(target))] = len(rows)
    return files, counts


def _question_numbers(run: Run) -> dict[str, int]:
    """Each eval question's number (1, 2, ...) in first-seen order over the base and every cycle, so one
    question has the same sample id in every cycle's log."""
    seen: dict[str, int] = {}
    for k in cycles(run):
        for row in run.store.eval_rows(k) or []:
            seen.setdefault(str(row.get("question", "")), len(seen) + 1)
    return seen


def _iso(stamp: Any) -> str:
    """manifest.json's time (2026-01-02T03:04:05+0000) as ISO 8601 with a colon in the offset."""
    try:
        return datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S%z").isoformat()
    except ValueError:
        return datetime.now().astimezone().isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def eval_sample(row: dict[str, Any], sample_id: int, epoch: int, model: str):
    """One eval.jsonl row as an inspect EvalSample: the question as input, the answer as the assistant's
    message and output, its scores (a score the judge could not give is left out, its reason kept), and
    every other field (the judge's reading) as metadata."""
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser, ModelOutput
    from inspect_ai.scorer import Score

    question, answer = str(row.get("question", "")), str(row.get("answer", ""))
    scores = {}
    for key in SCORE_KEYS:
        if row.get(key) is not None:
            meta = {"judge": row["trait_judge"]} if key == "trait" and "trait_judge" in row else None
            scores[key] = Score(value=row[key], answer=answer, metadata=meta)  # answer: what the viewer's answer column shows
    metadata = {k: v for k, v in row.items() if k not in (*SCORE_KEYS, "question", "answer")}
    return EvalSample(
        id=sample_id,
        epoch=epoch,
        input=question,
        target="",
        messages=[ChatMessageUser(content=question), ChatMessageAssistant(content=answer, model=model)],
        output=ModelOutput.from_content(model=model, content=answer),
        scores=scores,
        metadata=metadata,
    )


def eval_log(run: Run, k: int, rows: list[dict[str, Any]], questions: dict[str, int]):
    """Cycle k's (or the base model's) answers and scores as an inspect EvalLog."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSpec, EvalStats
    from inspect_ai.model import GenerateConfig

    import traitloop

    config, manifest = run.config, run.manifest
    label = cycle_label(k)
    model = f"traitloop/{label}"
    ids = [(questions[str(r.get("question", ""))], int(r.get("sample", 0)) + 1) for r in rows]
    if len(set(ids)) < len(ids):  # (question, sample) repeats: number the answers instead
        ids = [(i + 1, 1) for i in range(len(rows))]
    samples = [eval_sample(r, sid, epoch, model) for r, (sid, epoch) in zip(rows, ids)]
    metrics = run.base if k == BASE else run.store.metrics(k)
    eval_cfg = config.get("eval") or {}
    model_cfg = config.get("model") or {}
    spec = EvalSpec(
        created=_iso(manifest.get("created")),
        task=run.name,
        task_display_name=f"{run.name} {label}",
        task_description=f"traitloop run {run.name}: {config.get('setting')} / {config.get('trait')}, {label}",
        task_args=config,
        dataset=EvalDataset(
            name=str(config.get("trait", "")), samples=len(questions), sample_ids=sorted({sid for sid, _ in ids}), shuffled=False
        ),
        model=model,
        model_args={"ref": model_cfg.get("ref"), "adapter": str(run.store.stage_path(k, "adapter")) if k != BASE else None},
        model_generate_config=GenerateConfig(temperature=_number(eval_cfg.get("temperature")), max_tokens=eval_cfg.get("max_new_tokens")),
        config=EvalConfig(epochs=max(epoch for _, epoch in ids) if ids else 1),
        packages={"traitloop": traitloop.__version__},
        metadata={
            "traitloop": {
                "run": run.name,
                "run_dir": str(run.path),
                "cycle": k,
                "judge": manifest.get("judge"),
                "coherence_metric": manifest.get("coherence"),
                "format_version": manifest.get("format_version", 0),
                "versions": manifest.get("versions"),
                "cycle_manifest": (manifest.get("cycles") or {}).get(str(k)),
                "metrics": metrics,
            }
        },
    )
    stats = EvalStats(started_at=_iso(manifest.get("created")), completed_at=_iso(manifest.get("updated")))  # the run's, not the cycle's
    return EvalLog(status="success", eval=spec, stats=stats, samples=samples, results=_results(rows, metrics or {}))


def _results(rows: list[dict[str, Any]], metrics: dict[str, Any]):
    """The log's headline numbers: traitloop's own (question-mean) values from metrics.json, with their 95% intervals."""
    from inspect_ai.log import EvalMetric, EvalResults, EvalScore

    scores = []
    for key in SCORE_KEYS:
        scored = sum(r.get(key) is not None for r in rows)
        if not scored:
            continue
        values = {"mean": metrics.get(f"{key}_mean")}
        if f"{key}_ci_low" in metrics:
            values.update(ci_low=metrics.get(f"{key}_ci_low"), ci_high=metrics.get(f"{key}_ci_high"))
        found = {name: _number(v) for name, v in values.items() if _number(v) is not None and not math.isnan(_number(v))}
        scores.append(
            EvalScore(
                name=key,
                scorer=key,
                scored_samples=scored,
                unscored_samples=len(rows) - scored,
                metrics={n: EvalMetric(name=n, value=v) for n, v in found.items()},
            )
        )
    return EvalResults(total_samples=len(rows), completed_samples=len(rows), scores=scores)
