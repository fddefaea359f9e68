"""Local sweeps: one grid file -> many runs under one sweep directory.

A grid file (YAML) names a base experiment, overrides applied to every run, and the config keys to
vary; the runs are the cartesian product of the grid's values:

    name: bliss-init              # sweep name: the sweep directory is out_dir/name
    out_dir: sweeps               # optional (default "sweeps"); `--out` overrides it
    base: ../demo.yaml            # an experiment YAML (relative to this file) or an inline mapping
    set:                          # optional: dotted overrides applied to every run
      cycles: 2
    grid:                         # dotted config keys -> values; last key varies fastest
      init: [reset, continual]
      seed: [0, 1, 2]

The sweep directory:

    out_dir/name/sweep.yaml            the grid file as given
                 configs/<run>.yaml    each run's full, validated config
                 runs/<run>/           each a normal run directory (see store.py)
                 logs/<run>.log        each run's stdout and stderr
                 status.json           per run: pending/running/done/failed, wall time, error tail

Every run config is validated before anything is written or run, so a typo in the grid fails in a
second (UserError, exit 2) instead of after the first run. Each run is a subprocess
(`python -m traitloop run CONFIG --out runs/`), so a crash or out-of-memory in one run cannot take
the sweep down: a failed run is recorded and the sweep goes on; finished runs (DONE for every cycle
and a scores.csv) are skipped, so rerunning the same command resumes the sweep.

Runs go through an `Executor` (`run(jobs) -> results`): `LocalExecutor` runs them here, one after
another or N at a time; `RayExecutor` runs each as one Ray task on a cluster (the same command, built
by the same command builder, on whichever node Ray picks; docs/SCALE.md). On a cluster the sweep
directory must be on storage every node mounts at the same path: the Ray executor checks that from
inside a task on every node before it starts, and again in each run's task.

Shared cycle 0 (`share_cycle0: true`): runs that differ only in seed copy the first seed's cycle 0
(`cycle0_from`), so seed replications vary only the self-training cycles. Those runs go in a second
wave, after the runs whose cycle 0 they copy.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from traitloop.config import ExperimentConfig, build_config, directory_name, format_validation_error, load_config, read_yaml_mapping
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text, write_json
from traitloop.progress import Reporter
from traitloop.store import RunStore

KEY_VALUE_SEP = "-"  # run names look like init-reset_seed-0 (config names allow only [A-Za-z0-9._-])
PAIR_SEP = "_"
GRID_KEYS = ["name", "out_dir", "base", "set", "grid", "share_cycle0"]  # GridFile's keys as written in a grid file
SWEEP_SETS = ("name", "out_dir")  # the sweep sets these for every run; a grid may not
ERROR_TAIL_LINES = 20


# ---- the grid file -------------------------------------------------------------------------------
class GridFile(BaseModel):
    """The grid file's schema. Unknown keys are errors, as in experiment configs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Sweep name; the sweep dir is out_dir/name.")
    out_dir: str = Field("sweeps", description="Parent directory of sweep directories.")
    base: str | dict[str, Any] = Field(description="Experiment YAML (path relative to the grid file) or inline config keys.")
    overrides: dict[str, Any] = Field(default_factory=dict, alias="set", description="Dotted overrides for every run.")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        min_length=1, description="Dotted config key -> non-empty list of values."
    )
    share_cycle0: bool = Field(
        False, description="Runs that differ only in seed share one cycle 0: the first seed trains it, the others copy it."
    )

    valid_name = field_validator("name")(directory_name)


@dataclass
class Run:
    """One expanded run: its name, the grid values that make it, and its validated config."""

    name: str
    values: dict[str, Any]
    config: ExperimentConfig


@dataclass
class Sweep:
    """A loaded, fully validated sweep: nothing has been written yet."""

    name: str
    root: Path  # out_dir/name
    grid_text: str  # the grid file as given, copied to sweep.yaml
    runs: list[Run]

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def config_path(self, run: Run) -> Path:
        return self.root / "configs" / f"{run.name}.yaml"

    def log_path(self, run: Run) -> Path:
        return self.root / "logs" / f"{run.name}.log"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"


def load_sweep(path: str | Path, out_dir: str | Path | None = None, absolute: bool = False) -> Sweep:
    """Read and validate a grid file and every run it expands to. Raises UserError; writes nothing.
    absolute: the sweep directory as an absolute path, so every run's paths (out_dir, cycle0_from)
    mean the same on every machine of a cluster (the Ray executor)."""
    path = Path(path)
    data = read_yaml_mapping(path, "grid file", "name, base and grid")
    text = path.read_text()
    try:
        grid = GridFile.model_validate(data)
    except ValidationError as err:
        raise UserError(
            format_validation_error(
                err, str(path), "grid file", "a grid file has name, out_dir, base, set, grid and share_cycle0", known=GRID_KEYS
            )
        ) from None
    root = Path(out_dir if out_dir is not None else grid.out_dir).expanduser() / grid.name
    if absolute:
        root = root.absolute()
    base = _load_base(grid.base, path)
    runs = expand(grid, base, root / "runs", source=str(path))
    if grid.share_cycle0:
        runs = share_cycle0(runs)
    _check_inputs(runs, source=str(path))
    return Sweep(name=grid.name, root=root, grid_text=text, runs=runs)


def _load_base(base: str | dict[str, Any], grid_path: Path) -> dict[str, Any]:
    """The base config as a plain dict: inline as given, or a YAML file relative to the grid file."""
    if isinstance(base, dict):
        return base
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = grid_path.parent / base_path
    if not base_path.is_file():
        raise UserError(f"{grid_path}: base config not found: {base_path} (a path is relative to the grid file)")
    return load_config(base_path).model_dump(mode="json")


def expand(grid: GridFile, base: dict[str, Any], runs_dir: Path, source: str = "grid") -> list[Run]:
    """The cartesian product of the grid, in a stable order (grid keys as written, last varies fastest).

    Each run's config = base, then `set`, then the run's grid values, then the sweep's name/out_dir;
    each is validated with build_config, so an error names the run and the key.
    """
    for key in [*grid.overrides, *grid.grid]:
        if key.split(".")[0] in SWEEP_SETS:
            raise UserError(f"{source}: '{key}' cannot be set in a sweep: the sweep names each run and puts it under runs/")
    keys = list(grid.grid)
    varying = [k for k in keys if len(grid.grid[k]) > 1] or keys
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid.grid[k] for k in keys))]
    names = unique_names([run_name({k: v for k, v in combo.items() if k in varying}) for combo in combos])

    runs = []
    for name, combo in zip(names, combos):
        data = copy.deepcopy(base)
        for key, value in [*grid.overrides.items(), *combo.items()]:
            set_dotted(data, key, value, source=f"{source}: run '{name}'")
        data["name"] = name
        data["out_dir"] = str(runs_dir)
        runs.append(Run(name=name, values=combo, config=build_config(data, source=f"{source}: run '{name}'")))
    return runs


def share_cycle0(runs: list[Run]) -> list[Run]:
    """Within each group of runs that differ only in seed, the first run trains cycle 0 and the
    others get `cycle0_from` = its run directory (they copy its cycle 0 instead of training one)."""
    leaders: dict[str, Run] = {}
    out = []
    for run in runs:
        key = json.dumps(run.config.condition_dict(), sort_keys=True)
        leader = leaders.setdefault(key, run)
        if leader is not run:
            run = Run(run.name, run.values, run.config.model_copy(update={"cycle0_from": leader.config.run_dir}))
        out.append(run)
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str = "grid") -> None:
    """data["eval"]["questions"] = value for key "eval.questions"; a mapping value is merged in."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{source}: '{key}': '{part}' is not a section of the config")
    leaf = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for sub_key, sub_value in value.items():
            set_dotted(node[leaf], sub_key, sub_value, source)
    else:
        node[leaf] = copy.deepcopy(value)


def _safe(text: str) -> str:
    """Letters, digits, '.' and '-' only; anything else becomes '-'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.") or "empty"


def run_name(values: dict[str, Any]) -> str:
    """{"init": "reset", "eval.questions": 2} -> "init-reset_eval-questions-2" (a valid run name)."""
    return PAIR_SEP.join(f"{key.replace('.', '-')}{KEY_VALUE_SEP}{_safe(str(value))}" for key, value in values.items())


def unique_names(names: list[str]) -> list[str]:
    """Two values can sanitise to the same text (a/b, a-b): later duplicates get -2, -3, ..."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}-{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _check_inputs(runs: list[Run], source: str) -> None:
    """What `check-config` checks (trait and its data, pool size, model vs setting), once per distinct value, before
    any run starts: a misspelt trait should fail now, not in every run's log. An embedded model not
    yet cached is prepared here, once, rather than by several runs at the same time."""
    from traitloop.loop import Experiment

    checked: set[str] = set()
    for run in runs:
        cfg = run.config
        try:
            key = json.dumps([cfg.setting, cfg.trait, cfg.n_seed, cfg.model.ref, cfg.cycles, cfg.n_sampled, cfg.eval.questions])
            if key not in checked:
                Experiment(cfg).check_inputs()
                checked.add(key)
        except UserError as err:
            raise UserError(f"{source}: run '{run.name}': {err}") from None


# ---- which runs are finished ---------------------------------------------------------------------
def is_finished(config: ExperimentConfig) -> bool:
    """A run is finished when every cycle 0..cycles has a valid DONE marker and scores.csv exists.

    The DONE check includes the config hash, so a run whose config changed is not skipped (its
    `traitloop run` then refuses the old directory and the failure says why).
    """
    store = RunStore(config.run_dir)
    if not store.has_scores():
        return False
    config_hash = config.science_hash()
    return all(store.is_done(k, config_hash) for k in range(config.cycles + 1))


# ---- status.json ---------------------------------------------------------------------------------
class SweepStatus:
    """status.json: one entry per run, rewritten atomically on every change (thread-safe)."""

    def __init__(self, path: Path, sweep_name: str, run_names: list[str]):
        self.path = path
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"sweep": sweep_name, "runs": {name: {"status": "pending"} for name in run_names}}

    def update(self, run: str, **fields: Any) -> None:
        with self._lock:
            self.data["runs"][run].update(fields)
            self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_json(self.path, self.data)

    def runs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.data["runs"])


def read_status(path: str | Path) -> dict[str, Any]:
    """status.json as a dict (see SweepStatus)."""
    return json.loads(Path(path).read_text())


# ---- executors -----------------------------------------------------------------------------------
@dataclass
class RunJob:
    """What an executor needs to run one run."""

    name: str
    config_path: Path
    runs_dir: Path
    log_path: Path


@dataclass
class RunResult:
    name: str
    ok: bool
    wall_s: float
    returncode: int | None
    error: str = ""  # the last line of the log, for a failed run
    error_tail: str = ""  # the last lines of the log, for a failed run
    attempts: int = 1  # tries it took (the Ray executor retries a run whose worker or node died)


class Executor(Protocol):
    """Runs jobs, calling on_start/on_finish (possibly from other threads) as each starts and ends."""

    def run(
        self,
        jobs: list[RunJob],
        on_start: Callable[[RunJob], None] | None = None,
        on_finish: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]: ...


def traitloop_command(job: RunJob) -> list[str]:
    """The command that runs one job: the same `traitloop run` a user would type."""
    return [sys.executable, "-m", "traitloop", "run", str(job.config_path), "--out", str(job.runs_dir)]


class LocalExecutor:
    """Each run is a subprocess on this machine; `workers` of them at a time (a thread per slot)."""

    def __init__(self, workers: int = 1, command: Callable[[RunJob], list[str]] | None = None):
        if workers < 1:
            raise UserError("--jobs must be at least 1")
        self.workers = workers
        self.command = command or traitloop_command

    def run(self, jobs, on_start=None, on_finish=None) -> list[RunResult]:
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            futures = [pool.submit(self._run_one, job, on_start, on_finish) for job in jobs]
            return [f.result() for f in futures]
        finally:
            # On Ctrl-C the runs in flight get the signal too and stop; runs not started never start.
            pool.shutdown(wait=True, cancel_futures=True)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("COLUMNS", "160")  # a log is not a terminal: rich would wrap paths and tables at 80
        if self.workers > 1 and "OMP_NUM_THREADS" not in env:
            # N runs of torch each using every core would fight over them; share the cores instead.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        return env

    def _run_one(self, job: RunJob, on_start, on_finish) -> RunResult:
        if on_start:
            on_start(job)
        started = time.time()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(job.log_path, "w") as log:
                proc = subprocess.run(
                    self.command(job), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._environment()
                )
            returncode = proc.returncode
        except OSError as err:  # the command could not even start
            with open(job.log_path, "a") as log:
                log.write(f"could not start run: {err}\n")
            returncode = None
        wall = time.time() - started
        if returncode == 0:
            result = RunResult(job.name, ok=True, wall_s=wall, returncode=0)
        else:
            tail = _log_tail(job.log_path)
            last = tail.splitlines()[-1] if tail else f"exit code {returncode}, empty log"
            result = RunResult(job.name, ok=False, wall_s=wall, returncode=returncode, error=last, error_tail=tail)
        if on_finish:
            on_finish(result)
        return result


def _log_tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    """The last non-blank lines of a log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# ---- the Ray executor ----------------------------------------------------------------------------
# Ray's errors that say the task's worker or node went away (killed, crashed, out of memory), not that
# the run is wrong: such a run is submitted again and its `traitloop run` resumes from the last stage.
TRANSIENT_RAY_ERRORS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError", "ObjectLostError")
KILLED = -9  # the run's own process got SIGKILL (the kernel's out-of-memory killer): retried as well
# Any other exit code is the run's own failure and is not retried: above all 2, bad input.
CHECK_FILE = ".traitloop-ray-check-"  # + a token: the driver writes it, every node must read it back
CHECK_TIMEOUT_S = 120.0
SHARED_STORAGE_HELP = (
    "every Ray node must see the sweep directory at the same absolute path: put it on shared storage (NFS, a "
    "cluster filesystem) mounted on every node, and pass --out with a path there (docs/SCALE.md)"
)


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'traitloop[ray]'") from None
    return ray


def _write_check_file(folder: Path, token: str) -> None:
    """The driver's side of the visibility check: `token` in a file in `folder` (a runs directory)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{CHECK_FILE}{token}", token)


def check_visible(jobs: list[RunJob], token: str) -> str | None:
    """On a worker: None when this machine sees what the driver wrote for `jobs` (the check file in each
    runs directory, each run's config, the logs directory), else one line saying what it cannot see."""
    import socket

    where = f"Ray node {socket.gethostname()}"
    for folder in sorted({str(job.runs_dir) for job in jobs}):
        check = Path(folder) / f"{CHECK_FILE}{token}"
        try:
            seen = check.read_text()
        except OSError:
            seen = None
        if seen != token:
            return f"the run directory {folder} is not visible from {where} (it cannot read {check.name}, which the sweep wrote there)"
    for job in jobs:
        if not job.config_path.is_file():
            return f"the run config {job.config_path} is not visible from {where}"
        if not job.log_path.parent.is_dir():
            return f"the log directory {job.log_path.parent} is not visible from {where}"
    return None


def _die_with_parent() -> None:
    """In the run's process, before exec (Linux): get SIGKILL when the Ray worker that started it dies,
    so a run whose worker was killed cannot go on writing beside its retry."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not glibc Linux: the run may outlive a killed worker
        pass


def run_on_worker(
    job: RunJob, command: Callable[[RunJob], list[str]], token: str, attempt: int, cpus: float, gpus: float = 0.0, events=None
) -> dict[str, Any]:
    """The body of one run's Ray task: check the sweep directory is visible here, run the command (built
    here, so sys.executable is this node's Python) with its output in the run's log, and return its exit
    code and the log's tail. The log is started afresh on attempt 1 and appended to on retries. The run
    sees the GPUs Ray gave the task (CUDA_VISIBLE_DEVICES) and, given none, no GPU at all."""
    import socket

    host = socket.gethostname()
    unseen = check_visible([job], token)
    if unseen:
        return {"returncode": None, "error": f"{unseen}: {SHARED_STORAGE_HELP}", "tail": "", "host": host}
    if events is not None:
        events.started.remote(job.name, attempt, host)
    env = dict(os.environ)
    env.setdefault("COLUMNS", "160")
    env["OMP_NUM_THREADS"] = str(max(1, int(cpus)))  # the CPUs Ray reserved for this run
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a run Ray gave no GPU must not take one behind its back
    with open(job.log_path, "w" if attempt == 1 else "a") as log:
        log.write(f"--- traitloop sweep: attempt {attempt} on {host} (Ray), {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        log.flush()
        try:
            proc = subprocess.run(
                command(job),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            returncode = proc.returncode
        except OSError as err:
            log.write(f"could not start run: {err}\n")
            returncode = None
    return {"returncode": returncode, "error": "", "tail": _log_tail(job.log_path), "host": host}


def _probe_node(jobs: list[RunJob], token: str) -> tuple[str, str | None]:
    import socket

    return socket.gethostname(), check_visible(jobs, token)


class _StartEvents:
    """A Ray actor the run tasks tell when they start, so the driver's status shows what is running."""

    def __init__(self):
        self.events: list[tuple[str, int, str]] = []

    def started(self, name: str, attempt: int, host: str) -> None:
        self.events.append((name, attempt, host))

    def drain(self) -> list[tuple[str, int, str]]:
        events, self.events = self.events, []
        return events


class RayExecutor:
    """Each run is one Ray task that runs the run's command (`traitloop run CONFIG --out RUNS`, the
    local executor's) on whichever node has `gpus_per_run` GPUs and `cpus_per_run` CPUs free; the task
    holds them until the run's process ends (a GPU task's worker exits after it: max_calls=1).

    A task whose worker or node died, or that Ray killed for memory (TRANSIENT_RAY_ERRORS), or whose run
    process was SIGKILLed, is submitted again, up to `max_retries` times: the same command resumes the
    run from its last finished stage. Any other failure (exit code 2, bad input, above all) is recorded
    and not retried. The sweep directory must be visible on every node: `run` checks it on every node
    that could take a run before submitting anything, and each task checks it again.

    address: None = $RAY_ADDRESS if set (as under `ray job submit`), else a new local Ray; "auto" = the
    cluster this machine belongs to; "ray://host:10001" = Ray Client. gpus_per_run None = 1 when the
    cluster has GPUs, else 0. An already initialised Ray (a test's) is used as it is."""

    def __init__(
        self,
        address: str | None = None,
        gpus_per_run: float | None = None,
        cpus_per_run: float = 1.0,
        max_retries: int = 2,
        command: Callable[[RunJob], list[str]] | None = None,
        reporter: Reporter | None = None,
        poll_s: float = 0.5,
    ):
        if max_retries < 0:
            raise UserError("--max-retries must be 0 or more")
        if cpus_per_run <= 0 or (gpus_per_run is not None and gpus_per_run < 0):
            raise UserError("--cpus-per-run must be above 0 and --gpus-per-run 0 or more")
        self.address = address
        self.gpus_per_run = gpus_per_run
        self.cpus_per_run = cpus_per_run
        self.max_retries = max_retries
        self.command = command or traitloop_command
        self.reporter = reporter or Reporter(enabled=False)
        self.poll_s = poll_s
        self._started_ray = False

    # ---- the cluster ----------------------------------------------------------------------------
    def connect(self):
        ray = _ray()
        if not ray.is_initialized():
            new_local = self.address is None and not os.environ.get("RAY_ADDRESS")
            try:
                ray.init(address=self.address, log_to_driver=False, **({"include_dashboard": False} if new_local else {}))
            except ConnectionError as err:
                raise UserError(f"--executor ray: no Ray cluster at {self.address or '$RAY_ADDRESS'}: {err}") from None
            self._started_ray = True
            resources = ray.cluster_resources()
            self.reporter.log(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
        return ray

    def close(self) -> None:
        """Disconnect from Ray if this executor connected (a local Ray it started stops)."""
        if self._started_ray:
            _ray().shutdown()
            self._started_ray = False

    def gpus(self) -> float:
        if self.gpus_per_run is not None:
            return self.gpus_per_run
        return 1.0 if _ray().cluster_resources().get("GPU", 0) >= 1 else 0.0

    def check_cluster(self, jobs: list[RunJob], token: str) -> None:
        """Every alive node that can take a run sees the sweep directory (a task on each), else UserError."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        gpus = self.gpus()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        fit = [n for n in nodes if n["Resources"].get("CPU", 0) >= self.cpus_per_run and n["Resources"].get("GPU", 0) >= gpus]
        if not fit:
            have = ", ".join(
                f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPUs, {n['Resources'].get('GPU', 0):g} GPUs" for n in nodes
            )
            raise UserError(
                f"--executor ray: no node of the cluster has {self.cpus_per_run:g} CPUs and {gpus:g} GPUs for one run "
                f"({have}); lower --cpus-per-run / --gpus-per-run"
            )
        probe = ray.remote(_probe_node)
        refs = {
            probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(jobs, token): n
            for n in fit
        }
        try:
            answers = ray.get(list(refs), timeout=CHECK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise UserError(
                f"--executor ray: the check that every node sees the sweep directory did not finish within {CHECK_TIMEOUT_S:.0f} s"
            ) from None
        for (host, unseen), node in zip(answers, refs.values()):
            if unseen:
                raise UserError(f"--executor ray: {unseen} ({node['NodeManagerAddress']}): {SHARED_STORAGE_HELP}")

    # ---- the runs -------------------------------------------------------------------------------
    def run(self, jobs, on_start=None, on_finish=None) -> list[RunResult]:
        import uuid

        if not jobs:
            return []
        ray = self.connect()
        # absolute paths: a worker's working directory is not the driver's
        jobs = [RunJob(j.name, j.config_path.absolute(), j.runs_dir.absolute(), j.log_path.absolute()) for j in jobs]
        for job in jobs:
            job.log_path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        folders = sorted({job.runs_dir for job in jobs})
        try:
            for folder in folders:
                _write_check_file(folder, token)
            self.check_cluster(jobs, token)
            return self._run_all(ray, jobs, token, on_start, on_finish)
        finally:
            for folder in folders:
                (folder / f"{CHECK_FILE}{token}").unlink(missing_ok=True)

    def _run_all(self, ray, jobs, token, on_start, on_finish) -> list[RunResult]:
        gpus = self.gpus()
        options: dict[str, Any] = {"num_cpus": self.cpus_per_run, "num_gpus": gpus, "max_retries": 0, "retry_exceptions": False}
        if gpus > 0:
            options["max_calls"] = 1  # the worker exits after the run: nothing of it stays on the GPU
        task = ray.remote(**options)(run_on_worker)
        events = ray.remote(_StartEvents).options(num_cpus=0).remote()
        started_at: dict[str, float] = {}
        results: dict[str, RunResult] = {}
        pending: dict[Any, tuple[RunJob, int]] = {}

        def submit(job: RunJob, attempt: int) -> None:
            pending[task.remote(job, self.command, token, attempt, self.cpus_per_run, gpus, events)] = (job, attempt)

        def mark_started(job: RunJob) -> None:
            if job.name not in started_at:
                started_at[job.name] = time.time()
                if on_start:
                    on_start(job)

        def finish(result: RunResult) -> None:
            results[result.name] = result
            if on_finish:
                on_finish(result)

        transient = tuple(getattr(ray.exceptions, name) for name in TRANSIENT_RAY_ERRORS if hasattr(ray.exceptions, name))
        by_name = {job.name: job for job in jobs}
        for job in jobs:
            submit(job, 1)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
                for name, attempt, host in ray.get(events.drain.remote()):
                    mark_started(by_name[name])
                    if attempt > 1:
                        self.reporter.log(f"retry   {name}: attempt {attempt} started on {host}")
                for ref in ready:
                    job, attempt = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        outcome, why = None, f"Ray: {type(err).__name__}: {_first_line(err)}"
                        retry = isinstance(err, transient)
                    else:
                        retry = outcome["returncode"] == KILLED
                        why = f"its process was killed (SIGKILL, often the out-of-memory killer) on {outcome['host']}" if retry else ""
                    if retry and attempt <= self.max_retries:
                        self.reporter.log(f"[yellow]retrying[/yellow] {job.name} (attempt {attempt + 1} of {self.max_retries + 1}): {why}")
                        _append(job.log_path, f"--- traitloop sweep: attempt {attempt} ended: {why}; retrying")
                        submit(job, attempt + 1)
                        continue
                    mark_started(job)
                    if retry:
                        why += f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''}; rerun the sweep to resume it)"
                    if outcome is None:
                        finish(self._failed(job, attempt, started_at, None, why))
                    elif outcome["returncode"] == 0:
                        finish(RunResult(job.name, ok=True, wall_s=time.time() - started_at[job.name], returncode=0, attempts=attempt))
                    else:
                        finish(self._failed(job, attempt, started_at, outcome["returncode"], outcome["error"] or why, outcome["tail"]))
        except BaseException:  # Ctrl-C or an error here: stop every run still queued or running
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(events)
        return [results[job.name] for job in jobs]

    def _failed(
        self, job: RunJob, attempts: int, started_at: dict[str, float], returncode: int | None, error: str = "", tail: str = ""
    ) -> RunResult:
        """A failed run's result; a message from here (not from the run) is also written to its log."""
        if error:
            _append(job.log_path, error)
        tail = tail or _log_tail(job.log_path)
        last = error or (tail.splitlines()[-1] if tail else f"exit code {returncode}, empty log")
        wall = time.time() - started_at.get(job.name, time.time())
        return RunResult(job.name, ok=False, wall_s=wall, returncode=returncode, error=last, error_tail=tail, attempts=attempts)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


def _append(path: Path, line: str) -> None:
    try:
        with open(path, "a") as log:
            log.write(line.rstrip() + "\n")
    except OSError:
        pass


# ---- the sweep -----------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, executor: Executor, reporter: Reporter | None = None) -> dict[str, dict[str, Any]]:
    """Write the sweep directory, skip finished runs, run the rest; returns status.json's runs."""
    reporter = reporter or Reporter()
    atomic_write_text(sweep.root / "sweep.yaml", sweep.grid_text)
    for run in sweep.runs:
        atomic_write_text(sweep.config_path(run), run.config.to_yaml())
    status = SweepStatus(sweep.status_path, sweep.name, [run.name for run in sweep.runs])

    jobs = []
    for run in sweep.runs:
        common = {"run_dir": str(run.config.run_dir), "config": str(sweep.config_path(run)), "log": str(sweep.log_path(run))}
        if is_finished(run.config):
            status.update(run.name, status="done", skipped=True, **common)
            reporter.log(f"skipped {run.name}: already finished ({run.config.run_dir / 'scores.csv'})")
        else:
            status.update(run.name, status="pending", **common)
            jobs.append(RunJob(run.name, sweep.config_path(run), sweep.runs_dir, sweep.log_path(run)))

    skipped = len(sweep.runs) - len(jobs)
    title = f"sweep {sweep.name}: {len(jobs)} to run" + (f", {skipped} already done" if skipped else "")
    with reporter:
        with reporter.step(title, total=len(jobs)) as advance:

            def on_start(job: RunJob) -> None:
                status.update(job.name, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                reporter.log(f"started {job.name} (log: {job.log_path})")

            def on_finish(result: RunResult) -> None:
                fields: dict[str, Any] = {"wall_s": round(result.wall_s, 1), "returncode": result.returncode}
                if result.attempts > 1:
                    fields["attempts"] = result.attempts
                if result.ok:
                    status.update(result.name, status="done", skipped=False, **fields)
                    reporter.log(f"done    {result.name} in {_duration(result.wall_s)}")
                else:
                    status.update(result.name, status="failed", error=result.error, error_tail=result.error_tail, **fields)
                    reporter.log(f"[red]FAILED[/red]  {result.name} after {_duration(result.wall_s)}: {result.error}")
                advance()

            # runs that copy another run's cycle 0 go in a second wave, after the runs they copy
            first = [j for j in jobs if not _follows(sweep, j)]
            second = [j for j in jobs if _follows(sweep, j)]
            for wave in (first, second) if second else (first,):
                executor.run(wave, on_start=on_start, on_finish=on_finish)
    return status.runs()


def _follows(sweep: Sweep, job: RunJob) -> bool:
    return next(r for r in sweep.runs if r.name == job.name).config.cycle0_from is not None


def summary_table(sweep: Sweep, runs: dict[str, dict[str, Any]]):
    """A rich Table: every run with its status, wall time and, for a failure, log and last error line."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"sweep {sweep.name} ({sweep.root})")
    for col in ["run", "status", "time", "log / last error line"]:
        table.add_column(col, overflow="fold")
    for name, entry in runs.items():
        state = entry["status"]
        if state == "failed":
            shown, note = "[red]failed[/red]", f"{escape(entry['log'])}\n{escape(entry.get('error', ''))}"
        elif entry.get("skipped"):
            shown, note = "done (skipped)", ""
        else:
            shown, note = state, ""
        wall = _duration(entry["wall_s"]) if "wall_s" in entry else "-"
        table.add_row(name, shown, wall, note)
    return table


def exit_code(runs: dict[str, dict[str, Any]]) -> int:
    """0 when every run is done, 1 when any failed (2 stays reserved for bad input)."""
    return 1 if any(entry["status"] != "done" for entry in runs.values()) else 0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
