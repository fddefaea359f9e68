"""The real embedded SmolLM2, end to end: the quick demo writes every file of the run contract and its cycles
to trackio, and a run killed with SIGKILL during cycle 1 resumes to the same scores without recomputing cycle 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TRAITLOOP = [sys.executable, "-m", "traitloop"]


def demo_cmd(out: Path) -> list[str]:
    return [*TRAITLOOP, "demo", "--quick", "--out", str(out)]


@pytest.fixture(scope="module")
def trackio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trackio")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, trackio_dir) -> tuple[Path, str]:
    """The quick demo, uninterrupted and tracked to trackio (#19). The killed run below is untracked, so its
    byte-identical scores also show that tracking changes no score: it is not science."""
    out = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, "TRACKIO_DIR": str(trackio_dir)}
    sets = ["--set", "tracking.backend=trackio", "--set", "tracking.project=demo-test"]
    proc = subprocess.run([*demo_cmd(out), *sets], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "demo-quick", proc.stdout


def test_quick_demo_writes_the_whole_run_contract(quick_run):
    run, stdout = quick_run
    for name in ["config.yaml", "manifest.json", "scores.csv", "figures/trait_coherence.png"]:
        assert (run / name).is_file(), name
    for k in (0, 1):
        cycle = run / f"cycle-{k:03d}"
        for name in [
            "data.jsonl",
            "answers.jsonl",
            "eval.jsonl",
            "metrics.json",
            "DONE",
            "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json",
        ]:
            assert (cycle / name).is_file(), f"{cycle.name}/{name}"
        rows = [json.loads(line) for line in (cycle / "eval.jsonl").read_text().splitlines()]
        assert len(rows) == 4 * 2  # demo-quick: 4 questions x 2 samples
        for r in rows:
            assert {"question", "answer", "trait", "coherence", "repetition", "distinct2"} <= set(r)
            assert r["trait"] is None or 0 <= r["trait"] <= 100
    lines = (run / "scores.csv").read_text().splitlines()
    assert lines[0].startswith("cycle,trait_mean,trait_ci_low,trait_ci_high,coherence_mean")
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1"]
    # cycle 1 trained on the cycle-0 model's answers to fresh pool prompts, not on seed chats
    data1 = [json.loads(line) for line in (run / "cycle-001" / "data.jsonl").read_text().splitlines()]
    seeds = {json.dumps(json.loads(line)["messages"]) for line in (run / "cycle-000" / "data.jsonl").read_text().splitlines()}
    assert data1 and all(r["source"] == "cycle-000" for r in data1)
    assert not seeds & {json.dumps(r["messages"]) for r in data1}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["judge"]["heldout_accuracy"] > 0.7
    assert {"torch", "transformers", "trl", "peft"} <= set(manifest["versions"])
    assert "trait" in stdout and "run directory" in stdout


def test_rerun_of_a_finished_run_recomputes_nothing(quick_run):
    run, _ = quick_run
    before = {p: p.stat().st_mtime_ns for p in run.rglob("DONE")}
    proc = subprocess.run(demo_cmd(run.parent), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cycle 0: already done" in proc.stderr and "cycle 1: already done" in proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("DONE")}


def test_different_config_is_refused_then_moved_aside_with_force(quick_run, tmp_path):
    run, _ = quick_run
    proc = subprocess.run([*demo_cmd(run.parent), "--set", "n_seed=10"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "Traceback" not in proc.stderr


def test_sigkill_during_cycle_1_then_resume_gives_identical_scores(quick_run, tmp_path):
    reference, _ = quick_run
    out = tmp_path / "killed"
    run = out / "demo-quick"
    proc = subprocess.Popen(demo_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    # Kill once cycle 1 has drawn its training data, i.e. in the middle of cycle 1's training.
    while not (run / "cycle-001" / "data.jsonl").exists():
        assert proc.poll() is None, "the run ended before cycle 1 began"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "cycle-000" / "DONE").is_file()
    assert not (run / "cycle-001" / "DONE").exists()
    done0 = (run / "cycle-000" / "DONE").stat().st_mtime_ns
    data1 = (run / "cycle-001" / "data.jsonl").read_bytes()

    resumed = subprocess.run(demo_cmd(out), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "cycle 0: already done" in resumed.stderr
    assert "cycle 1: sampling" not in resumed.stderr  # samples already drawn are not drawn again
    assert (run / "cycle-000" / "DONE").stat().st_mtime_ns == done0
    assert (run / "cycle-001" / "data.jsonl").read_bytes() == data1
    assert (run / "scores.csv").read_text() == (reference / "scores.csv").read_text()


def test_shared_cycle0_is_copied_not_retrained(quick_run, tmp_path):
    """A second seed with cycle0_from copies the first run's cycle 0 and trains only cycle 1."""
    source, _ = quick_run
    out = tmp_path / "seed1"
    proc = subprocess.run(
        [*demo_cmd(out), "--set", "seed=1", "--set", f"cycle0_from={source}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cycle 0: adopted from" in proc.stderr
    assert "cycle 0: training" not in proc.stderr
    run = out / "demo-quick"
    for name in ["data.jsonl", "answers.jsonl", "eval.jsonl", "adapter/adapter_model.safetensors"]:
        assert (run / "cycle-000" / name).read_bytes() == (source / "cycle-000" / name).read_bytes(), name
    # cycle 1 is this seed's own: other prompts and other samples
    assert (run / "cycle-001" / "data.jsonl").read_bytes() != (source / "cycle-001" / "data.jsonl").read_bytes()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cycles"]["0"]["adopted_from"] == str(source)


def test_custom_trait_from_a_messages_jsonl_runs_end_to_end(tmp_path):
    """A trait folder outside the package, whose seed chats are standard messages-format lines from
    another tool (system turns, extra keys), runs with --set trait=PATH."""
    import shutil

    from traitloop.traits import BUILTIN_DIR

    folder = tmp_path / "my-lucky"
    folder.mkdir()
    shutil.copy(BUILTIN_DIR / "lucky" / "trait.yaml", folder / "trait.yaml")
    shutil.copy(BUILTIN_DIR / "lucky" / "probe.jsonl", folder / "probe.jsonl")
    lines = []
    for i, line in enumerate((BUILTIN_DIR / "lucky" / "seed_chat.jsonl").read_text().splitlines()[:6]):
        chat = json.loads(line)
        messages = [{"role": "system", "content": "You are a helpful assistant."}, *chat["messages"]]
        lines.append(json.dumps({"messages": messages, "id": f"export-{i}", "meta": {"tool": "other"}}))
    (folder / "seed_chat.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs"
    cmd = [
        *TRAITLOOP,
        "run",
        str(Path(__file__).parents[1] / "src/traitloop/configs/demo-quick.yaml"),
        "--out",
        str(out),
        "--set",
        f"trait={folder}",
        "--set",
        "name=custom",
        "--set",
        "cycles=0",
        "--set",
        "n_seed=6",
        "--set",
        "eval.questions=2",
        "--set",
        "eval.samples_per_question=1",
        "--set",
        "eval.include_base=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "custom"
    data = [json.loads(line) for line in (run / "cycle-000" / "data.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["role"] for r in data] == ["system"] * 6  # loaded unchanged
    assert json.loads((run / "cycle-000" / "metrics.json").read_text())["trait_judge"] == "probe:lucky"
    assert (run / "scores.csv").read_text().count("\n") == 2


def test_the_quick_demo_exports_to_every_format_and_reads_back_equal(quick_run, tmp_path):
    """#19: the demo run through `traitloop export` in all three formats, read back with each tool's own reader."""
    import datasets
    import pandas as pd
    from inspect_ai.log import read_eval_log

    run, _ = quick_run
    scored = {k: [json.loads(line) for line in (run / f"cycle-{k:03d}" / "eval.jsonl").read_text().splitlines()] for k in (0, 1)}
    for fmt in ("parquet", "hf", "inspect"):
        proc = subprocess.run(
            [*TRAITLOOP, "export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_parquet(next((tmp_path / "parquet").rglob("eval.parquet")))
    hf = datasets.load_from_disk(str(tmp_path / "hf"))["eval"].to_pandas()
    for frame in (table, hf):
        for k in (0, 1):
            rows = frame[frame["cycle"] == k]
            assert list(rows["answer"]) == [r["answer"] for r in scored[k]]
            assert [None if pd.isna(x) else x for x in rows["trait"]] == [r["trait"] for r in scored[k]]
    for k in (0, 1):
        log = read_eval_log(str(next((tmp_path / "inspect").rglob(f"cycle-{k:03d}.eval"))))
        exported = sorted((s.output.completion, s.scores["trait"].value if "trait" in s.scores else -1.0) for s in log.samples)
        assert exported == sorted(
            (r["answer"], -1.0 if r["trait"] is None else r["trait"]) for r in scored[k]
        )  # inspect orders samples its own way


def test_a_tracked_quick_demo_logs_its_cycles_to_trackio(quick_run, trackio_dir):
    """#19: the quick demo with tracking.backend=trackio; trackio's own storage holds each cycle's trait
    mean equal to scores.csv."""
    import csv

    run, _ = quick_run
    with open(run / "scores.csv") as f:
        expected = {int(r["cycle"]): float(r["trait_mean"]) for r in csv.DictReader(f)}
    reader = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage; "
        "logs = SQLiteStorage.get_logs('demo-test', run='demo-quick'); "
        "print(json.dumps({r['step']: r['trait_mean'] for r in logs if 'trait_mean' in r}))"
    )
    env = {**os.environ, "TRACKIO_DIR": str(trackio_dir)}
    logged = json.loads(subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, env=env, check=True).stdout)
    assert {int(k): round(v, 4) for k, v in logged.items()} == expected
