"""`traitloop sweep`: grid expansion, run names, validation before anything runs, status.json, skipping
finished runs, and the local executor (failures recorded, N runs at a time). The unit tests use fake
commands instead of models; one integration test runs a real 2-run sweep twice."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import traitloop
from traitloop.cli import main
from traitloop.errors import UserError
from traitloop.progress import Reporter
from traitloop.store import RunStore
from traitloop.sweep import (
    LocalExecutor,
    RunJob,
    SweepStatus,
    exit_code,
    is_finished,
    load_sweep,
    read_status,
    run_name,
    run_sweep,
    summary_table,
    unique_names,
)

QUIET = Reporter(enabled=False)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A model reference that passes the input check without loading or preparing any model."""
    folder = tmp_path / "fake-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')  # an instruct model
    return folder


def write_grid(path: Path, grid: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def inline_base(model_dir: Path, **extra) -> dict:
    return {"trait": "bliss", "n_seed": 4, "n_sampled": 4, "cycles": 1, "model": {"ref": str(model_dir)}, **extra}


# ---- expansion and names -------------------------------------------------------------------------
def test_a_2x3_grid_expands_to_6_runs_in_a_stable_order(tmp_path, model_dir):
    grid = write_grid(
        tmp_path / "g.yaml", {"name": "s", "base": inline_base(model_dir), "grid": {"init": ["reset", "continual"], "seed": [0, 1, 2]}}
    )
    sweep = load_sweep(grid, out_dir=tmp_path / "out")
    assert [(r.config.init, r.config.seed) for r in sweep.runs] == [
        ("reset", 0),
        ("reset", 1),
        ("reset", 2),
        ("continual", 0),
        ("continual", 1),
        ("continual", 2),
    ]
    assert [r.name for r in sweep.runs] == [
        "init-reset_seed-0",
        "init-reset_seed-1",
        "init-reset_seed-2",
        "init-continual_seed-0",
        "init-continual_seed-1",
        "init-continual_seed-2",
    ]
    assert sweep.root == tmp_path / "out" / "s"
    for run in sweep.runs:
        assert run.config.name == run.name
        assert run.config.run_dir == tmp_path / "out" / "s" / "runs" / run.name
    assert [r.name for r in load_sweep(grid, out_dir=tmp_path / "out").runs] == [r.name for r in sweep.runs]  # stable
    assert not (tmp_path / "out").exists()  # loading writes nothing


def test_run_names_are_unique_and_filesystem_safe(tmp_path, model_dir):
    grid = write_grid(
        tmp_path / "g.yaml",
        {
            "name": "s",
            "base": inline_base(model_dir),
            # both values sanitise to the same text; only keys with more than one value name a run
            "grid": {"lora.target_modules": [["q_proj", "v_proj"], "q_proj v_proj"], "eval.questions": [2], "train.learning_rate": [1e-4]},
        },
    )
    names = [r.name for r in load_sweep(grid, out_dir=tmp_path / "out").runs]
    assert names == ["lora-target_modules-q-proj-v-proj", "lora-target_modules-q-proj-v-proj-2"]
    assert run_name({"eval.questions": 2, "trait": "../my traits/x"}) == "eval-questions-2_trait-my-traits-x"
    assert run_name({"judge.model": ""}) == "judge-model-empty"
    assert unique_names(["a", "a", "b", "a"]) == ["a", "a-2", "b", "a-3"]
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and "/" not in name


def test_set_and_grid_override_the_base_file(tmp_path, model_dir):
    base = tmp_path / "configs" / "base.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump({**inline_base(model_dir), "n_seed": 12, "train": {"learning_rate": 5e-4, "batch_size": 4}}))
    grid = write_grid(
        tmp_path / "grids" / "g.yaml",
        {
            "name": "s",
            "base": "../configs/base.yaml",  # relative to the grid file, not to the working directory
            "set": {"cycles": 3, "eval.questions": 2, "seed": 5, "train": {"batch_size": 2}},
            "grid": {"n_seed": [4, 8], "seed": [0, 1]},
        },
    )
    runs = load_sweep(grid, out_dir=tmp_path / "out").runs
    assert len(runs) == 4
    for run in runs:
        cfg = run.config
        assert (cfg.cycles, cfg.eval.questions, cfg.train.batch_size) == (3, 2, 2)  # from set
        assert cfg.train.learning_rate == 5e-4  # from the base, untouched by a nested set
        assert cfg.n_seed == run.values["n_seed"] and cfg.seed == run.values["seed"]  # grid beats set and base
    assert {r.config.seed for r in runs} == {0, 1}


@pytest.mark.parametrize(
    "grid_keys, expected",
    [
        ({"grid": {"seed": [0, 1], "eval.questionz": [2]}}, ["run 'seed-0'", "unknown key 'eval.questionz'"]),
        ({"grid": {"n_seed": [4, "many"]}}, ["run 'n_seed-many'", "n_seed"]),
        ({"set": {"train.lerning_rate": 1e-4}, "grid": {"seed": [0]}}, ["run 'seed-0'", "unknown key 'train.lerning_rate'"]),
        ({"grid": {"trait": ["bliss", "no-such-trait"]}}, ["run 'trait-no-such-trait'", "unknown trait 'no-such-trait'"]),
        ({"grid": {"n_seed": [4, 100000]}}, ["run 'n_seed-100000'", "n_seed=100000"]),
        ({"grid": {"name": ["a", "b"]}}, ["'name' cannot be set in a sweep"]),
        ({"grid": {"seed": []}}, ["grid.seed"]),
        ({"grid": {"seed": [0]}, "jobs": 2}, ["unknown key 'jobs'"]),
        ({"grid": {}}, ["grid"]),
    ],
)
def test_bad_grid_is_a_user_error_naming_run_and_key_and_writes_nothing(tmp_path, model_dir, monkeypatch, capsys, grid_keys, expected):
    grid = write_grid(tmp_path / "g.yaml", {"name": "s", "base": inline_base(model_dir), **grid_keys})
    with pytest.raises(UserError) as info:
        load_sweep(grid, out_dir=tmp_path / "out")
    for text in expected:
        assert text in str(info.value)
    # through the CLI: one message, exit 2, nothing written
    monkeypatch.setattr(sys, "argv", ["traitloop", "sweep", str(grid), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    output = capsys.readouterr()
    assert exit_info.value.code == 2
    assert expected[-1] in output.err and "Traceback" not in output.err
    assert not (tmp_path / "out").exists()


def test_missing_base_and_missing_grid_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="grid file not found"):
        load_sweep(tmp_path / "nope.yaml")
    grid = write_grid(tmp_path / "g.yaml", {"name": "s", "base": "no/such.yaml", "grid": {"seed": [0]}})
    with pytest.raises(UserError, match="base config not found"):
        load_sweep(grid)


def test_example_grids_are_valid():
    root = Path(__file__).parents[1] / "configs" / "sweeps"
    quick = load_sweep(root / "quick-seeds.yaml")
    assert [r.name for r in quick.runs] == ["seed-0", "seed-1"]
    assert quick.runs[0].config.n_seed == 12  # the demo-quick base
    bliss = load_sweep(root / "bliss-init.yaml")
    assert len(bliss.runs) == 10 and {r.config.init for r in bliss.runs} == {"reset", "continual"}
    assert {r.config.seed for r in bliss.runs} == {0, 1, 2, 3, 4}  # enough independent seeds for a replicated verdict


# ---- status.json and skipping --------------------------------------------------------------------
def test_status_json_round_trip(tmp_path):
    status = SweepStatus(tmp_path / "status.json", "s", ["a", "b"])
    status.update("a", status="running", log="logs/a.log")
    status.update("a", status="failed", wall_s=1.5, error="ValueError: boom")
    status.update("b", status="done", wall_s=2.0)
    data = read_status(tmp_path / "status.json")
    assert data["sweep"] == "s"
    assert data["runs"] == {
        "a": {"status": "failed", "log": "logs/a.log", "wall_s": 1.5, "error": "ValueError: boom"},
        "b": {"status": "done", "wall_s": 2.0},
    }
    assert exit_code(data["runs"]) == 1
    assert exit_code({"b": data["runs"]["b"]}) == 0


def fake_finished_run(config, cycles_done: int, scores: bool = True) -> None:
    """A run directory with valid DONE markers for cycles 0..cycles_done-1, as Experiment writes them."""
    store = RunStore(config.run_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "config.yaml").write_text(config.to_yaml())
    for k in range(cycles_done):
        store.write_rows(k, "data", [{"k": k}])
        store.write_rows(k, "eval", [{"k": k}])
        (store.stage_path(k, "adapter")).mkdir(parents=True)
        (store.stage_path(k, "adapter") / "adapter_config.json").write_text("{}")
        store.commit_cycle(k, {"cycle": k}, config.science_hash())
    if scores:
        (store.root / "scores.csv").write_text("cycle\n0\n")


class RecordingExecutor:
    """An executor that runs nothing and records which jobs it was given."""

    def __init__(self):
        self.jobs: list[RunJob] = []

    def run(self, jobs, on_start=None, on_finish=None):
        self.jobs = list(jobs)
        return []


def test_finished_runs_are_skipped(tmp_path, model_dir, capsys):
    grid = write_grid(tmp_path / "g.yaml", {"name": "s", "base": inline_base(model_dir), "grid": {"seed": [0, 1, 2, 3]}})
    sweep = load_sweep(grid, out_dir=tmp_path / "out")
    done, partial, no_scores, fresh = (r.config for r in sweep.runs)
    fake_finished_run(done, cycles_done=2)  # cycles 0..1
    fake_finished_run(partial, cycles_done=1)  # cycle 1 missing
    fake_finished_run(no_scores, cycles_done=2, scores=False)
    assert [is_finished(c) for c in (done, partial, no_scores, fresh)] == [True, False, False, False]
    assert not is_finished(done.model_copy(update={"n_sampled": 5}))  # another config: DONE hashes don't match

    executor = RecordingExecutor()
    runs = run_sweep(sweep, executor, reporter=Reporter(enabled=False))
    assert [j.name for j in executor.jobs] == ["seed-1", "seed-2", "seed-3"]
    assert runs["seed-0"]["status"] == "done" and runs["seed-0"]["skipped"] is True
    assert "skipped seed-0" in capsys.readouterr().err
    assert read_status(sweep.status_path)["runs"] == runs
    assert (sweep.root / "sweep.yaml").read_text() == grid.read_text()
    assert yaml.safe_load((sweep.root / "configs" / "seed-3.yaml").read_text())["seed"] == 3


# ---- the local executor --------------------------------------------------------------------------
FAKE_RUN = """
import json, pathlib, sys, time
name, stamps, seconds = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])
start = time.time()
print("working on", name)
time.sleep(seconds)
if name == "seed-1":
    print("Traceback (most recent call last):")
    print("ValueError: boom in " + name, file=sys.stderr)
    sys.exit(3)
(stamps / (name + ".json")).write_text(json.dumps([start, time.time()]))
"""


def fake_command(stamps: Path, seconds: float):
    stamps.mkdir(parents=True, exist_ok=True)
    return lambda job: [sys.executable, "-c", FAKE_RUN, job.name, str(stamps), str(seconds)]


def test_a_failed_run_does_not_stop_the_sweep(tmp_path, model_dir):
    grid = write_grid(tmp_path / "g.yaml", {"name": "s", "base": inline_base(model_dir), "grid": {"seed": [0, 1, 2]}})
    sweep = load_sweep(grid, out_dir=tmp_path / "out")
    runs = run_sweep(sweep, LocalExecutor(workers=1, command=fake_command(tmp_path / "stamps", 0.1)), reporter=QUIET)
    assert [runs[n]["status"] for n in ("seed-0", "seed-1", "seed-2")] == ["done", "failed", "done"]
    failed = runs["seed-1"]
    assert failed["returncode"] == 3
    assert failed["error"] == "ValueError: boom in seed-1"
    assert "working on seed-1" in failed["error_tail"]
    assert Path(failed["log"]) == sweep.root / "logs" / "seed-1.log"
    assert "ValueError: boom" in Path(failed["log"]).read_text()
    assert "working on seed-2" in (sweep.root / "logs" / "seed-2.log").read_text()
    assert all(runs[n]["wall_s"] >= 0.1 for n in runs)
    assert exit_code(runs) == 1
    assert read_status(sweep.status_path)["runs"] == runs

    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(summary_table(sweep, runs))
    text = console.export_text()
    assert "failed" in text and "seed-1.log" in text and "ValueError: boom in seed-1" in text


def test_jobs_2_runs_two_at_a_time(tmp_path, model_dir):
    grid = write_grid(tmp_path / "g.yaml", {"name": "s", "base": inline_base(model_dir), "grid": {"seed": [0, 2, 3, 4]}})
    sweep = load_sweep(grid, out_dir=tmp_path / "out")
    stamps = tmp_path / "stamps"
    runs = run_sweep(sweep, LocalExecutor(workers=2, command=fake_command(stamps, 1.0)), reporter=QUIET)
    assert exit_code(runs) == 0
    spans = [json.loads(p.read_text()) for p in stamps.glob("*.json")]
    assert len(spans) == 4
    # how many runs were in flight at each run's start: two at a time, never more
    in_flight = [sum(1 for s, e in spans if s <= start < e) for start, _ in spans]
    assert max(in_flight) == 2


def test_jobs_1_runs_one_after_another(tmp_path, model_dir):
    grid = write_grid(tmp_path / "g.yaml", {"name": "s", "base": inline_base(model_dir), "grid": {"seed": [0, 2]}})
    sweep = load_sweep(grid, out_dir=tmp_path / "out")
    stamps = tmp_path / "stamps"
    run_sweep(sweep, LocalExecutor(workers=1, command=fake_command(stamps, 0.3)), reporter=QUIET)
    (s0, e0), (s2, e2) = (json.loads((stamps / f"{n}.json").read_text()) for n in ("seed-0", "seed-2"))
    assert e0 <= s2


# ---- a real sweep --------------------------------------------------------------------------------
@pytest.mark.integration
def test_real_two_run_sweep_then_rerun_skips_both(tmp_path):
    demo_quick = Path(traitloop.__file__).parent / "configs" / "demo-quick.yaml"
    grid = write_grid(
        tmp_path / "grid.yaml",
        {
            "name": "tiny",
            "base": str(demo_quick),
            "set": {
                "n_seed": 4,
                "n_sampled": 4,
                "cycles": 1,
                "eval.questions": 2,
                "eval.samples_per_question": 1,
                "eval.include_base": False,
                "sampling.max_new_tokens": 16,
                "eval.max_new_tokens": 16,
                "train.max_length": 128,
            },
            "grid": {"seed": [0, 1]},
        },
    )
    command = [sys.executable, "-m", "traitloop", "sweep", str(grid), "--jobs", "1", "--out", str(tmp_path / "sweeps")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "sweeps" / "tiny"
    status = read_status(root / "status.json")
    for name in ("seed-0", "seed-1"):
        assert status["runs"][name]["status"] == "done" and status["runs"][name]["skipped"] is False
        assert (root / "runs" / name / "scores.csv").is_file()
        assert (root / "logs" / f"{name}.log").is_file()
        assert yaml.safe_load((root / "runs" / name / "config.yaml").read_text())["seed"] == int(name[-1])

    started = time.time()
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    took = time.time() - started
    assert second.returncode == 0, second.stderr[-3000:]
    assert "skipped seed-0" in second.stderr and "skipped seed-1" in second.stderr
    assert all(entry["skipped"] for entry in read_status(root / "status.json")["runs"].values())
    assert took < 60, f"a rerun of a finished sweep took {took:.0f}s"


def test_cli_exit_code_is_1_when_a_run_failed_and_0_when_all_are_done(tmp_path, model_dir, monkeypatch, capsys):
    import traitloop.sweep

    monkeypatch.setattr(traitloop.sweep, "traitloop_command", fake_command(tmp_path / "stamps", 0.0))
    for seeds, expected in [([0, 1], 1), ([0, 2], 0)]:
        grid = write_grid(tmp_path / "g.yaml", {"name": f"s{expected}", "base": inline_base(model_dir), "grid": {"seed": seeds}})
        monkeypatch.setattr(sys, "argv", ["traitloop", "sweep", str(grid), "--out", str(tmp_path / "out"), "--jobs", "2"])
        try:
            main()
            code = 0  # main() returns normally when the command succeeds
        except SystemExit as exit_info:
            code = exit_info.code
        output = capsys.readouterr()
        assert code == expected, output.out + output.err
        if expected:
            assert "seed-1.log" in output.out and "ValueError: boom in seed-1" in output.out


def test_share_cycle0_points_later_seeds_at_the_first_and_runs_them_second(tmp_path, model_dir):
    grid = write_grid(
        tmp_path / "g.yaml",
        {"name": "s", "base": inline_base(model_dir), "share_cycle0": True, "grid": {"init": ["reset", "continual"], "seed": [0, 1, 2]}},
    )
    sweep = load_sweep(grid, out_dir=tmp_path / "out")
    by_name = {r.name: r.config for r in sweep.runs}
    assert by_name["init-reset_seed-0"].cycle0_from is None
    assert by_name["init-reset_seed-2"].cycle0_from == by_name["init-reset_seed-0"].run_dir
    assert by_name["init-continual_seed-1"].cycle0_from == by_name["init-continual_seed-0"].run_dir
    # the copy source is not part of what a run IS: resuming without it is the same run
    assert (
        by_name["init-reset_seed-2"].science_hash() == by_name["init-reset_seed-2"].model_copy(update={"cycle0_from": None}).science_hash()
    )

    class Waves:
        def __init__(self):
            self.waves = []

        def run(self, jobs, on_start=None, on_finish=None):
            self.waves.append([j.name for j in jobs])
            return []

    executor = Waves()
    run_sweep(sweep, executor, reporter=Reporter(enabled=False))
    assert executor.waves == [
        ["init-reset_seed-0", "init-continual_seed-0"],
        ["init-reset_seed-1", "init-reset_seed-2", "init-continual_seed-1", "init-continual_seed-2"],
    ]
