"""The run directory: the contract that other tools read, and the reason a run can be resumed.

    runs/<name>/config.yaml  manifest.json  scores.csv  figures/trait_coherence.png
      base/ answers.jsonl  eval.jsonl  metrics.json      (the untrained model, for reference)
      cycle-000/ data.jsonl  adapter/  answers.jsonl  eval.jsonl  metrics.json  DONE
      cycle-001/ ...

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
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text, read_jsonl, write_json, write_jsonl

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
]
CI_UNIT = "question"


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
        path = self.root / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else {}

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

    def metrics(self, cycle: int) -> dict[str, Any]:
        return json.loads((self.cycle_dir(cycle) / "metrics.json").read_text())

    # ---- run-level outputs ----------------------------------------------------------------------
    def write_scores(self, rows: list[dict[str, Any]]) -> Path:
        return write_csv(self.root / "scores.csv", rows, SCORES_COLUMNS)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """A per-cycle table as CSV (floats to 4 decimals, extra keys ignored), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
    return path


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
