"""A run survives being killed anywhere (issue #18): SIGKILL at each stage of each setting, then the same
command again, gives a run byte-identical to one that was never interrupted (one torch thread).

The engine runs in child processes of tests/helpers/crash_driver.py (a zygote that imports torch once and
forks one child per run), with the tiny random Llama and the stand-in judge of test_loop_settings. The
driver kills its child deterministically from inside, at a named point of cycle 1 (cycle 0 is finished by
then): data sampling, mid-epoch after the first optimizer step, halfway through the adapter save, after the
eval answers, inside the judge, and halfway through the atomic writes of data.jsonl, eval.jsonl,
metrics.json and DONE. A sweep killed mid-run is the last test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.crash_driver import Zygote, difference, outputs
from test_loop_settings import config, tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.store import LOCK_FILE, RunStore

SFT_POINTS = ["data", "train", "save", "answers", "judge", "data_write", "eval_write", "metrics", "done"]
CASES = [("sft", p) for p in SFT_POINTS] + [(s, p) for s in ("sdf", "dpo") for p in ("data", "train", "answers")]


@pytest.fixture(scope="module")
def driver():
    zygote = Zygote()
    yield zygote
    zygote.close()


def write_config(model_dir: Path, root: Path, setting: str):
    """test_loop_settings' tiny config with cycles=1, as a YAML file for the driver."""
    cfg = config(model_dir, root, setting=setting, cycles=1)
    path = root / "config.yaml"
    path.write_text(cfg.to_yaml())
    return cfg, path


def run(driver: Zygote, config_path: Path, log: Path, **point) -> tuple[dict, str]:
    result = driver.run({"config": str(config_path), "log": str(log), "timeout": 240, **point})
    return result, log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def reference(driver, tiny_dir, tmp_path_factory):  # noqa: F811
    """The uninterrupted run of each setting, made once."""
    made: dict[str, dict[str, bytes]] = {}

    def get(setting: str) -> dict[str, bytes]:
        if setting not in made:
            root = tmp_path_factory.mktemp(f"reference-{setting}")
            cfg, path = write_config(tiny_dir, root, setting)
            result, log = run(driver, path, root / "run.log")
            assert result["exitcode"] == 0, log[-3000:]
            made[setting] = outputs(cfg.run_dir)
            assert {"cycle-000/data.jsonl", "cycle-001/eval.jsonl", "cycle-001/adapter/adapter_model.safetensors"} <= set(made[setting])
        return made[setting]

    return get


def leftovers(run_dir: Path) -> list[str]:
    """Files a killed write could leave: temporary files and the adapter's temp dir."""
    return [str(p.relative_to(run_dir)) for p in run_dir.rglob(".*")]


@pytest.mark.parametrize("setting, point", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_sigkill_then_the_same_command_gives_the_uninterrupted_run_byte_for_byte(driver, reference, tiny_dir, tmp_path, setting, point):  # noqa: F811
    expected = reference(setting)
    cfg, path = write_config(tiny_dir, tmp_path, setting)
    killed, log = run(driver, path, tmp_path / "killed.log", at=point, cycle=1)
    assert killed["signal"] == signal.SIGKILL, f"the run was not killed at {point!r} (exit {killed['exitcode']}):\n{log[-3000:]}"
    run_dir = cfg.run_dir
    assert (run_dir / "cycle-000" / "DONE").is_file() and not (run_dir / "cycle-001" / "DONE").is_file()
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == killed["pid"]  # the dead process's lock is left

    resumed, log = run(driver, path, tmp_path / "resumed.log")
    assert resumed["exitcode"] == 0, log[-3000:]
    assert outputs(run_dir) == expected, difference(outputs(run_dir), expected)
    assert "cycle 0: already done, skipped" in log  # the finished cycle was kept, not redone
    assert f"taking over the lock of process {killed['pid']}" in log
    assert leftovers(run_dir) == []  # temporary files of the killed write are gone
    assert not (run_dir / "aside").exists()  # an atomic write never leaves damage to move aside
    assert (run_dir / LOCK_FILE).read_text() == ""  # released cleanly at the end


# ---- a sweep killed mid-run ----------------------------------------------------------------------
FAKE_RUN = """
import os, sys, time
from pathlib import Path
from traitloop.config import load_config
from traitloop.store import RunStore

config_path, runs_dir = sys.argv[1], sys.argv[-1]
cfg = load_config(config_path, [f"out_dir={runs_dir}"])
store = RunStore(cfg.run_dir)
store.open(cfg)
hang = os.environ.get("FAKE_RUN_HANG", "")
for k in range(cfg.cycles + 1):
    if store.resume_cycle(k, cfg.science_hash()):
        print(f"cycle {k}: already done, skipped", flush=True)
        continue
    if hang == f"{cfg.name}:{k}":
        Path(os.environ["FAKE_RUN_HANG_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)
    store.write_rows(k, "data", [{"k": k}])
    store.record_stage(k, "data", 0.0, n_train_examples=1)
    (store.stage_path(k, "adapter")).mkdir(parents=True, exist_ok=True)
    (store.stage_path(k, "adapter") / "adapter_config.json").write_text("{}")
    store.write_rows(k, "answers", [{"question": "q", "sample": 0, "answer": "a"}])
    store.write_rows(k, "eval", [{"question": "q", "sample": 0, "answer": "a", "trait": 1.0}])
    store.commit_cycle(k, {"cycle": k}, cfg.science_hash())
    print(f"cycle {k}: done", flush=True)
store.write_scores([{"cycle": k} for k in range(cfg.cycles + 1)])
"""

SWEEP = """
import sys
import traitloop.sweep
from traitloop.cli import main

fake_run = sys.argv[1]
traitloop.sweep.traitloop_command = lambda job: [sys.executable, "-c", fake_run, str(job.config_path), str(job.runs_dir)]
sys.argv = ["traitloop", "sweep", *sys.argv[2:]]
main()
"""


def test_a_killed_sweep_reruns_skipping_finished_runs_and_resuming_the_interrupted_one(tmp_path):
    """`traitloop sweep` (its runs are cheap stand-ins that use the real RunStore: lock, DONE, resume)
    killed with its process group while the second of three runs is in cycle 1; the same command again."""
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    base = {"trait": "bliss", "n_seed": 4, "n_sampled": 4, "cycles": 1, "model": {"ref": str(model)}}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "s", "base": base, "grid": {"seed": [0, 1, 2]}}))
    out = tmp_path / "sweeps"
    command = [sys.executable, "-c", SWEEP, FAKE_RUN, str(grid), "--out", str(out)]
    hang_file = tmp_path / "hanging"
    env = {**os.environ, "FAKE_RUN_HANG": "seed-1:1", "FAKE_RUN_HANG_FILE": str(hang_file), "COLUMNS": "200"}

    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while not hang_file.exists():
        assert sweep.poll() is None and time.time() < deadline, sweep.communicate()[0].decode()[-3000:]
        time.sleep(0.1)
    run_pid = int(hang_file.read_text())
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its run, as a scheduler or an OOM kill of the job would
    sweep.wait()
    runs = out / "s" / "runs"
    interrupted = runs / "seed-1"
    assert (runs / "seed-0" / "scores.csv").is_file()
    assert (interrupted / "cycle-000" / "DONE").is_file() and not (interrupted / "cycle-001").exists()
    assert not (runs / "seed-2").exists()
    done_before = {p: p.read_bytes() for p in runs.rglob("DONE")}
    assert json.loads((out / "s" / "status.json").read_text())["runs"]["seed-1"]["status"] == "running"  # as the kill left it

    env.pop("FAKE_RUN_HANG")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    status = json.loads((out / "s" / "status.json").read_text())["runs"]
    assert status["seed-0"]["status"] == "done" and status["seed-0"]["skipped"] is True
    assert status["seed-1"]["status"] == "done" and status["seed-1"]["skipped"] is False
    assert status["seed-2"]["status"] == "done" and status["seed-2"]["skipped"] is False
    assert "skipped seed-0" in again.stderr
    log = (out / "s" / "logs" / "seed-1.log").read_text()
    assert "cycle 0: already done, skipped" in log and "cycle 1: done" in log  # resumed, not restarted
    assert f"taking over the lock of process {run_pid}" in log
    assert all(p.read_bytes() == content for p, content in done_before.items())  # nothing finished was redone
    for name in ("seed-0", "seed-1", "seed-2"):
        cfg = yaml.safe_load((out / "s" / "configs" / f"{name}.yaml").read_text())
        store = RunStore(runs / name)
        assert store.has_scores() and all(store.is_done(k, _science_hash(cfg)) for k in (0, 1))


def _science_hash(data: dict) -> str:
    from traitloop.config import build_config

    return build_config(data).science_hash()
