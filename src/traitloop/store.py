"""The run directory: the contract that other tools read, and the reason a run can be resumed. This
module is its one reader and writer (format version FORMAT_VERSION, in manifest.json):

    runs/<name>/config.yaml  manifest.json  scores.csv  figures/trait_coherence.png
      base/ answers.jsonl  eval.jsonl  metrics.json      (the untrained model, for reference)
      cycle-000/ data.jsonl  adapter/  answers.jsonl  eval.jsonl  metrics.json  DONE
      cycle-001/ ...
      cycle-NNN/judges/<judge-id>.jsonl  scores-<judge-id>.csv  agreement.json   (traitloop judge)

Rows: data.jsonl holds the setting's training rows (traitloop/settings/); answers.jsonl one AnswerRow
per eval answer; eval.jsonl one EvalRow; metrics.json one Metrics; scores.csv SCORES_COLUMNS per cycle.
A run directory without format_version was written before versioning (format 0: the same layout) and
is read as it is; one from a newer traitloop is refused with a message saying so.

Every file is written atomically (temp file, then rename), and so is the adapter directory. A cycle
counts as finished only when its DONE marker exists and holds the content hash of the cycle's files
and of the previous cycle's DONE (lineage): redoing cycle k-1 invalidates cycle k. An unfinished
cycle resumes from its last finished stage, because each stage's output is one atomic file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, TypedDict

import yaml

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text, read_jsonl, write_json, write_jsonl

FORMAT_VERSION = 1  # bump when the layout or a row's meaning changes; readers refuse newer formats
BASE = -1  # pseudo-cycle: the untrained base model's evaluation, stored in base/
ROW_STAGES = ("data", "answers", "eval")  # stages whose output is a JSONL file named after the stage
SCORES_COLUMNS = [
    "cycle",
    "trait_mean",
    "trait_ci_low",
    "trait_ci_high",
    "coherence_mean",
    "coherence_ci_low",
    "coherence_ci_high",
    "coherence_judge_mean",
    "coherence_judge_ci_low",
    "coherence_judge_ci_high",
    "repetition_mean",
    "distinct2_mean",
    "n_answers",
    "n_trait_scored",
    "n_train_examples",
    "n_dropped_coherence",
    "ci_unit",  # what the intervals resample: "question" (answers to one question move together)
    "distinct2_across",  # diversity across the cycle's answers (pooled distinct word bigrams)
    "self_similarity",  # mean pairwise bigram Jaccard of answers to the same question
]
CI_UNIT = "question"
REWRITE = "rerun the run's `traitloop run` command to write it again (finished cycles are kept)"
INT_COLUMNS = {"cycle", "n_answers", "n_trait_scored", "n_train_examples", "n_dropped_coherence"}
TEXT_COLUMNS = {"ci_unit"}


class AnswerRow(TypedDict):
    """answers.jsonl: one eval answer (SDF: question is the document prefix, answer its continuation)."""

    question: str
    sample: int
    answer: str


class EvalRow(AnswerRow, total=False):
    """eval.jsonl: an answer with its scores; trait is None when the judge could not score it (trait_missing says why)."""

    trait: float | None
    trait_judge: str
    trait_missing: str
    coherence: float | None  # mean log-likelihood per token under the frozen base (nats)
    coherence_judge: float | None  # an LLM judge's 0-100 coherence rating (judge.coherence: true)
    coherence_judge_missing: str
    repetition: float
    distinct2: float


class Metrics(TypedDict, total=False):
    """metrics.json: a cycle's summary (traitloop.evaluation.summarise); scores.csv holds its SCORES_COLUMNS."""

    cycle: int
    trait_mean: float
    trait_ci_low: float
    trait_ci_high: float
    coherence_mean: float
    ci_unit: str
    n_answers: int
    n_trait_scored: int
    n_train_examples: int
    n_dropped_coherence: int
    trait_judge: str
    judge_usage: dict[str, float]


def hash_files(paths: list[Path]) -> str:
    """Content hash of files and directories (recursively), in the given order."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._verified: dict[int, tuple[str, tuple]] = {}  # cycle -> stamp of files whose DONE hash matched

    # ---- the run as a whole -------------------------------------------------------------------
    def open(self, config: ExperimentConfig, inputs: dict[str, str] | None = None, force: bool = False) -> None:
        """Create the run dir, or check that an existing one was made with the same config and inputs.

        `inputs` maps input data files (trait, prompt pool) to content hashes. A run dir made from a
        different config or different input data is refused; with force it is moved aside (never
        deleted) to `<name>.replaced-<time>` and a fresh run starts.
        """
        inputs = inputs or {}
        cfg_path = self.root / "config.yaml"
        if cfg_path.is_file():
            self.check_format()
            why = self._difference(config, inputs)
            if why:
                if not force:
                    raise UserError(
                        f"{self.root} holds a run made with a different {why}. Rerun with the same config "
                        "and data to resume it, choose another --out/name, or pass --force to move the old "
                        "run aside and start again."
                    )
                stamp = time.strftime("%Y%m%d-%H%M%S")
                aside = self.root.with_name(f"{self.root.name}.replaced-{stamp}")
                n = 1
                while aside.exists():
                    n += 1
                    aside = self.root.with_name(f"{self.root.name}.replaced-{stamp}-{n}")
                os.replace(self.root, aside)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, config.to_yaml())
        manifest = self.manifest()
        manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        manifest["format_version"] = FORMAT_VERSION
        manifest["config_hash"] = config.science_hash()
        manifest["seed"] = config.seed
        manifest["inputs"] = inputs
        manifest["versions"] = _versions()
        manifest.setdefault("cycles", {})
        self.write_manifest(manifest)

    def _difference(self, config: ExperimentConfig, inputs: dict[str, str]) -> str:
        """What differs between the run on disk and this one: "" when nothing does."""
        try:
            old = ExperimentConfig.model_validate(yaml.safe_load((self.root / "config.yaml").read_text()))
        except Exception:  # an unreadable old config is treated as different
            return "config"
        if old.science_hash() != config.science_hash():
            return "config"
        old_inputs = self.manifest().get("inputs", {})
        changed = [name for name in inputs if name in old_inputs and old_inputs[name] != inputs[name]]
        return f"input data ({', '.join(changed)} changed)" if changed else ""

    def manifest(self) -> dict[str, Any]:
        """manifest.json ({} when absent); a damaged one is a UserError naming it."""
        return read_json_file(self.root / "manifest.json") or {}

    def check_format(self) -> None:
        """Refuse a run directory written by a newer traitloop (a higher format_version)."""
        version = self.manifest().get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(
                f"{self.root} was written in run-directory format {version!r}, newer than this traitloop reads "
                f"({FORMAT_VERSION}); upgrade traitloop (pip install -U traitloop) to read or resume it"
            )

    # ---- reading a run, for reports and tools ----------------------------------------------------
    def is_run(self) -> bool:
        return (self.root / "config.yaml").is_file()

    def config_data(self) -> dict[str, Any]:
        """config.yaml as written (a mapping), for runs whose config this version may not validate."""
        path = self.root / "config.yaml"
        if not path.is_file():
            raise UserError(f"{self.root} is not a run directory (no config.yaml); give a directory made by `traitloop run`")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            from traitloop.config import yaml_error_text

            raise UserError(f"{path}: {yaml_error_text(err)}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of config keys at the top level, got a {type(data).__name__}; restore the run's config.yaml")
        return data

    def config(self) -> ExperimentConfig:
        """The run's config, validated; a UserError when this version cannot read it."""
        from traitloop.config import build_config

        data = self.config_data()
        self.check_format()
        return build_config(data, source=str(self.root / "config.yaml"))

    # ---- other judges' scores of the same answers (traitloop judge / agreement) --------------------
    def judge_scores_path(self, cycle: int, judge_id: str) -> Path:
        return self.cycle_dir(cycle) / "judges" / f"{judge_id}.jsonl"

    def judge_ids(self) -> list[str]:
        """Every judge that has rescored some cycle of this run."""
        return sorted({p.stem for p in self.root.glob("*/judges/*.jsonl")})

    def judge_scores_csv(self, judge_id: str) -> Path:
        return self.root / f"scores-{judge_id}.csv"

    def figure_path(self, judge_id: str | None = None) -> Path:
        """figures/trait_coherence.png, or the one drawn from another judge's scores."""
        return self.root / "figures" / (f"trait_coherence-{judge_id}.png" if judge_id else "trait_coherence.png")

    def agreement(self) -> Any:
        return read_json_file(self.root / "agreement.json")

    def write_agreement(self, result: dict[str, Any]) -> Path:
        write_json(self.root / "agreement.json", result)
        return self.root / "agreement.json"

    def eval_rows(self, cycle: int) -> list[dict[str, Any]] | None:
        """A cycle's eval.jsonl rows, or None when the cycle has none yet."""
        return self.read_rows(cycle, "eval") if self.has(cycle, "eval") else None

    def has_scores(self) -> bool:
        return (self.root / "scores.csv").is_file()

    def scores(self) -> list[dict[str, Any]]:
        """scores.csv as numbers, sorted by cycle."""
        return read_scores(self.root / "scores.csv")

    def base_metrics(self) -> dict[str, Any] | None:
        """base/metrics.json (the untrained model), or None when the run did not evaluate it."""
        return read_json_file(self.cycle_dir(BASE) / "metrics.json")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.root / "manifest.json", manifest)

    def record_stage(self, cycle: int, stage: str, seconds: float, seed: int | None = None, **extra: Any) -> None:
        manifest = self.manifest()
        entry = manifest.setdefault("cycles", {}).setdefault(str(cycle), {"timings_s": {}, "seeds": {}})
        entry["timings_s"][stage] = round(seconds, 3)
        if seed is not None:
            entry["seeds"][stage] = seed
        entry.update(extra)
        self.write_manifest(manifest)

    # ---- one cycle ------------------------------------------------------------------------------
    def cycle_dir(self, cycle: int) -> Path:
        return self.root / "base" if cycle == BASE else self.root / f"cycle-{cycle:03d}"

    def stage_path(self, cycle: int, stage: str) -> Path:
        if stage == "adapter":
            return self.cycle_dir(cycle) / "adapter"
        if stage in ROW_STAGES:
            return self.cycle_dir(cycle) / f"{stage}.jsonl"
        raise ValueError(f"unknown stage {stage}")

    def has(self, cycle: int, stage: str) -> bool:
        path = self.stage_path(cycle, stage)
        return (path / "adapter_config.json").is_file() if stage == "adapter" else path.is_file()

    def write_rows(self, cycle: int, stage: str, rows: list[dict[str, Any]]) -> None:
        write_jsonl(self.stage_path(cycle, stage), rows)

    def read_rows(self, cycle: int, stage: str) -> list[dict[str, Any]]:
        return read_jsonl(self.stage_path(cycle, stage))

    def save_adapter(self, cycle: int, model) -> Path:
        """model.save_pretrained into a temp dir, then rename it into place."""
        target = self.stage_path(cycle, "adapter")
        tmp = target.with_name(".adapter.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target

    def _cycle_files(self, cycle: int) -> list[Path]:
        d = self.cycle_dir(cycle)
        return [d / "data.jsonl", d / "adapter", d / "eval.jsonl", d / "metrics.json"]

    def _cycle_hash(self, cycle: int, config_hash: str) -> str:
        parent = self.cycle_dir(cycle - 1) / "DONE"
        parent_hash = json.loads(parent.read_text())["hash"] if cycle > 0 and parent.is_file() else ""
        files = self._cycle_files(cycle)
        return hashlib.sha256(f"{config_hash}|{parent_hash}|{hash_files(files)}".encode()).hexdigest()

    def commit_cycle(self, cycle: int, metrics: dict[str, Any], config_hash: str) -> None:
        write_json(self.cycle_dir(cycle) / "metrics.json", metrics)
        done = {"hash": self._cycle_hash(cycle, config_hash), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(self.cycle_dir(cycle) / "DONE", done)

    def is_done(self, cycle: int, config_hash: str) -> bool:
        marker = self.cycle_dir(cycle) / "DONE"
        if not marker.is_file():
            return False
        if cycle > 0 and not self.is_done(cycle - 1, config_hash):
            return False
        if not all(p.exists() for p in self._cycle_files(cycle)):
            return False  # a stage output was deleted on purpose: redo that stage
        # Hashing a cycle reads its adapter (~20 MB); checking cycle k re-checks 0..k-1, so remember
        # what was verified, keyed by the files' sizes and modification times.
        parent = [self.cycle_dir(cycle - 1) / "DONE"] if cycle > 0 else []  # its hash is part of ours
        stamp = (config_hash, _file_stamps([marker, *parent, *self._cycle_files(cycle)]))
        if self._verified.get(cycle) == stamp:
            return True
        ok = json.loads(marker.read_text()).get("hash") == self._cycle_hash(cycle, config_hash)
        if ok:
            self._verified[cycle] = stamp
        return ok

    # ---- cycle 0 from another run ----------------------------------------------------------------
    def adopt_cycle0(self, source_dir: str | Path, config: ExperimentConfig) -> None:
        """Copy a finished cycle 0 from a replication of this run (same cycle-0 config but the seed)."""
        source = RunStore(source_dir)
        try:
            other = ExperimentConfig.model_validate(yaml.safe_load((source.root / "config.yaml").read_text()))
        except (OSError, ValueError) as err:
            raise UserError(f"cycle0_from: {source_dir} is not a readable run directory ({err})") from None
        mine, theirs = config.cycle0_dict(), other.cycle0_dict()
        mine.pop("seed")
        theirs.pop("seed")
        if mine != theirs:
            raise UserError(f"cycle0_from: {source_dir} trained cycle 0 with a different config (only the seed may differ)")
        if not source.is_done(0, other.science_hash()):
            raise UserError(f"cycle0_from: {source_dir} has not finished cycle 0 yet; run it first")
        for stage in ("data", "adapter", "answers", "eval"):
            src, dst = source.stage_path(0, stage), self.stage_path(0, stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.adopt")
            _remove(tmp)
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copy2(src, tmp)
            _remove(dst)
            os.replace(tmp, dst)  # each stage appears whole, or not at all
        self.record_stage(0, "adopted", 0.0, adopted_from=str(source.root))

    def cached_cycle0(self, config: ExperimentConfig) -> Path | None:
        """A finished cycle 0 with exactly this run's cycle-0 config under out_dir/cycle0-cache (trained by
        `traitloop calibrate`, or by an earlier run), or None."""
        c0 = config.cycle0_config()
        if c0.run_dir.resolve() == self.root.resolve():
            return None
        return c0.run_dir if RunStore(c0.run_dir).is_done(0, c0.science_hash()) else None

    def metrics(self, cycle: int) -> dict[str, Any]:
        return json.loads((self.cycle_dir(cycle) / "metrics.json").read_text())

    # ---- run-level outputs ----------------------------------------------------------------------
    def write_scores(self, rows: list[dict[str, Any]]) -> Path:
        return write_csv(self.root / "scores.csv", rows, SCORES_COLUMNS)


def _number(text: str | None, column: str, path: Path) -> float | int | str:
    """One scores.csv cell as int (counts, cycle), float (scores; blank -> nan) or text."""
    if column in TEXT_COLUMNS:
        return text or ""
    if text is None or text.strip() == "":
        return math.nan
    try:
        return int(text) if column in INT_COLUMNS else float(text)
    except ValueError:
        raise UserError(f"{path}: column {column!r} holds {text!r}, not a number; the file is damaged: {REWRITE}") from None


def read_scores(path: Path) -> list[dict[str, Any]]:
    """A scores.csv as a list of dicts with numbers, sorted by cycle."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"cycle", "trait_mean", "coherence_mean"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}, so it is not a traitloop scores.csv: {REWRITE}")
        rows = [{k: _number(v, k, path) for k, v in row.items() if k is not None} for row in reader]
    return sorted(rows, key=lambda r: r["cycle"])


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or None when it is absent; a broken file is a UserError."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); the file is damaged: restore it, "
            "or delete it and the run loads without it"
        ) from None


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """A per-cycle table as CSV (floats to 4 decimals, extra keys ignored), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _file_stamps(paths: list[Path]) -> tuple:
    """(name, size, mtime_ns) of every file under `paths`: changes whenever any of them is rewritten."""
    stamps = []
    for path in paths:
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                st = f.stat()
                stamps.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ["traitloop", "torch", "transformers", "trl", "peft", "sentence-transformers", "scikit-learn"]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
