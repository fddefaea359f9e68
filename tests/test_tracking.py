"""Experiment tracking (traitloop.tracking), offline: trackio in a local directory, W&B in offline mode,
MLflow on a local sqlite store. Each test runs a real tiny traitloop run (tests/test_loop_settings.py's
tiny random Llama and stand-in judge), reads back what the tracker stored, and compares the per-cycle
trait means with the run's scores.csv. A tracker that is unreachable, raises, or breaks inside
transformers' training callback is one warning, and the run's scores.csv is byte for byte an untracked run's.
"""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest
from test_loop_settings import LengthJudge, config, tiny_dir  # noqa: F401  (fixtures)
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.config import ExperimentConfig, TrackingConfig, build_config, load_config
from traitloop.loop import Experiment
from traitloop.progress import Reporter
from traitloop.store import read_scores
from traitloop.tracking import SafeTracker, condition_group, cycle_metrics, tracker_for
from traitloop.training import TrainingCurves, _GuardedCurves

DEMO = Path(__file__).parents[1] / "src" / "traitloop" / "configs" / "demo.yaml"


class Recording(Reporter):
    """A silent reporter that keeps what it logs (the warnings), as the terminal shows it."""

    def __init__(self):
        super().__init__(enabled=False)
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        from rich.text import Text

        self.lines.append(Text.from_markup(message).plain)  # raises on broken markup, as rich would

    def warnings(self) -> list[str]:
        return [line for line in self.lines if "tracking:" in line]


def tracked_run(cfg, reporter=None, **collaborators):
    """Run the engine with the stand-in judge; (scores.csv rows, reporter)."""
    reporter = reporter or Recording()
    Experiment(cfg, reporter=reporter, judge=LengthJudge(), **collaborators).run()
    return read_scores(cfg.run_dir / "scores.csv"), reporter


def trait_means(scores) -> dict[int, float]:
    return {row["cycle"]: row["trait_mean"] for row in scores}


# ---- config ---------------------------------------------------------------------------------------
def test_tracking_is_not_science_and_replications_share_a_group():
    plain = load_config(DEMO)
    tracked = load_config(DEMO, ["tracking.backend=mlflow", "tracking.project=p", "tracking.tracking_uri=sqlite:///x.db"])
    assert tracked.tracking.backend == "mlflow" and plain.tracking == TrackingConfig()
    assert tracked.science_hash() == plain.science_hash()
    assert tracked.condition_dict() == plain.condition_dict()
    assert "tracking" not in plain.science_dict()
    assert ExperimentConfig.model_validate(json.loads(json.dumps(tracked.model_dump(mode="json")))) == tracked
    # the default group is the condition: equal across seeds, different for another learning rate
    other_seed = load_config(DEMO, ["seed=7"])
    assert condition_group(other_seed) == condition_group(plain) and condition_group(plain).startswith("sft-bliss-")
    assert condition_group(load_config(DEMO, ["train.learning_rate=1e-3"])) != condition_group(plain)
    with pytest.raises(Exception, match="tracking.backend"):
        build_config({"tracking": {"backend": "tensorboard"}})


def test_cycle_metrics_flattens_metrics_and_the_cycle_record():
    metrics = {
        "cycle": 1,
        "trait_mean": 40.5,
        "trait_ci_low": 30.0,
        "coherence_judge_mean": float("nan"),
        "ci_unit": "question",
        "trait_excluded": {"refused": 2},
        "n_answers": 20,
        "judge_usage": {"requests": 40, "estimated_cost": 0.25},
    }
    record = {
        "timings_s": {"data": 1.5, "train": 3.0},
        "seeds": {"data": 123},
        "n_new": 4,
        "n_dropped_coherence": 1,
        "train": {"loss_last": 2.5, "steps": 2},
        "starts_from": "base",
    }
    assert cycle_metrics(metrics, record) == {
        "trait_mean": 40.5,
        "trait_ci_low": 30.0,
        "trait_excluded/refused": 2,
        "n_answers": 20,
        "judge_usage/requests": 40,
        "judge_usage/estimated_cost": 0.25,
        "time_s/data": 1.5,
        "time_s/train": 3.0,
        "training/loss_last": 2.5,
        "training/steps": 2,
        "n_new": 4,
        "n_dropped_coherence": 1,
    }


# ---- each backend, read back --------------------------------------------------------------------
@pytest.fixture
def trackio_dir(tmp_path, monkeypatch):
    """trackio keeps a project's runs in TRACKIO_DIR/<project>.db; its modules read the variable at import."""
    import sys

    import trackio  # noqa: F401

    folder = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    for name, module in list(sys.modules.items()):
        if name.startswith("trackio") and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", folder)
    for name in ("MEDIA_DIR", "ARTIFACTS_DIR"):
        monkeypatch.setattr(sys.modules["trackio.utils"], name, folder / name.removesuffix("_DIR").lower())
    return folder


def test_trackio_logs_the_config_every_cycle_and_the_training_curves(tiny_dir, tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    cfg = config(tiny_dir, tmp_path, tracking={"backend": "trackio", "project": "tl-test"})
    scores, reporter = tracked_run(cfg)
    assert reporter.warnings() == []
    assert (trackio_dir / "tl-test.db").is_file()
    logs = SQLiteStorage.get_logs("tl-test", run="t")
    logged = {row["step"]: row["trait_mean"] for row in logs if "trait_mean" in row}
    assert logged == trait_means(scores)  # step = cycle, the values scores.csv holds
    cycle_rows = [row for row in logs if "trait_mean" in row]
    assert all(r["n_answers"] == 2 and r["time_s/train"] > 0 and "coherence_ci_high" in r for r in cycle_rows)
    curve = [row["train/global_step"] for row in logs if "train/loss" in row]
    assert len(curve) >= 3 and curve == sorted(curve) and len(set(curve)) == len(curve)  # one axis over the cycles
    run_config = SQLiteStorage.get_run_config("tl-test", "t")
    assert run_config["science_hash"] == cfg.science_hash() and run_config["train"]["learning_rate"] == 1e-3
    assert run_config["_Group"] == condition_group(cfg)  # where trackio keeps a run's group


def wandb_records(path: Path):
    """The records of a .wandb file (W&B's LevelDB-style log of protobuf Records; read with W&B's own protobuf
    classes, as wandb has no public offline reader)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def test_wandb_offline_logs_the_config_every_cycle_and_the_training_curves(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config(tiny_dir, tmp_path, tracking={"backend": "wandb", "project": "tl-test"})
    scores, reporter = tracked_run(cfg)
    assert reporter.warnings() == []
    [path] = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, run = [], None
    for record in wandb_records(Path(path)):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "run":
            run = record.run
    logged = {row["cycle"]: row["trait_mean"] for row in history if "trait_mean" in row}
    assert logged == pytest.approx(trait_means(scores))  # W&B writes 10.0 as 10
    assert all(row["n_answers"] == 2 for row in history if "trait_mean" in row)
    curve = [row["train/global_step"] for row in history if "train/loss" in row]
    assert len(curve) >= 3 and curve == sorted(curve) and len(set(curve)) == len(curve)
    assert run.display_name == "t" and run.project == "tl-test" and run.run_group == condition_group(cfg)
    config_items = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config_items["science_hash"] == cfg.science_hash() and config_items["n_seed"] == 4


def test_mlflow_logs_every_cycle_and_a_resumed_run_logs_the_finished_cycles_too(tiny_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tiny_dir, tmp_path, tracking={"backend": "mlflow", "project": "tl-test", "tracking_uri": uri})
    scores, reporter = tracked_run(cfg)
    assert reporter.warnings() == []
    tracked_run(cfg)  # every cycle is done: the second process logs them all again, into a run of its own

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tl-test")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED" and run.info.run_name == "t"
        history = client.get_metric_history(run.info.run_id, "trait_mean")
        assert {m.step: m.value for m in history} == trait_means(scores)
        assert run.data.params["science_hash"] == cfg.science_hash() and run.data.params["train.learning_rate"] == "0.001"
        assert run.data.tags["traitloop.group"] == condition_group(cfg)
        assert run.data.metrics["n_answers"] == 2
    first, second = runs
    loss = client.get_metric_history(first.info.run_id, "loss")  # TRL's curve, one step axis over the cycles
    steps = [m.step for m in loss]
    assert len(steps) >= 3 and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert client.get_metric_history(second.info.run_id, "loss") == []  # nothing trained in the resumed process


# ---- a tracker never stops or changes a run -------------------------------------------------------
@pytest.fixture(scope="module")
def untracked(tiny_dir, tmp_path_factory):
    """scores.csv of the one-cycle tiny run without tracking."""
    cfg = config(tiny_dir, tmp_path_factory.mktemp("untracked"), cycles=1)
    tracked_run(cfg)
    return (cfg.run_dir / "scores.csv").read_bytes()


def test_an_unreachable_mlflow_server_is_one_warning_and_changes_nothing(tiny_dir, tmp_path, untracked):
    cfg = config(tiny_dir, tmp_path, cycles=1, tracking={"backend": "mlflow", "tracking_uri": "http://127.0.0.1:9"})
    _, reporter = tracked_run(cfg)
    [warning] = reporter.warnings()
    assert "MlflowTracker failed to start" in warning and "unreachable" in warning and "untracked" in warning
    assert (cfg.run_dir / "scores.csv").read_bytes() == untracked


class Raising:
    """A tracker that raises at `where` and records what it was asked."""

    report_to = "none"

    def __init__(self, where: str):
        self.where, self.calls = where, []

    def start(self, config):
        self.calls.append("start")
        if self.where == "start":
            raise RuntimeError("no tracker here")

    def log_cycle(self, k, metrics):
        self.calls.append(f"log {k}")
        if self.where == "log" and k == 1:
            raise ConnectionError("[Errno 111] the server went away")  # brackets: rich markup must not choke

    def finish(self, ok=True):
        self.calls.append(f"finish {ok}")


@pytest.mark.parametrize("where", ["start", "log"])
def test_a_tracker_that_raises_is_one_warning_and_changes_nothing(tiny_dir, tmp_path, untracked, where):
    tracker = Raising(where)
    cfg = config(tiny_dir, tmp_path, cycles=1)
    _, reporter = tracked_run(cfg, tracker=tracker)
    [warning] = reporter.warnings()
    assert ("failed to start" if where == "start" else "failed to log cycle 1") in warning
    assert tracker.calls == (["start"] if where == "start" else ["start", "log 0", "log 1"])  # then a no-op
    assert (cfg.run_dir / "scores.csv").read_bytes() == untracked


def test_a_tracker_is_finished_failed_when_the_run_raises(tiny_dir, tmp_path):
    tracker = Raising("nowhere")
    cfg = config(tiny_dir, tmp_path, cycles=1)
    engine = Experiment(cfg, reporter=Recording(), judge=LengthJudge(), tracker=tracker)

    def broken(k):
        raise ValueError("the cycle broke")

    engine.run_cycle = broken
    with pytest.raises(ValueError, match="the cycle broke"):
        engine.run()
    assert tracker.calls == ["start", "finish False"]


def test_a_failing_training_callback_turns_the_curves_off_and_changes_nothing(tiny_dir, tmp_path, trackio_dir, untracked, monkeypatch):
    """transformers' TrackioCallback raising at every step must not stop training: one warning, the cycle
    metrics are still logged, and the scores are an untracked run's."""
    from trackio.sqlite_storage import SQLiteStorage
    from transformers.integrations import TrackioCallback

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(TrackioCallback, "on_log", broken)
    cfg = config(tiny_dir, tmp_path, cycles=1, tracking={"backend": "trackio", "project": "tl-broken"})
    scores, reporter = tracked_run(cfg)
    [warning] = reporter.warnings()
    assert "training curves are off" in warning and "disk full" in warning
    assert (cfg.run_dir / "scores.csv").read_bytes() == untracked
    logs = SQLiteStorage.get_logs("tl-broken", run="t")
    assert {row["step"]: row["trait_mean"] for row in logs if "trait_mean" in row} == trait_means(scores)
    assert not [row for row in logs if "train/loss" in row]


def test_guarded_curves_shift_steps_and_swallow_errors():
    from transformers import TrainerCallback, TrainerControl, TrainerState

    seen, warnings = [], []

    class Inner(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append((state.global_step, dict(logs)))
            if logs.get("loss") == "bad":
                raise RuntimeError("boom")

    curves = TrainingCurves("trackio", warnings.append)
    guarded, control = _GuardedCurves(Inner(), curves), TrainerControl()
    for cycle in range(2):  # two trainers, one curve
        for step in (1, 2):
            guarded.on_log(None, TrainerState(global_step=step), control, logs={"loss": 1.0})
        guarded.on_train_end(None, TrainerState(global_step=2), control)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    guarded.on_log(None, TrainerState(global_step=1), control, logs={"loss": "bad"})
    guarded.on_log(None, TrainerState(global_step=2), control, logs={"loss": 1.0})
    assert len(seen) == 5 and curves.failed and len(warnings) == 1 and "boom" in warnings[0]


def test_no_tracking_is_a_no_op_with_no_curves():
    tracker = tracker_for(TrackingConfig())
    assert isinstance(tracker, SafeTracker) and not tracker.live
    tracker.start(ExperimentConfig())
    assert tracker.training_curves is None
    tracker.log_cycle(0, {"trait_mean": 1.0})
    tracker.finish()


@pytest.mark.parametrize("backend", ["trackio", "wandb", "mlflow"])
def test_a_missing_library_is_one_warning(monkeypatch, tmp_path, backend):
    monkeypatch.setitem(__import__("sys").modules, backend, None)  # as if not installed
    reporter = Recording()
    cfg = build_config({"out_dir": str(tmp_path), "tracking": {"backend": backend}})
    tracker = tracker_for(cfg.tracking, reporter=reporter)
    with tracker.tracking(cfg):
        tracker.log_cycle(0, {"trait_mean": 1.0})
        with tracker.curves():
            from traitloop.training import _report_to

            assert _report_to() == "none"  # no curves either
    [warning] = reporter.warnings()
    assert "failed to start" in warning and "pip install traitloop[tracking]" in warning
