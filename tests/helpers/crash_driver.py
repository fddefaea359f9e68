"""Run the cycle engine in a child process and stop it at a named point: SIGKILL (tests/test_crash_matrix.py)
or a pause (tests/test_run_lock.py). Test-only: the hooks wrap the engine's collaborators here, in the child,
never in the library.

A case is a JSON spec: {"config": YAML path, "log": file for the child's stdout and stderr, and optionally
"at": a point below, "cycle": the cycle it fires in (default 1), "action": "kill" (default) or "pause"
with "pause_file" (written when the point is reached) and "resume_file" (waited for)}. The point can also
come from the environment, TRAITLOOP_TEST_KILL_AT=POINT[:CYCLE].

    python tests/helpers/crash_driver.py run SPEC_JSON   one case in this process (a fresh interpreter)
    python tests/helpers/crash_driver.py serve            a zygote: imports torch & co once, then forks one
                                                          child per spec line on stdin, and answers each with
                                                          a JSON line {"pid", "exitcode", "signal", "timed_out"}

Points, each the first time it is reached in the named cycle:
    data        the cycle's data sampling has generated text, nothing of it written
    train       training, right after its first optimizer step (mid-epoch)
    save        saving the adapter: its files are in the temp dir, the weights cut to half, not renamed
    answers     the eval answers are generated, not written
    judge       inside the judge's score call
    data_write  data.jsonl / eval_write eval.jsonl / metrics metrics.json / done DONE: half of the file is
                in its temporary file, not renamed (a kill in the middle of an atomic write)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

POINTS = ("data", "train", "save", "answers", "judge", "data_write", "eval_write", "metrics", "done")
WRITES = {"data_write": "data.jsonl", "eval_write": "eval.jsonl", "metrics": "metrics.json", "done": "DONE"}


def preload() -> None:
    """What the engine imports, so that forked children start at once."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from test_loop_settings import LengthJudge  # noqa: F401
    from trl import DPOTrainer, SFTTrainer  # noqa: F401

    import traitloop.generation.hf  # noqa: F401
    import traitloop.loop  # noqa: F401
    import traitloop.training  # noqa: F401

    torch.set_num_threads(1)


def install(spec: dict, setting, judge) -> None:
    """Wrap the collaborators so that `action` runs the first time the point is reached in the cycle."""
    from traitloop import jsonl
    from traitloop.generation.sampler import Sampler
    from traitloop.loop import Experiment
    from traitloop.store import RunStore

    at = spec.get("at")
    target = int(spec.get("cycle", 1))
    if not at and os.environ.get("TRAITLOOP_TEST_KILL_AT"):
        at, _, cycle = os.environ["TRAITLOOP_TEST_KILL_AT"].partition(":")
        target = int(cycle or 1)
    if not at:
        return
    assert at in POINTS, f"unknown point {at}; choose from {POINTS}"
    now = {"stage": None, "cycle": None}
    fired = []

    def fire() -> None:
        if fired:
            return
        fired.append(at)
        if spec.get("action", "kill") == "pause":
            Path(spec["pause_file"]).write_text(str(os.getpid()))
            while not Path(spec["resume_file"]).exists():
                time.sleep(0.05)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def here(stage: str) -> bool:
        return at == stage and now["cycle"] == target

    def in_stage(name, method):
        def wrapped(self, k, *args, **kwargs):
            now.update(stage=name, cycle=k)
            return method(self, k, *args, **kwargs)

        return wrapped

    Experiment.data_stage = in_stage("data", Experiment.data_stage)
    Experiment.adapter_stage = in_stage("adapter", Experiment.adapter_stage)
    Experiment.evaluate = in_stage("eval", Experiment.evaluate)

    sample = Sampler.sample

    def sample_then(self, *args, **kwargs):
        out = sample(self, *args, **kwargs)
        if now["stage"] == "data" and here("data"):
            fire()
        return out

    Sampler.sample = sample_then

    answer = Sampler.answer

    def answer_then(self, k, *args, **kwargs):
        out = answer(self, k, *args, **kwargs)
        if here("answers"):
            fire()
        return out

    Sampler.answer = answer_then

    train = setting.train

    def train_with_hook(model, tokenizer, rows, config, seed, on_step):
        def step(n, loss):
            on_step(n, loss)
            if now["stage"] == "adapter" and here("train"):
                fire()

        return train(model, tokenizer, rows, config, seed, step)

    setting.train = train_with_hook

    score = judge.score

    def score_then(questions, answers):
        out = score(questions, answers)
        if now["stage"] == "eval" and here("judge"):
            fire()
        return out

    judge.score = score_then

    save_adapter = RunStore.save_adapter

    def save_then(self, k, model):
        if k == target and at == "save":
            original = model.save_pretrained

            def save_half(path, **kwargs):
                original(path, **kwargs)
                weights = Path(path) / "adapter_model.safetensors"
                weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
                fire()

            model.save_pretrained = save_half
        return save_adapter(self, k, model)

    RunStore.save_adapter = save_then

    atomic = jsonl.atomic_write_text

    def atomic_half(path, text):
        path = Path(path)
        if at in WRITES and path.name == WRITES[at] and path.parent.name == f"cycle-{target:03d}":
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.write(fd, text[: len(text) // 2].encode())
            fire()
        return atomic(path, text)

    jsonl.atomic_write_text = atomic_half


def run_case(spec: dict) -> int:
    """One run of the engine with the stand-in judge; the exit code the CLI would give (0, 2 bad state, 1)."""
    import torch
    from test_loop_settings import LengthJudge

    from traitloop.config import load_config
    from traitloop.errors import UserError
    from traitloop.loop import Experiment
    from traitloop.progress import Reporter
    from traitloop.settings import get_setting
    from traitloop.store import release_locks

    torch.set_num_threads(1)
    try:
        cfg = load_config(spec["config"])
        setting, judge = get_setting(cfg.setting), LengthJudge()
        install(spec, setting, judge)
        Experiment(cfg, reporter=Reporter(enabled=False), setting=setting, judge=judge).run()
        code = 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        release_locks()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _child(spec: dict) -> None:
    """In a forked child: output to the spec's log, run, leave without the zygote's exit handlers."""
    code = 1
    try:
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = run_case(spec)
    finally:
        os._exit(code)


def serve() -> None:
    preload()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(spec)
        deadline = time.time() + float(spec.get("timeout", 300))
        status, timed_out = None, False
        while status is None:
            done, status_ = os.waitpid(pid, os.WNOHANG)
            if done:
                status = status_
            elif time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                status, timed_out = os.waitpid(pid, 0)[1], True
            else:
                time.sleep(0.02)
        reply = {
            "pid": pid,
            "exitcode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out,
        }
        print(json.dumps(reply), flush=True)


COMPARED = ("data.jsonl", "answers.jsonl", "eval.jsonl", "metrics.json", "heldout.json", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json")  # fmt: skip


def outputs(run_dir: Path) -> dict[str, bytes]:
    """What an uninterrupted run and a killed-and-resumed (or repaired) one must share byte for byte:
    scores.csv and every cycle's stage files (DONE: its hash; the rest of DONE is the time it was written)."""
    found = {"scores.csv": (run_dir / "scores.csv").read_bytes()}
    for cycle in sorted(run_dir.glob("cycle-*")):
        for name in COMPARED:
            if (cycle / name).is_file():
                found[f"{cycle.name}/{name}"] = (cycle / name).read_bytes()
        found[f"{cycle.name}/DONE hash"] = json.loads((cycle / "DONE").read_text())["hash"].encode()
    return found


def difference(got: dict[str, bytes], expected: dict[str, bytes]) -> str:
    """Which of `outputs` differ, for an assertion message."""
    keys = sorted(set(got) | set(expected))
    return "differs: " + ", ".join(k for k in keys if got.get(k) != expected.get(k))


class Zygote:
    """The test side of `serve`: one long-lived driver process; `run(spec)` forks a child per case."""

    def __init__(self, cwd: Path | None = None):
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd
        )
        ready = self.proc.stdout.readline()
        assert ready.startswith('{"ready"'), f"crash driver did not start: {ready!r}"

    def run(self, spec: dict) -> dict:
        """Run one case to its end: {"pid", "exitcode", "signal", "timed_out"}."""
        self.start(spec)
        return self.wait()

    def start(self, spec: dict) -> None:
        """Start one case and return at once (one case at a time); `wait` collects its result."""
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()

    def wait(self) -> dict:
        reply = self.proc.stdout.readline()
        assert reply, "crash driver died"
        return json.loads(reply)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    elif sys.argv[1] == "run":
        sys.exit(run_case(json.loads(sys.argv[2])))
    else:
        sys.exit(f"usage: {sys.argv[0]} serve | run SPEC_JSON")
