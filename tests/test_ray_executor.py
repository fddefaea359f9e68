"""`traitloop sweep --executor ray` on a local Ray started in this process (`ray.init(num_cpus=2,
num_gpus=2)`: GPUs are logical resources to Ray's scheduler, so GPU placement is testable on a CPU
machine). Runs are cheap fake commands passed to the executor in place of `traitloop run`: each
records its start and end, the GPU Ray gave it and every attempt, and on success writes the DONE
markers and scores.csv a finished run has, so a rerun of the sweep can skip it.

The last two tests run the real `traitloop run` (the tiny random Llama of test_loop_settings, cycles 0 and
1): a 2-seed sweep through Ray gives the local executor's scores.csv byte for byte and the same report,
and a run whose Ray worker is SIGKILLed after cycle 0 is retried, resumes and ends with the same scores."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_loop_settings import tiny_dir  # noqa: F401  (fixture: the tiny random Llama on disk)
from test_sweep import inline_base, model_dir, write_grid  # noqa: F401  (model_dir is a fixture)
from test_tiny_model import tokenizer  # noqa: F401  (fixture)

import traitloop.sweep as sweep_module
from traitloop.cli import main
from traitloop.errors import UserError
from traitloop.progress import Reporter
from traitloop.sweep import RayExecutor, RunJob, check_visible, exit_code, load_sweep, read_status, run_on_worker, run_sweep

ray = pytest.importorskip("ray")

QUIET = Reporter(enabled=False)

# The fake run. argv: config path, runs dir, run name, stamps dir, behaviour. Every attempt appends a line
# to stamps/<name>.attempts; "kill-worker" / "kill-self" die on the first attempt after writing a stage
# marker in the run directory, and the next attempt resumes from it; "bad-input" exits 2 as `traitloop
# run` does on bad input; "always-kill-worker" dies every time.
FAKE_RUN = r"""
import json, os, pathlib, signal, sys, time
config_path, runs_dir, name, stamps, behaviour = sys.argv[1:6]
stamps = pathlib.Path(stamps)
run_dir = pathlib.Path(runs_dir) / name
run_dir.mkdir(parents=True, exist_ok=True)
stage = run_dir / "stage-1.done"
resumed = stage.is_file()
with open(stamps / (name + ".attempts"), "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "resumed": resumed}) + "\n")
print("working on", name, "resumed" if resumed else "fresh", flush=True)
if behaviour == "bad-input":
    print("error: bad input in " + name, file=sys.stderr)
    sys.exit(2)
if behaviour == "always-kill-worker" or (behaviour in ("kill-worker", "kill-self") and not resumed):
    stage.write_text("cycle 0 finished")
    os.kill(os.getppid() if behaviour != "kill-self" else os.getpid(), signal.SIGKILL)  # the Ray worker, or this run
    time.sleep(60)  # killed with its worker (PR_SET_PDEATHSIG) long before this ends
    sys.exit(5)
start = time.time()
time.sleep(float(os.environ.get("FAKE_RUN_SECONDS", "1.0")))
(stamps / (name + ".json")).write_text(json.dumps(
    {"start": start, "end": time.time(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ.get("OMP_NUM_THREADS")}))

from traitloop.config import load_config
from traitloop.store import RunStore
config = load_config(config_path)
store = RunStore(run_dir)
(run_dir / "config.yaml").write_text(config.to_yaml())
for k in range(config.cycles + 1):
    store.write_rows(k, "data", [{"k": k}])
    store.write_rows(k, "eval", [{"k": k}])
    store.stage_path(k, "adapter").mkdir(parents=True, exist_ok=True)
    (store.stage_path(k, "adapter") / "adapter_config.json").write_text("{}")
    store.commit_cycle(k, {"cycle": k}, config.science_hash())
(run_dir / "scores.csv").write_text("cycle,score\n0,1\n")
"""


def fake_command(stamps: Path, behaviours: dict[str, str]):
    """A command builder like sweep.traitloop_command. It runs on the Ray worker (pickled by value)."""
    stamps.mkdir(parents=True, exist_ok=True)

    def command(job: RunJob) -> list[str]:
        behaviour = behaviours.get(job.name, "ok")
        return [sys.executable, "-c", FAKE_RUN, str(job.config_path), str(job.runs_dir), job.name, str(stamps), behaviour]

    return command


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module: 2 CPUs and 2 logical GPUs."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    os.environ["FAKE_RUN_SECONDS"] = "1.0"
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def sweep_of(tmp_path, model_dir, seeds, name="s"):
    grid = write_grid(tmp_path / "g.yaml", {"name": name, "base": inline_base(model_dir), "grid": {"seed": seeds}})
    return grid, load_sweep(grid, out_dir=tmp_path / "out", absolute=True)


def attempts(stamps: Path, name: str) -> list[dict]:
    path = stamps / f"{name}.attempts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gpus_back(expected: float = 2.0, within_s: float = 15.0) -> float:
    """Ray's free GPUs once they are all back (resources come back a moment after a task ends)."""
    deadline = time.time() + within_s
    while True:
        free = ray.available_resources().get("GPU", 0.0)
        if free >= expected or time.time() > deadline:
            return free
        time.sleep(0.2)


def test_each_run_runs_once_on_its_own_gpu_at_most_two_at_a_time(tmp_path, model_dir):
    _, sweep = sweep_of(tmp_path, model_dir, [0, 1, 2, 3])
    stamps = tmp_path / "stamps"
    # CPUs would allow 8 runs at once (0.25 each): the 2 GPUs are what limits them to 2
    executor = RayExecutor(gpus_per_run=1, cpus_per_run=0.25, command=fake_command(stamps, {}))
    runs = run_sweep(sweep, executor, reporter=QUIET)
    assert exit_code(runs) == 0
    assert all(entry["status"] == "done" and "attempts" not in entry for entry in runs.values())
    spans = {}
    for run in sweep.runs:
        assert len(attempts(stamps, run.name)) == 1  # each run executed exactly once
        spans[run.name] = json.loads((stamps / f"{run.name}.json").read_text())
        assert (run.config.run_dir / "scores.csv").is_file()
        assert "attempt 1 on" in sweep.log_path(run).read_text()  # its output went to its log
    assert {s["gpu"] for s in spans.values()} <= {"0", "1"}  # Ray gave each run one GPU (CUDA_VISIBLE_DEVICES)
    assert {s["threads"] for s in spans.values()} == {"1"}  # OMP_NUM_THREADS = the CPUs held (at least 1)
    for name, span in spans.items():  # runs in flight at each run's start: never more than the 2 GPUs
        overlapping = [o for o in spans.values() if o["start"] <= span["start"] < o["end"]]
        assert len(overlapping) <= 2
        assert len({o["gpu"] for o in overlapping}) == len(overlapping)  # and never two on one GPU
    assert gpus_back() == 2.0  # every GPU is free again once the runs ended
    assert not list((sweep.runs_dir).glob(".traitloop-ray-check-*"))  # the visibility check cleans up

    # rerunning the sweep resumes it: every run is finished, so none runs again
    again = run_sweep(load_sweep(tmp_path / "g.yaml", out_dir=tmp_path / "out", absolute=True), executor, reporter=QUIET)
    assert all(entry["skipped"] for entry in again.values())
    assert all(len(attempts(stamps, run.name)) == 1 for run in sweep.runs)


def test_two_gpus_per_run_runs_one_at_a_time(tmp_path, model_dir):
    _, sweep = sweep_of(tmp_path, model_dir, [0, 1])
    stamps = tmp_path / "stamps"
    runs = run_sweep(sweep, RayExecutor(gpus_per_run=2, cpus_per_run=0.25, command=fake_command(stamps, {})), reporter=QUIET)
    assert exit_code(runs) == 0
    first, second = sorted((json.loads((stamps / f"seed-{s}.json").read_text()) for s in (0, 1)), key=lambda s: s["start"])
    assert first["end"] <= second["start"]
    assert {first["gpu"], second["gpu"]} == {"0,1"}


def test_a_run_whose_worker_or_process_was_killed_is_retried_and_resumes(tmp_path, model_dir):
    _, sweep = sweep_of(tmp_path, model_dir, [0, 1, 2])
    stamps = tmp_path / "stamps"
    behaviours = {"seed-0": "kill-worker", "seed-1": "kill-self"}
    runs = run_sweep(
        sweep, RayExecutor(gpus_per_run=1, cpus_per_run=0.25, max_retries=2, command=fake_command(stamps, behaviours)), reporter=QUIET
    )
    assert exit_code(runs) == 0, runs
    for name in ("seed-0", "seed-1"):
        first, second = attempts(stamps, name)
        assert (first["resumed"], second["resumed"]) == (False, True)  # the retry found cycle 0 finished and resumed
        assert runs[name]["status"] == "done" and runs[name]["attempts"] == 2
        assert not pid_alive(first["pid"])  # the killed attempt's process did not outlive its worker
        log = Path(runs[name]["log"]).read_text()
        assert "attempt 1 on" in log and "retrying" in log and "attempt 2 on" in log
    assert "WorkerCrashedError" in Path(runs["seed-0"]["log"]).read_text()
    assert "SIGKILL" in Path(runs["seed-1"]["log"]).read_text()
    assert len(attempts(stamps, "seed-2")) == 1 and "attempts" not in runs["seed-2"]
    assert gpus_back() == 2.0


def test_bad_input_is_not_retried_and_retries_run_out(tmp_path, model_dir):
    _, sweep = sweep_of(tmp_path, model_dir, [0, 1, 2])
    stamps = tmp_path / "stamps"
    behaviours = {"seed-0": "bad-input", "seed-1": "always-kill-worker"}
    runs = run_sweep(
        sweep, RayExecutor(gpus_per_run=0, cpus_per_run=0.5, max_retries=1, command=fake_command(stamps, behaviours)), reporter=QUIET
    )
    assert exit_code(runs) == 1
    bad = runs["seed-0"]
    assert bad["status"] == "failed" and bad["returncode"] == 2 and "attempts" not in bad
    assert len(attempts(stamps, "seed-0")) == 1  # exit code 2 is bad input: never retried
    assert bad["error"] == "error: bad input in seed-0" and "working on seed-0" in bad["error_tail"]
    dead = runs["seed-1"]
    assert dead["status"] == "failed" and dead["attempts"] == 2 and len(attempts(stamps, "seed-1")) == 2  # 1 retry
    assert "WorkerCrashedError" in dead["error"] and "gave up after 2 attempts" in dead["error"]
    assert runs["seed-2"]["status"] == "done"
    assert json.loads((stamps / "seed-2.json").read_text())["gpu"] == ""  # given no GPU, a run sees none
    assert read_status(sweep.status_path)["runs"] == runs


def test_a_sweep_directory_the_workers_cannot_see_fails_clearly(tmp_path, model_dir, monkeypatch):
    _, sweep = sweep_of(tmp_path, model_dir, [0])
    stamps = tmp_path / "stamps"
    # as if the driver wrote the check file on a disk of its own: the nodes look for it and do not find it
    monkeypatch.setattr(sweep_module, "_write_check_file", lambda folder, token: None)
    with pytest.raises(UserError) as info:
        run_sweep(sweep, RayExecutor(gpus_per_run=0, command=fake_command(stamps, {})), reporter=QUIET)
    message = str(info.value)
    assert f"the run directory {sweep.runs_dir} is not visible from Ray node" in message
    assert "shared storage" in message and "docs/SCALE.md" in message
    assert not (stamps / "seed-0.attempts").exists()  # nothing ran

    # each run's task checks again (a node that joined after the start): it fails the run, clearly, without running it
    run = sweep.runs[0]
    job = RunJob(run.name, sweep.config_path(run), sweep.runs_dir, sweep.log_path(run))
    outcome = run_on_worker(job, fake_command(stamps, {}), token="not-written", attempt=1, cpus=1)
    assert outcome["returncode"] is None and "is not visible from Ray node" in outcome["error"] and "shared storage" in outcome["error"]
    assert not (stamps / "seed-0.attempts").exists()
    assert check_visible([job], "not-written").startswith(f"the run directory {sweep.runs_dir} is not visible")


def test_cli_executor_ray_runs_the_sweep_and_checks_its_options(tmp_path, model_dir, monkeypatch, capsys):
    stamps = tmp_path / "stamps"
    monkeypatch.setattr(sweep_module, "traitloop_command", fake_command(stamps, {"seed-1": "bad-input"}))
    grid = write_grid(tmp_path / "g.yaml", {"name": "c", "base": inline_base(model_dir), "grid": {"seed": [0, 1]}})
    monkeypatch.chdir(tmp_path)  # a relative --out: the ray executor makes every path absolute
    argv = ["traitloop", "sweep", str(grid), "--out", "out", "--executor", "ray", "--gpus-per-run", "1", "--max-retries", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    output = capsys.readouterr()
    assert exit_info.value.code == 1, output.out + output.err
    assert "seed-1.log" in output.out and "error: bad input in seed-1" in output.out  # the summary table
    root = tmp_path / "out" / "c"
    status = read_status(root / "status.json")["runs"]
    assert status["seed-0"]["status"] == "done" and status["seed-1"]["status"] == "failed"
    assert Path(status["seed-0"]["run_dir"]).is_absolute()
    assert yaml.safe_load((root / "configs" / "seed-0.yaml").read_text())["out_dir"] == str(root / "runs")

    for extra, expected in [
        (["--executor", "ray", "--jobs", "2"], "--jobs: only with --executor local"),
        (["--max-retries", "1"], "--max-retries: only with --executor ray"),
    ]:
        monkeypatch.setattr(sys, "argv", ["traitloop", "sweep", str(grid), "--out", "out2", *extra])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_a_run_that_no_node_can_hold_is_refused_before_anything_runs(tmp_path, model_dir):
    _, sweep = sweep_of(tmp_path, model_dir, [0])
    with pytest.raises(UserError, match="no node of the cluster has 1 CPUs and 3 GPUs"):
        run_sweep(sweep, RayExecutor(gpus_per_run=3, command=fake_command(tmp_path / "stamps", {})), reporter=QUIET)


DRIVER = r"""
import sys
from pathlib import Path
tests, stamps, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, tests)
import ray.cloudpickle
import test_ray_executor
import traitloop.sweep
ray.cloudpickle.register_pickle_by_value(test_ray_executor)
traitloop.sweep.traitloop_command = test_ray_executor.fake_command(Path(stamps), {})
from traitloop.cli import main
sys.argv = ["traitloop", "sweep", *argv]
main()
"""


def test_a_sweep_on_a_cluster_started_with_ray_start_through_address(tmp_path, model_dir):
    """`ray start --head` in its own process group, then `traitloop sweep --executor ray --address` from
    another process (the fake run command patched in there), as a user drives a cluster."""
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="tl-ray-")  # short: Ray's socket paths must fit in 107 bytes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=1",
            "--include-dashboard=false",
            f"--temp-dir={ray_tmp}",
        ],
        stdout=open(tmp_path / "head.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        grid = write_grid(tmp_path / "g.yaml", {"name": "h", "base": inline_base(model_dir), "grid": {"seed": [0]}})
        stamps = tmp_path / "stamps"
        argv = [str(grid), "--out", str(tmp_path / "out"), "--executor", "ray", "--address", f"127.0.0.1:{port}"]
        env = {**os.environ, "FAKE_RUN_SECONDS": "0.2"}
        env.pop("RAY_ADDRESS", None)
        deadline = time.time() + 90
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():  # the head takes a few seconds
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, str(Path(__file__).parent), str(stamps), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-3000:] + (tmp_path / "head.log").read_text()[-2000:]
        assert "Ray: 1 node(s), 2 CPUs, 1 GPUs" in driver.stderr
        status = read_status(tmp_path / "out" / "h" / "status.json")["runs"]
        assert status["seed-0"]["status"] == "done" and len(attempts(stamps, "seed-0")) == 1
        span = json.loads((stamps / "seed-0.json").read_text())
        assert span["gpu"] == "0"  # the default: 1 GPU per run when the cluster has GPUs
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head's processes are all in its session: gone at once
        head.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ---- real `traitloop run`s through Ray (integration: about 3.5 minutes on a busy 2-core machine) ------
# The tiny random Llama of test_loop_settings saved to disk, with test_sweep's inline base made as small
# as a real run gets: cycles 0 and 1, four seed rows and prompts, two eval questions, one thread per run.
# Most of a run's half minute is the probe judge's set-up and validity check.
REAL_GRID_SEEDS = [0, 1]


def real_base(tiny_dir: Path) -> dict:
    return inline_base(
        tiny_dir,
        sampling={"max_new_tokens": 16, "batch_size": 4},
        train={"batch_size": 2, "max_length": 96, "learning_rate": 1e-3},
        eval={"questions": 2, "samples_per_question": 1, "max_new_tokens": 12, "batch_size": 4, "include_base": False},
    )


def real_sweep(grid: Path, out: Path, only: list[str] | None = None):
    sweep = load_sweep(grid, out_dir=out, absolute=True)
    if only is not None:
        sweep.runs = [run for run in sweep.runs if run.name in only]
    return sweep


@pytest.fixture(scope="module")
def real_runs(tiny_dir, tmp_path_factory):  # noqa: F811
    """The same 2-seed grid of real `traitloop run`s, once through Ray (the command the CLI's --executor ray
    builds: sweep.traitloop_command) and once through the local executor. Made once for the module."""
    root = tmp_path_factory.mktemp("real")
    grid = write_grid(root / "g.yaml", {"name": "real", "base": real_base(tiny_dir), "grid": {"seed": REAL_GRID_SEEDS}})
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the local runs get the one thread a Ray run with 1 CPU gets
    try:
        on_ray = real_sweep(grid, root / "ray")
        ray_runs = run_sweep(on_ray, RayExecutor(gpus_per_run=1, cpus_per_run=1, max_retries=0), reporter=QUIET)
        local = real_sweep(grid, root / "local")
        local_runs = run_sweep(local, sweep_module.LocalExecutor(workers=2), reporter=QUIET)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return {"grid": grid, "ray": (on_ray, ray_runs), "local": (local, local_runs)}


def normalised_report(sweep_root: Path, monkeypatch, capsys) -> str:
    """`traitloop report SWEEP`: its report.md with the sweep's own directory written as SWEEP."""
    monkeypatch.setattr(sys, "argv", ["traitloop", "report", str(sweep_root)])
    try:
        main()
    except SystemExit as exit_info:
        assert exit_info.code in (0, None), capsys.readouterr()
    output = capsys.readouterr()
    assert f"markdown: {sweep_root / 'report.md'}" in output.out
    return (sweep_root / "report.md").read_text().replace(str(sweep_root), "SWEEP")


@pytest.mark.integration  # with its fixture, four real runs: minutes on 2 cores
def test_a_real_sweep_through_ray_gives_the_local_executors_scores_and_report(real_runs, monkeypatch, capsys):
    (on_ray, ray_runs), (local, local_runs) = real_runs["ray"], real_runs["local"]
    assert exit_code(ray_runs) == 0 and exit_code(local_runs) == 0, (ray_runs, local_runs)
    assert sorted(ray_runs) == sorted(local_runs) == ["seed-0", "seed-1"]
    for name in ray_runs:
        assert ray_runs[name]["status"] == "done" and "attempts" not in ray_runs[name]
        assert "attempt 1 on" in Path(ray_runs[name]["log"]).read_text()  # it ran as a Ray task
        ours, theirs = on_ray.runs_dir / name / "scores.csv", local.runs_dir / name / "scores.csv"
        assert ours.read_bytes() == theirs.read_bytes(), name
        assert all((on_ray.runs_dir / name / f"cycle-{k:03d}" / "DONE").is_file() for k in (0, 1))
    assert gpus_back() == 2.0
    assert normalised_report(on_ray.root, monkeypatch, capsys) == normalised_report(local.root, monkeypatch, capsys)


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.integration
def test_a_real_run_whose_ray_worker_is_killed_after_cycle_0_resumes_to_the_same_scores(real_runs, tmp_path):
    """SIGKILL the Ray worker of a real run once cycle 0 is done: Ray's WorkerCrashedError, a retry, the retry
    skips cycle 0, and scores.csv is byte for byte the uninterrupted run's (the same seed and config)."""
    import threading

    sweep = real_sweep(real_runs["grid"], tmp_path / "killed", only=["seed-0"])
    run_dir = sweep.runs[0].config.run_dir
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(runs=run_sweep(sweep, RayExecutor(gpus_per_run=1, cpus_per_run=1, max_retries=2), reporter=QUIET)),
        daemon=True,
    )
    thread.start()
    deadline = time.time() + 240
    while not (run_dir / "cycle-000" / "DONE").is_file():
        assert thread.is_alive() and time.time() < deadline, f"cycle 0 never finished: {outcome}"
        time.sleep(0.05)
    run_pid = json.loads((run_dir / "LOCK").read_text())["pid"]  # the `traitloop run` process holding the run
    worker = parent_pid(run_pid)  # the Ray worker that started it
    assert not (run_dir / "cycle-001" / "DONE").is_file()  # killed mid-run, not after it
    os.kill(worker, 9)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the sweep did not finish after the retry"
    runs = outcome["runs"]
    assert runs["seed-0"]["status"] == "done" and runs["seed-0"]["attempts"] == 2, runs
    assert not pid_alive(run_pid)  # the killed run died with its worker
    log = Path(runs["seed-0"]["log"]).read_text()
    assert "WorkerCrashedError" in log and "retrying" in log and "attempt 2 on" in log
    retry = log.split("attempt 2 on", 1)[1]
    assert "cycle 0: already done, skipped" in retry and f"taking over the lock of process {run_pid}" in retry
    uninterrupted = real_runs["ray"][0].runs_dir / "seed-0" / "scores.csv"
    assert (run_dir / "scores.csv").read_bytes() == uninterrupted.read_bytes()
    assert gpus_back() == 2.0
