"""The run directory: the contract that other tools read, and the reason a run can be resumed. This
module is its one reader and writer (format version FORMAT_VERSION, in manifest.json):

    runs/<name>/config.yaml  manifest.json  scores.csv  figures/trait_coherence.png  LOCK
      base/ answers.jsonl  eval.jsonl  metrics.json      (the untrained model, for reference)
      cycle-000/ data.jsonl  adapter/  answers.jsonl  eval.jsonl  metrics.json  DONE
      cycle-001/ ...
      cycle-NNN/judges/<judge-id>.jsonl  scores-<judge-id>.csv  agreement.json   (traitloop judge)
      aside/<time>-<why>/...   files moved out of the way, never deleted (see "Bad state" below)

Rows: data.jsonl holds the setting's training rows (traitloop/settings/); answers.jsonl one AnswerRow
per eval answer; eval.jsonl one EvalRow; metrics.json one Metrics; scores.csv SCORES_COLUMNS per cycle.
A run directory without format_version was written before versioning (format 0: the same layout) and
is read as it is; one from a newer traitloop is refused with a message saying so.

Every file is written atomically (temp file, then rename), and so is the adapter directory. A cycle
counts as finished only when its DONE marker exists and holds the content hash of the cycle's files
and of the previous cycle's DONE (lineage): redoing cycle k-1 invalidates cycle k. DONE also records
that parent hash and each stage file's own hash ("parent", "files"), so a DONE that no longer matches
says which stage to redo from. An unfinished cycle resumes from its last finished stage, because each
stage's output is one atomic file.

One process at a time (LOCK): `open` takes an exclusive flock on LOCK (the kernel drops it when the
process dies, even by SIGKILL) and writes its pid, host and start time into it for the message a second
process gets: one line naming that pid, exit 2, nothing written. The engine holds it for its run
(`locked`), `traitloop judge` and `traitloop agreement` while they write into it (rejudge.py), and each empties LOCK when it lets go;
a LOCK still naming a dead process (killed or crashed) is taken over with a note. Stores of the same
directory within one process share the lock. Without flock (Windows, some network filesystems) a live
pid in LOCK refuses.

Bad state, decided per case: every damaged or untrustworthy output is moved aside to
aside/<time>-<why>/ (never deleted) with one warning line naming it, and the stages that depend on it
are redone; what cannot be redone safely is one UserError (exit 2) that names the file and what to do.
The engine asks `resume_cycle(k)` before each cycle; `open` checks the run as a whole.
  - A stage file of an unfinished cycle that is damaged: a JSONL file with a line that is not a JSON
    object or a cut-off last line (no final newline), data.jsonl with fewer rows than the manifest
    recorded or with no manifest record at all (its counts, which metrics.json reports, are lost),
    eval.jsonl with another number of rows than answers.jsonl, an adapter without adapter_config.json
    or whose adapter_model.safetensors is cut short or missing: that stage and every later one of the
    cycle are moved aside and redone. A later stage's output whose earlier stage is missing is moved
    aside too (it was made from a file that is gone).
  - A finished cycle whose DONE no longer matches (a file changed, was damaged or deleted): redone from
    the first stage whose file differs from the hash DONE recorded (a changed adapter: retrained, then
    answers and eval; a changed eval.jsonl: judged again; a changed metrics.json: recomputed). A DONE
    that is itself damaged, written before per-file hashes with no file missing, or whose parent cycle
    was redone with a different result: the whole cycle is moved aside and redone. Later finished cycles
    are then kept only if their lineage still matches (a redo that reproduces the old files exactly
    keeps them); later unfinished cycles are moved aside (nothing certifies what they were made from).
  - A temporary file left by a write that was killed (.NAME.xxxxxxxx): removed; it was never a result.
  - base/: a damaged answers.jsonl, eval.jsonl or metrics.json is moved aside with the files after it,
    and the base evaluation is redone; a damaged rejected_answers.jsonl (DPO's cache) is moved aside.
  - manifest.json damaged: refused (UserError). It holds the input-data hashes that make a resumed run
    safe and the per-cycle counts metrics.json reports, so it cannot be rebuilt; the message says to
    restore it or move it aside. A run whose manifest.json is missing resumes with a warning: finished
    cycles are kept (their DONE markers are checked), unfinished ones are moved aside and redone, and
    the input-data check and earlier cycles' timings are lost.
  - A full disk: the write fails with one message naming the file and "no space left"; the partial file
    is removed, and the same command resumes once space is freed.
  - On purpose: `traitloop run CONFIG --redo-from K` (`redo_from`) moves cycles K.. and scores.csv aside
    and the run redoes them.
"""

from __future__ import annotations

import atexit
import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import yaml

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text, disk_full_error, is_disk_full, jsonl_problem, read_jsonl, write_json, write_jsonl

try:
    import fcntl
except ImportError:  # not on Windows: the lock falls back to the pid in LOCK
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1  # bump when the layout or a row's meaning changes; readers refuse newer formats
BASE = -1  # pseudo-cycle: the untrained base model's evaluation, stored in base/
ROW_STAGES = ("data", "answers", "eval")  # stages whose output is a JSONL file named after the stage
# a cycle's outputs, in stage order (heldout.json only when the trait has held-out texts)
STAGE_FILES = ("data.jsonl", "adapter", "heldout.json", "answers.jsonl", "eval.jsonl", "metrics.json")
STAGE_OF = {
    "data.jsonl": "data",
    "adapter": "adapter",
    "heldout.json": "heldout",
    "answers.jsonl": "answers",
    "eval.jsonl": "eval",
    "metrics.json": "metrics",
}
OPTIONAL_FILES = ("heldout.json",)
BASE_FILES = ("answers.jsonl", "eval.jsonl", "metrics.json")  # base/'s outputs, in stage order
LOCK_FILE = "LOCK"
ASIDE_DIR = "aside"
# a temporary file of atomic_write_text (tempfile.mkstemp(prefix=".NAME.")) for one of the run's files
_TEMP_FILE = re.compile(
    r"^\.(config\.yaml|manifest\.json|scores(-.+)?\.csv|agreement\.json|data\.jsonl|answers\.jsonl|eval\.jsonl"
    r"|rejected_answers\.jsonl|metrics\.json|DONE)\.[a-z0-9_]{8}$"
)
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
    "heldout_high_ppl",  # the cycle model's perplexity on held-out high-trait texts (validation.jsonl)
    "heldout_low_ppl",  # ... and on held-out low-trait texts
    "n_truncated",  # eval answers cut off at eval.max_new_tokens (kept and flagged in answers/eval.jsonl)
    "coherence_score_mean",  # coherence 0-100 (judges/coherence_score.py); coherence_mean above is typicality
    "coherence_score_ci_low",
    "coherence_score_ci_high",
]
CI_UNIT = "question"
REWRITE = "rerun the run's `traitloop run` command to write it again (finished cycles are kept)"
INT_COLUMNS = {"cycle", "n_answers", "n_trait_scored", "n_train_examples", "n_dropped_coherence", "n_truncated"}
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
    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None):
        """log: where warnings and notes go (one line each); stderr unless given."""
        self.root = Path(root)
        self.log = log or _to_stderr
        self._verified: dict[int, tuple[str, tuple]] = {}  # cycle -> stamp of files whose DONE hash matched
        self._records_lost = False  # manifest.json was missing at open: unfinished cycles' records are gone

    # ---- the run as a whole -------------------------------------------------------------------
    def open(self, config: ExperimentConfig, inputs: dict[str, str] | None = None, force: bool = False) -> None:
        """Create the run dir, or check that an existing one was made with the same config and inputs.

        `inputs` maps input data files (trait, prompt pool) to content hashes. A run dir made from a
        different config or different input data is refused; with force it is moved aside (never
        deleted) to `<name>.replaced-<time>` and a fresh run starts. Takes the run directory's lock first
        (refused while another process holds it) and checks the run as a whole (module docstring, "Bad
        state"); a refusal releases a lock it took.
        """
        held = str(self.root.resolve()) in _HELD
        try:
            self._open(config, inputs or {}, force)
        except BaseException:
            if not held:
                self.release()
            raise

    def _open(self, config: ExperimentConfig, inputs: dict[str, str], force: bool) -> None:
        cfg_path = self.root / "config.yaml"
        if self.root.is_dir():
            self.lock()  # before reading anything: another process may be writing this run
        manifest_missing = cfg_path.is_file() and not (self.root / "manifest.json").is_file()
        if cfg_path.is_file():
            self._check_manifest()
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
                _release(str(self.root.resolve()))  # the lock went aside with the old run
                manifest_missing = False
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock()
        self._tidy(manifest_missing)
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

    def _check_manifest(self) -> None:
        """A damaged manifest.json stops a resume with one message: it cannot be rebuilt (module docstring)."""
        path = self.root / "manifest.json"
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            problem = None if isinstance(data, dict) else f"holds a JSON {type(data).__name__}, not an object"
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problem = f"not valid JSON ({getattr(err, 'msg', err)})"
        if problem:
            raise UserError(
                f"{path}: {problem}: the run's record is damaged, and it cannot be rebuilt (it holds the input-data hashes "
                f"that make resuming safe and the counts metrics report). Restore it from a backup; or move it aside "
                f"(mv {path} {path}.damaged) and rerun: finished cycles are kept, an unfinished cycle is redone, and "
                "earlier cycles' timings and the input-data check are lost"
            )

    # ---- one process at a time --------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run directory's LOCK for this process, or refuse (UserError naming the holder's pid).
        Held until the process exits or `release` is called; a stale LOCK (its process is dead) is taken
        over with a note."""
        key = str(self.root.resolve())
        if key in _HELD:
            return
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            got = _flock(fd)
            holder = _read_holder(fd)
            pid = holder.get("pid")
            if got is False or (got is None and _held_elsewhere(holder)):
                raise UserError(_in_use(self.root, holder, path))
            if isinstance(pid, int) and pid != os.getpid():
                since = f", started {holder['started']}" if holder.get("started") else ""
                self.log(
                    f"note: {self.root}: taking over the lock of process {pid}{since}, which is no longer running (it was "
                    "killed or crashed); its finished stages are kept and the rest is checked before resuming"
                )
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)[:500],
            }
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            except OSError:
                pass  # a full disk: the lock holds all the same, only the message would lack the pid
        except BaseException:
            os.close(fd)
            raise
        _HELD[key] = fd
        _register_release()

    def release(self) -> None:
        """Give up this process's lock on the run directory (it also goes when the process exits)."""
        _release(str(self.root.resolve()))

    @contextmanager
    def locked(self) -> Iterator[RunStore]:
        """Hold the lock for a with-block (the engine's run, after `open`), then release it, so a process
        that goes on (a notebook, a test) does not keep the run directory from others."""
        self.lock()
        try:
            yield self
        finally:
            self.release()

    # ---- bad state: found, moved aside, redone (module docstring) ---------------------------------
    def _tidy(self, manifest_missing: bool) -> None:
        """What `open` checks of the run as a whole, holding the lock: temporary files of killed writes,
        the base evaluation's files, and a missing manifest."""
        for d in [self.root, self.cycle_dir(BASE), *self._cycle_dirs()]:
            self._remove_temp_files(d)
        if manifest_missing and self._cycle_dirs():
            self._records_lost = True
            self.log(
                f"warning: {self.root / 'manifest.json'} is missing: finished cycles are kept (their DONE markers are checked), "
                "unfinished ones are moved aside and redone; earlier cycles' timings and the input-data check are lost"
            )
        base = self.cycle_dir(BASE)
        first, why = None, ""
        for i, name in enumerate(BASE_FILES):
            path = base / name
            if path.is_file():
                problem = jsonl_problem(path) if name.endswith(".jsonl") else _json_problem(path)
                if problem:
                    first, why = i, f"{path}: {problem}"
                    break
        if first is None and all((base / n).is_file() for n in BASE_FILES[:2]):
            n_answers, n_eval = _count_rows(base / "answers.jsonl"), _count_rows(base / "eval.jsonl")
            if n_answers != n_eval:
                first, why = 1, f"{base / 'eval.jsonl'}: {n_eval} rows for {n_answers} answers"
        if first is not None:
            moved = [base / n for n in BASE_FILES[first:] if (base / n).exists()]
            dest = self._move_aside(moved, "damaged")
            self.log(f"warning: {why}; the base model's evaluation is redone from there (moved aside, not deleted: {dest})")
        cache = base / "rejected_answers.jsonl"
        if cache.is_file() and (problem := jsonl_problem(cache)):
            dest = self._move_aside([cache], "damaged")
            self.log(f"warning: {cache}: {problem}; the base's cached answers are sampled again (moved aside, not deleted: {dest})")

    def resume_cycle(self, cycle: int, config_hash: str) -> bool:
        """The engine's question before cycle k: True when the cycle is finished and valid (skip it).
        Otherwise the cycle is made safe to resume (module docstring, "Bad state"): what cannot be trusted
        is moved aside with a warning line, so the engine redoes exactly the stages whose output is missing."""
        d = self.cycle_dir(cycle)
        self._remove_temp_files(d)
        if self.is_done(cycle, config_hash):
            return True
        if not d.is_dir():
            return False
        if (d / "DONE").is_file():
            first, why = self._first_changed(cycle, config_hash)
            timings = self.manifest().get("cycles", {}).get(str(cycle), {}).get("timings_s", {})
            if first and "data" not in timings and "adopted" not in timings:  # metrics would lose the data stage's counts
                first, why = 0, f"{why}, and its record in manifest.json is lost"
        elif self._records_lost:
            first, why = 0, "its record in manifest.json is lost"
        else:
            first, why = self._first_damaged(cycle)
        if first is None:
            return False
        if first == 0 and ((d / "DONE").is_file() or self._records_lost):  # nothing in it can be trusted
            record = self._pop_record(cycle)
            dest = self._move_aside([d], "damaged")
            if record:
                write_json(dest / d.name / "manifest-record.json", record)
            self.log(f"warning: {d}: {why}; the whole cycle is redone (moved aside, not deleted: {dest / d.name})")
        else:
            moved = [d / n for n in [*STAGE_FILES[first:], "DONE"] if (d / n).exists()]
            dest = self._move_aside(moved, "damaged")
            self.log(
                f"warning: {d}: {why}; the cycle is redone from its {STAGE_OF[STAGE_FILES[first]]} stage "
                f"({', '.join(p.name for p in moved)} moved aside, not deleted: {dest / d.name})"
            )
        self._verified.pop(cycle, None)
        for later in self._cycle_dirs():
            k = int(later.name.removeprefix("cycle-"))
            if k > cycle and not (later / "DONE").is_file():
                dest = self._move_aside([later], "stale")
                self.log(
                    f"warning: {self.root / later.name}: unfinished, and made from cycle {cycle}'s old files; it is redone "
                    f"(moved aside, not deleted: {dest / later.name})"
                )
        return False

    def _first_changed(self, cycle: int, config_hash: str) -> tuple[int, str]:
        """A finished cycle whose DONE does not match: the index in STAGE_FILES to redo from, and why."""
        d = self.cycle_dir(cycle)
        done = _read_done(d / "DONE")
        if done is None:
            return 0, "its DONE marker is damaged (not a JSON object with a hash)"
        if cycle > 0 and not self.is_done(cycle - 1, config_hash):
            return 0, f"cycle {cycle - 1} is not finished, and this cycle was made from it"
        if "parent" in done and done["parent"] != self._done_hash(cycle - 1):
            return 0, f"cycle {cycle - 1} was redone with a different result since this cycle was made from it"
        files = done.get("files")
        if not isinstance(files, dict):  # a DONE from before per-file hashes: only a missing file says where
            for i, name in enumerate(STAGE_FILES):
                if name not in ("answers.jsonl", *OPTIONAL_FILES) and not (d / name).exists():
                    return i, f"{name} is missing (deleted on purpose?)"
            return 0, "its files no longer match its DONE marker"
        for i, name in enumerate(STAGE_FILES):
            if name not in files:
                continue
            path = d / name
            if not path.exists():
                return i, f"{name} is missing (deleted on purpose?)"
            if hash_files([path]) != files[name]:
                return i, f"{name} no longer matches the hash its DONE marker recorded (changed or damaged since the cycle finished)"
        return 0, "its DONE marker no longer matches (the config's hash or the lineage changed)"

    def _first_damaged(self, cycle: int) -> tuple[int | None, str]:
        """An unfinished cycle: the index in STAGE_FILES of the first stage output that cannot be trusted
        (None: all can), and why."""
        d = self.cycle_dir(cycle)
        record = self.manifest().get("cycles", {}).get(str(cycle), {})
        timings = record.get("timings_s", {})
        missing = None
        for i, name in enumerate(STAGE_FILES[:-1]):  # metrics.json of an unfinished cycle is always recomputed
            path = d / name
            if not path.exists():
                if name not in OPTIONAL_FILES:
                    missing = missing if missing is not None else name
                continue
            if missing is not None:
                return i, f"{name} was made from a {missing} that is gone"
            if name == "adapter":
                problem = _adapter_problem(path)
            else:
                problem = jsonl_problem(path) if name.endswith(".jsonl") else _json_problem(path)
            if problem:
                return i, f"{name}: {problem}"
            if name == "data.jsonl":
                if "data" not in timings and "adopted" not in timings:
                    return i, "data.jsonl has no record in manifest.json (its writer was killed before recording its counts)"
                expected, found = record.get("n_train_examples"), _count_rows(path)
                if isinstance(expected, int) and expected != found:
                    return i, f"data.jsonl holds {found} rows, manifest.json recorded {expected}"
            if name == "eval.jsonl" and (d / "answers.jsonl").is_file():
                n_answers, n_eval = _count_rows(d / "answers.jsonl"), _count_rows(path)
                if n_answers != n_eval:
                    return i, f"eval.jsonl holds {n_eval} rows for {n_answers} answers"
        return None, ""

    def redo_from(self, cycle: int, config: ExperimentConfig) -> Path | None:
        """`traitloop run CONFIG --redo-from K`: move cycles K.. (and scores.csv) aside, never deleted, so the
        run redoes them; the folder they went to, or None when there was nothing to move."""
        if not self.is_run():
            raise UserError(f"--redo-from {cycle}: {self.root} holds no run yet (no config.yaml); run it without --redo-from first")
        if cycle > config.cycles:
            raise UserError(f"--redo-from {cycle}: the run has cycles 0 to {config.cycles}; give one of those")
        self.lock()
        self._check_manifest()
        self.check_format()
        if self._difference(config, {}):
            raise UserError(
                f"--redo-from {cycle}: {self.root} holds a run made with a different config; give the run's own config "
                f"({self.root / 'config.yaml'}) to redo its cycles, or use --force without --redo-from to start anew"
            )
        cycles = [d for d in self._cycle_dirs() if int(d.name.removeprefix("cycle-")) >= cycle]
        moved = cycles + [p for p in [self.root / "scores.csv"] if p.is_file()]
        if not moved:
            self.log(f"note: --redo-from {cycle}: {self.root} has no cycle {cycle} or later yet; nothing to move aside")
            return None
        records = {d.name: self._pop_record(int(d.name.removeprefix("cycle-"))) for d in cycles}
        dest = self._move_aside(moved, "redo")
        for name, record in records.items():
            if record:
                write_json(dest / name / "manifest-record.json", record)
        self._verified.clear()
        self.log(f"note: --redo-from {cycle}: moved {', '.join(p.name for p in moved)} aside to {dest}; they are redone now")
        return dest

    def _cycle_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob("cycle-[0-9][0-9][0-9]") if p.is_dir())

    def _remove_temp_files(self, folder: Path) -> None:
        """Temporary files of writes that were killed before their rename: never a result, so removed."""
        if folder.is_dir():
            for p in folder.iterdir():
                if _TEMP_FILE.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)

    def _move_aside(self, paths: list[Path], why: str) -> Path:
        """Move files or folders of the run to aside/<time>-<why>/, keeping their place in the layout."""
        dest = self.root / ASIDE_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{why}"
        for path in paths:
            target = dest / path.relative_to(self.root)
            n = 1
            while target.exists():
                n += 1
                target = target.with_name(f"{path.name}-{n}")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        return dest

    def _pop_record(self, cycle: int) -> dict[str, Any] | None:
        """Remove cycle k's record from manifest.json (it describes files that are moved aside) and return it."""
        manifest = self.manifest()
        record = manifest.get("cycles", {}).pop(str(cycle), None)
        if record is not None:
            self.write_manifest(manifest)
        return record

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
            raise UserError(
                f"{path}: expected a mapping of config keys at the top level, got a {type(data).__name__}; restore the run's config.yaml"
            )
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

    def write_base_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.cycle_dir(BASE) / "metrics.json", metrics)

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
        if stage == "heldout":
            return self.cycle_dir(cycle) / "heldout.json"
        if stage in ROW_STAGES:
            return self.cycle_dir(cycle) / f"{stage}.jsonl"
        raise ValueError(f"unknown stage {stage}")

    def has(self, cycle: int, stage: str) -> bool:
        path = self.stage_path(cycle, stage)
        return (path / "adapter_config.json").is_file() if stage == "adapter" else path.is_file()

    def write_heldout(self, cycle: int, values: dict[str, float]) -> None:
        write_json(self.stage_path(cycle, "heldout"), values)

    def heldout(self, cycle: int) -> dict[str, float]:
        """The cycle model's held-out perplexities ({} when the run measured none)."""
        return read_json_file(self.stage_path(cycle, "heldout")) or {}

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
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            _sort_target_modules(tmp / "adapter_config.json")
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written adapter is never left behind
            if is_disk_full(err):
                raise disk_full_error(target) from None
            raise
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target

    def _cycle_files(self, cycle: int) -> list[Path]:
        d = self.cycle_dir(cycle)
        return [d / "data.jsonl", d / "adapter", d / "eval.jsonl", d / "metrics.json"]

    def _done_hash(self, cycle: int) -> str:
        """The hash in cycle k's DONE ("" for none, a damaged one, or k < 0)."""
        done = _read_done(self.cycle_dir(cycle) / "DONE") if cycle >= 0 else None
        return done["hash"] if done else ""

    def _cycle_hash(self, cycle: int, config_hash: str) -> str:
        parent_hash = self._done_hash(cycle - 1) if cycle > 0 else ""
        files = self._cycle_files(cycle)
        return hashlib.sha256(f"{config_hash}|{parent_hash}|{hash_files(files)}".encode()).hexdigest()

    def commit_cycle(self, cycle: int, metrics: dict[str, Any], config_hash: str) -> None:
        d = self.cycle_dir(cycle)
        write_json(d / "metrics.json", metrics)
        done = {
            "hash": self._cycle_hash(cycle, config_hash),
            "parent": self._done_hash(cycle - 1) if cycle > 0 else "",
            # each stage file's own hash: a DONE that stops matching says which stage to redo from
            "files": {name: hash_files([d / name]) for name in STAGE_FILES if (d / name).exists()},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(d / "DONE", done)

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
        done = _read_done(marker)
        ok = done is not None and done["hash"] == self._cycle_hash(cycle, config_hash)
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
        for stage in ("data", "adapter", "heldout", "answers", "eval"):
            if stage != "heldout" or source.has(0, stage):  # a run without held-out texts has none
                _copy_whole(source.stage_path(0, stage), self.stage_path(0, stage))
        self.record_stage(0, "adopted", 0.0, adopted_from=str(source.root))

    def publish_cycle0(self, config: ExperimentConfig) -> Path | None:
        """Copy this run's finished cycle 0, and its base model's evaluation, into the cycle-0 cache
        (config.cycle0_config's directory under out_dir/cycle0-cache/, where `cached_cycle0` looks and
        `traitloop calibrate` trains), for later runs with the same cycle-0 config and seed
        (config.publish_cycle0). The copy is built beside the cache directory and renamed into place,
        so a reader finds it whole or not at all; when the cache already holds one (another run got
        there first), nothing is written. Returns the cache directory it wrote, or None."""
        c0 = config.cycle0_config()
        target = c0.run_dir
        if target.exists() or target.resolve() == self.root.resolve() or not self.is_done(0, config.science_hash()):
            return None
        if self.manifest().get("cycles", {}).get("0", {}).get("adopted_from"):  # another seed's, or already a copy
            return None
        building = target.with_name(f".{target.name}.publish-{os.getpid()}")
        _remove(building)
        cache = RunStore(building)
        try:
            cache.open(c0, inputs=self.manifest().get("inputs", {}))
            cache.adopt_cycle0(self.root, c0)
            cache.adopt_base(self.root)  # nothing when this run evaluated no base model
            cache.commit_cycle(0, self.metrics(0), c0.science_hash())
        finally:
            cache.release()
        try:
            os.rename(building, target)  # refused when another run published first: theirs is kept
        except OSError:
            _remove(building)
            return None
        return target

    def adopt_base(self, source_dir: str | Path) -> bool:
        """Copy a finished base-model evaluation (base/: answers, eval, metrics, held-out perplexities)
        from the cycle-0 cache entry of this run's cycle-0 config and seed (`cached_cycle0`), which
        evaluated the same base model with the same eval, judge and seed. False when it holds none."""
        source = RunStore(source_dir).cycle_dir(BASE)
        if not all((source / name).is_file() for name in BASE_FILES):
            return False
        for name in ("heldout.json", *BASE_FILES):  # metrics.json last: the mark of a finished evaluation
            if (source / name).is_file():
                _copy_whole(source / name, self.cycle_dir(BASE) / name)
        return True

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


def _sort_target_modules(config_file: Path) -> None:
    """PEFT writes target_modules from a set, in an order that changes with each process's string hashing,
    so identical adapters would get different bytes and DONE hashes: sort it (the order means nothing)."""
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def _read_done(path: Path) -> dict[str, Any] | None:
    """A DONE marker's content, or None when it is absent or damaged (not a JSON object with a hash)."""
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and isinstance(done.get("hash"), str) else None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"not valid JSON ({getattr(err, 'msg', err)})"
    return None


def _count_rows(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


def _adapter_problem(folder: Path) -> str | None:
    """What is wrong with a saved adapter directory (None: nothing found). Checks the files' structure, not
    the weights: adapter_config.json is JSON, and adapter_model.safetensors is as long as its header says."""
    if not folder.is_dir():
        return "not a directory"
    config = folder / "adapter_config.json"
    if not config.is_file():
        return "adapter_config.json is missing"
    if _json_problem(config):
        return "adapter_config.json is not valid JSON"
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return None if (folder / "adapter_model.bin").is_file() else "adapter_model.safetensors is missing"
    size = weights.stat().st_size
    try:
        with open(weights, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or 8 + n > size:
                return f"adapter_model.safetensors is cut off ({size} bytes, inside its header)"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "adapter_model.safetensors has a damaged header"
    if 8 + n + end != size:
        return f"adapter_model.safetensors is cut off ({size} bytes; its header describes {8 + n + end})"
    return None


# ---- the lock: one process per run directory -------------------------------------------------------
_HELD: dict[str, int] = {}  # run directory (resolved) -> fd of its LOCK, held by this process
_RELEASE_REGISTERED = False


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this system or filesystem has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # e.g. ENOLCK on some network filesystems


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _held_elsewhere(holder: dict[str, Any]) -> bool:
    """Without flock: the pid in LOCK is another live process (on another host: assumed alive)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() and holder.get("host") == socket.gethostname():
        return False
    return holder.get("host") != socket.gethostname() or _pid_alive(pid)


def _in_use(root: Path, holder: dict[str, Any], path: Path) -> str:
    pid = holder.get("pid", "unknown")
    where = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
    since = f", running since {holder['started']}" if holder.get("started") else ""
    return (
        f"{root} is in use by another traitloop process (pid {pid}{where}{since}): wait for it to finish, or stop it "
        f"(kill {pid}) and rerun this command to resume; two processes writing one run directory would spoil it "
        f"(lock: {path})"
    )


def _release(key: str) -> None:
    fd = _HELD.pop(key, None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # an empty LOCK: released cleanly (a pid left in it means its process died)
    except OSError:
        pass
    os.close(fd)  # closing drops the flock


def release_locks() -> None:
    """Release every run-directory lock this process holds (also done at exit)."""
    for key in list(_HELD):
        _release(key)


def _register_release() -> None:
    global _RELEASE_REGISTERED
    if not _RELEASE_REGISTERED:
        atexit.register(release_locks)
        _RELEASE_REGISTERED = True


def _copy_whole(src: Path, dst: Path) -> None:
    """Copy a file or directory so that dst appears whole or not at all (built beside it, then renamed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.adopt")
    _remove(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    _remove(dst)
    os.replace(tmp, dst)


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


def git_commit(source: Path | None = None) -> str:
    """traitloop's own commit (short hash) when it runs from a git checkout of traitloop, else "unknown" (an
    installed package inside some other repository, say a project's .venv, must not report that project's).
    source: this module's file (a test passes a copy)."""
    import subprocess

    here = (source or Path(__file__)).resolve()
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "--short", "HEAD"],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / "src" / "traitloop" / here.name != here:
        return "unknown"
    return lines[1]


def _versions() -> dict[str, str]:
    """Python, traitloop's commit (the one that last opened the run: a resumed run may have started at
    another) and the packages that change results."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "traitloop_commit": git_commit()}
    for pkg in ["traitloop", "torch", "transformers", "trl", "peft", "sentence-transformers", "scikit-learn"]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
