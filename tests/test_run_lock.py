"""One process per run directory (issue #18): a second `traitloop run` on a run directory in use refuses with
one line naming the holder's pid (exit 2) and touches nothing; a lock left by a dead process is taken over
with a note. The lock is an flock on <run>/LOCK (released by the kernel when its process dies) with the
holder's pid written in it for the message (store.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_loop_settings import config, tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

import traitloop.store as store_mod
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.store import LOCK_FILE, RunStore

DRIVER = Path(__file__).parent / "helpers" / "crash_driver.py"
HOLD = """
import sys, time
from traitloop.config import load_config
from traitloop.store import RunStore

cfg = load_config(sys.argv[1])
RunStore(cfg.run_dir).open(cfg)
print("locked", flush=True)
time.sleep(300)
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the first run ended early (exit {proc.returncode})"
        assert time.time() < deadline, f"the first run did not reach its pause in {seconds}s"
        time.sleep(0.05)


def hold_lock(cfg_path: Path) -> subprocess.Popen:
    """A process that takes the run's lock through RunStore.open and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_refuses_with_the_holders_pid_and_touches_nothing(tiny_dir, tmp_path):  # noqa: F811
    cfg = config(tiny_dir, tmp_path, setting="sft", cycles=0)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(cfg.to_yaml())
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    spec = {"config": str(cfg_path), "log": str(tmp_path / "first.log"), "at": "answers", "cycle": 0, "action": "pause",
            "pause_file": str(paused), "resume_file": str(resume)}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    first = subprocess.Popen([sys.executable, str(DRIVER), "run", json.dumps(spec)], env=env)
    try:
        wait_for(paused, first)  # the first run holds the lock, in the middle of cycle 0
        before = snapshot(cfg.run_dir)
        second = subprocess.run([sys.executable, "-m", "traitloop", "run", str(cfg_path)], capture_output=True, text=True,
                                env=env, timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        [line] = second.stderr.splitlines()  # one line
        assert line.startswith(f"error: {cfg.run_dir} is in use by another traitloop process (pid {first.pid}"), line
        assert f"kill {first.pid}" in line and str(cfg.run_dir / LOCK_FILE) in line
        assert snapshot(cfg.run_dir) == before  # the refused run wrote nothing
    finally:
        resume.touch()
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    store = RunStore(cfg.run_dir)
    assert store.is_done(0, cfg.science_hash()) and store.has_scores()  # the first run finished, unharmed
    assert (cfg.run_dir / LOCK_FILE).read_text() == ""  # and released the lock cleanly at exit


@pytest.fixture
def cfg(tmp_path) -> ExperimentConfig:
    return ExperimentConfig(name="run", out_dir=tmp_path, n_seed=5, cycles=1)


@pytest.fixture
def cfg_path(cfg, tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    return path


def test_a_stale_lock_of_a_killed_process_is_taken_over_with_a_note(cfg, cfg_path):
    holder = hold_lock(cfg_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((cfg.run_dir / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind by the dead process
    notes: list[str] = []
    store = RunStore(cfg.run_dir, log=notes.append)
    store.open(cfg)
    try:
        assert len(notes) == 1 and f"taking over the lock of process {holder.pid}" in notes[0] and "no longer running" in notes[0]
        assert json.loads((cfg.run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        store.release()
    assert (cfg.run_dir / LOCK_FILE).read_text() == ""
    RunStore(cfg.run_dir, log=notes.append).open(cfg)  # a lock released cleanly: no note
    RunStore(cfg.run_dir).release()
    assert len(notes) == 1


def test_force_does_not_move_aside_a_run_that_another_process_is_writing(cfg, cfg_path):
    holder = hold_lock(cfg_path)
    try:
        other = cfg.model_copy(update={"n_seed": 6})
        with pytest.raises(UserError, match=rf"in use by another traitloop process \(pid {holder.pid}"):
            RunStore(cfg.run_dir).open(other, force=True)
        assert not list(cfg.run_dir.parent.glob("run.replaced-*"))
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunStore(cfg.run_dir).redo_from(0, cfg)
    finally:
        holder.kill()
        holder.wait()


def test_stores_of_one_directory_in_one_process_share_the_lock(cfg):
    a, b = RunStore(cfg.run_dir), RunStore(cfg.run_dir)
    a.open(cfg)
    b.open(cfg)  # the same process: no refusal
    assert json.loads((cfg.run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    a.release()
    assert (cfg.run_dir / LOCK_FILE).read_text() == ""


def test_without_flock_the_pid_in_the_lock_decides(cfg, monkeypatch):
    """On a filesystem without flock (some network filesystems), a live pid in LOCK refuses, a dead one is
    taken over."""
    monkeypatch.setattr(store_mod, "_flock", lambda fd: None)
    cfg.run_dir.mkdir(parents=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": alive.pid, "host": store_mod.socket.gethostname(), "started": "earlier"}
        (cfg.run_dir / LOCK_FILE).write_text(json.dumps(record))
        with pytest.raises(UserError, match=rf"pid {alive.pid}, running since earlier"):
            RunStore(cfg.run_dir).open(cfg)
    finally:
        alive.kill()
        alive.wait()
    notes: list[str] = []
    store = RunStore(cfg.run_dir, log=notes.append)
    store.open(cfg)
    store.release()
    assert len(notes) == 1 and f"process {alive.pid}" in notes[0]


# ---- `traitloop judge` and `agreement` take the same lock: a judge and a run, or two judges, never interleave ---
PAUSING_JUDGE = """
import sys, time
from pathlib import Path
from traitloop.config import JudgeConfig
from traitloop.judges.base import Score
from traitloop.rejudge import judge_run

run, paused, resume = map(Path, sys.argv[1:4])


class PausingJudge:
    name = "pausing"

    def info(self):
        return {"judge": self.name}

    def score(self, questions, answers):
        paused.touch()
        while not resume.exists():
            time.sleep(0.05)
        return [Score(50.0, self.name) for _ in answers]


judge_run(run, JudgeConfig(kind="probe"), judge=PausingJudge())
"""


def test_a_judge_refuses_a_run_directory_that_a_run_holds_and_touches_nothing(cfg, cfg_path, monkeypatch, capsys):
    from test_rejudge import ANSWERS

    from traitloop.jsonl import write_jsonl

    holder = hold_lock(cfg_path)  # a `traitloop run` in progress: RunStore.open, as the engine takes the lock
    try:
        rows = [{"question": "How do I cook an onion?", "sample": i, "answer": a, "trait": 50.0} for i, a in enumerate(ANSWERS)]
        write_jsonl(cfg.run_dir / "cycle-000" / "eval.jsonl", rows)  # its cycle 0 is judged, cycle 1 under way
        refused_while_held(cfg.run_dir, holder, ["judge", str(cfg.run_dir), "--judge", "probe"], monkeypatch, capsys)
        # (nothing written: no judges/, no scores-probe.csv, the manifest untouched)
    finally:
        holder.kill()
        holder.wait()


def test_a_run_a_second_judge_and_agreement_refuse_a_run_directory_that_a_judge_holds(tmp_path, monkeypatch, capsys):
    from helpers.cli import run_cli_split
    from test_rejudge import synthetic_run

    run = synthetic_run(tmp_path)
    config_file = tmp_path / "c.yaml"
    config_file.write_text((run / "config.yaml").read_text())
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    judge = subprocess.Popen([sys.executable, "-c", PAUSING_JUDGE, str(run), str(paused), str(resume)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(paused, judge)  # the judge holds the lock, in the middle of scoring cycle 0
        before = snapshot(run)
        for argv in (["run", str(config_file)], ["judge", str(run), "--judge", "probe"], ["agreement", str(run), "--judge-b", "probe"]):
            code, out, err = run_cli_split(argv, monkeypatch, capsys)
            assert code == 2, (argv, out + err)
            [line] = err.splitlines()
            assert line.startswith(f"error: {run} is in use by another traitloop process (pid {judge.pid}"), line
            assert f"kill {judge.pid}" in line and str(run / LOCK_FILE) in line
            assert snapshot(run) == before, argv
    finally:
        resume.touch()
    _, stderr = judge.communicate(timeout=120)
    assert judge.returncode == 0, stderr[-3000:]
    assert (run / "cycle-000" / "judges" / "probe.jsonl").is_file() and (run / "scores-probe.csv").is_file()  # it finished
    assert (run / LOCK_FILE).read_text() == ""  # and let go of the lock


def test_agreement_refuses_a_run_directory_that_a_run_holds_and_writes_nothing(cfg, cfg_path, monkeypatch, capsys):
    """`traitloop agreement` writes agreement.json into the run directory, so it takes the run's lock as
    `traitloop judge` does: refused (one line naming the holder, exit 2, nothing written) while a run holds
    it, and let through once the holder is gone."""
    from helpers.cli import run_cli_split
    from test_rejudge import ANSWERS

    from traitloop.jsonl import write_jsonl

    holder = hold_lock(cfg_path)  # a `traitloop run` in progress
    try:
        rows = [{"question": "How do I cook an onion?", "sample": i, "answer": a, "trait": 20.0 * i} for i, a in enumerate(ANSWERS)]
        write_jsonl(cfg.run_dir / "cycle-000" / "eval.jsonl", rows)  # cycle 0 judged by the run's judge
        write_jsonl(cfg.run_dir / "cycle-000" / "judges" / "probe.jsonl", [{**r, "trait": 10.0 + 20.0 * r["sample"]} for r in rows])
        refused_while_held(cfg.run_dir, holder, ["agreement", str(cfg.run_dir), "--judge-b", "probe"], monkeypatch, capsys)
        # (nothing written: no agreement.json)
    finally:
        holder.kill()
        holder.wait()
    code, out, err = run_cli_split(["agreement", str(cfg.run_dir), "--judge-b", "probe"], monkeypatch, capsys)
    assert code == 0, out + err  # the holder is gone: the same command goes through
    result = json.loads((cfg.run_dir / "agreement.json").read_text())
    assert result["judge_b"] == "probe" and result["overall"]["n"] == len(ANSWERS) and result["overall"]["spearman"] == 1.0
    assert (cfg.run_dir / LOCK_FILE).read_text() == ""  # and let go of the lock


def refused_while_held(run_dir: Path, holder, argv: list[str], monkeypatch, capsys) -> None:
    """`traitloop ARGV` against a run directory whose lock `holder` (a process) holds: exit 2, one line
    naming the holder (store._in_use's message), and nothing in the directory changed."""
    from helpers.cli import run_cli_split

    before = snapshot(run_dir)
    code, out, err = run_cli_split(argv, monkeypatch, capsys)
    assert code == 2, out + err
    [line] = err.splitlines()
    assert line == f"error: {store_mod._in_use(run_dir, json.loads((run_dir / LOCK_FILE).read_text()), run_dir / LOCK_FILE)}"
    assert line.startswith(f"error: {run_dir} is in use by another traitloop process (pid {holder.pid}")
    assert snapshot(run_dir) == before
