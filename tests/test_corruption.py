"""Bad state in a run directory (issue #18): each damaged file is either redone safely (moved aside to
<run>/aside/, never deleted, with one warning line naming it) or refused with one message naming the file
and what to do (exit 2); never reused silently. The decisions are in store.py's docstring ("Bad state").

Most tests copy one finished tiny run (test_loop_settings' tiny Llama and stand-in judge, SFT, cycles 0-1),
damage it, rerun the engine in this process and require the rerun to equal the undamaged run byte for
byte. Then --redo-from, and a disk that fills up mid-stage (a real 2 MB tmpfs when this process may mount
one, else skipped; the same paths with ENOSPC raised in-process always run).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.crash_driver import difference, outputs
from test_loop_settings import config, experiment, tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

import traitloop.store as store_mod
from traitloop.errors import UserError
from traitloop.jsonl import atomic_write_text, jsonl_problem
from traitloop.store import ASIDE_DIR, RunStore


def run(cfg):
    """The engine over cfg's run directory, as `traitloop run` would resume it; the lock released after."""
    engine = experiment(cfg)
    try:
        return engine.run()
    finally:
        engine.store.release()


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):  # noqa: F811
    """(run directory, its outputs) of one uninterrupted run, copied by each test."""
    cfg = config(tiny_dir, tmp_path_factory.mktemp("finished"), setting="sft", cycles=1)
    run(cfg)
    return cfg.run_dir, outputs(cfg.run_dir)


@pytest.fixture
def copy(finished, tiny_dir, tmp_path):  # noqa: F811
    """A copy of the finished run at this test's config (its run directory), and the expected outputs."""
    cfg = config(tiny_dir, tmp_path, setting="sft", cycles=1)
    shutil.copytree(finished[0], cfg.run_dir)
    return cfg, finished[1]


def unfinish(run_dir: Path, cycle: int = 1) -> None:
    """Cycle k as a run killed before it committed leaves it: every stage file, no metrics.json or DONE."""
    for name in ("metrics.json", "DONE"):
        (run_dir / f"cycle-{cycle:03d}" / name).unlink()


def cut(path: Path, n: int = 7) -> bytes:
    """Cut the last n bytes off a file (a truncated last line); the damaged bytes."""
    data = path.read_bytes()[:-n]
    path.write_bytes(data)
    return data


def aside_copy(run_dir: Path, rel: str) -> Path:
    [found] = list((run_dir / ASIDE_DIR).glob(f"*/{rel}"))
    return found


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


# ---- JSONL checks --------------------------------------------------------------------------------


def test_jsonl_problem_finds_a_cut_off_last_line_and_a_broken_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert jsonl_problem(path) is None
    path.write_text('{"a": 1}\n{"a": 2}')  # valid JSON, but the final newline is missing: cut off
    assert "line 2" in jsonl_problem(path) and "cut off" in jsonl_problem(path)
    path.write_text('{"a": 1}\n{"a": \n')
    assert jsonl_problem(path) == "line 2 is not valid JSON"
    path.write_text("[1]\n")
    assert jsonl_problem(path) == "line 1 is not a JSON object"
    path.write_text("")
    assert jsonl_problem(path) is None


# ---- an unfinished cycle: the damaged stage and every later one are redone ------------------------


@pytest.mark.parametrize("name, stage", [("data.jsonl", "data"), ("answers.jsonl", "answers"), ("eval.jsonl", "eval")])
def test_a_cut_off_stage_file_of_an_unfinished_cycle_is_moved_aside_and_redone(copy, capsys, name, stage):
    cfg, expected = copy
    unfinish(cfg.run_dir)
    path = cfg.run_dir / "cycle-001" / name
    damaged = cut(path)
    run(cfg)
    assert outputs(cfg.run_dir) == expected, difference(outputs(cfg.run_dir), expected)
    [line] = warnings(capsys.readouterr().err)
    assert f"{cfg.run_dir / 'cycle-001'}: {name}: its last line" in line and "cut off" in line
    assert f"redone from its {stage} stage" in line and "not deleted" in line
    assert aside_copy(cfg.run_dir, f"cycle-001/{name}").read_bytes() == damaged  # kept, not deleted


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_adapter_of_an_unfinished_cycle_is_retrained(copy, capsys, damage):
    cfg, expected = copy
    unfinish(cfg.run_dir)
    weights = cfg.run_dir / "cycle-001" / "adapter" / "adapter_model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        weights.unlink()
    run(cfg)
    assert outputs(cfg.run_dir) == expected, difference(outputs(cfg.run_dir), expected)
    [line] = warnings(capsys.readouterr().err)
    assert "adapter: adapter_model.safetensors is " + ("cut off" if damage == "truncated" else "missing") in line
    assert re.search(r"redone from its adapter stage \(adapter, (heldout.json, )?answers.jsonl, eval.jsonl moved aside", line), line


def test_data_without_its_manifest_record_is_redone(copy, capsys):
    """Killed between writing data.jsonl and recording its counts: the counts metrics report are gone."""
    cfg, expected = copy
    unfinish(cfg.run_dir)
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    del manifest["cycles"]["1"]
    (cfg.run_dir / "manifest.json").write_text(json.dumps(manifest))
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    [line] = warnings(capsys.readouterr().err)
    assert "data.jsonl has no record in manifest.json" in line and "redone from its data stage" in line


def test_a_later_stage_made_from_a_missing_one_is_moved_aside(copy, capsys):
    cfg, expected = copy
    unfinish(cfg.run_dir)
    (cfg.run_dir / "cycle-001" / "answers.jsonl").unlink()  # deleted: eval.jsonl was judged from it
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    [line] = warnings(capsys.readouterr().err)
    assert "eval.jsonl was made from a answers.jsonl that is gone" in line


# ---- a finished cycle whose DONE no longer matches ------------------------------------------------


@pytest.mark.parametrize(
    "rel, stage",
    [
        ("cycle-001/eval.jsonl", "eval"),
        ("cycle-001/metrics.json", "metrics"),
        ("cycle-001/data.jsonl", "data"),
        ("cycle-000/adapter/adapter_model.safetensors", "adapter"),
    ],
)
def test_a_finished_cycle_whose_file_changed_is_redone_from_that_stage(copy, capsys, rel, stage):
    cfg, expected = copy
    path = cfg.run_dir / rel
    if rel.endswith("data.jsonl"):  # still valid JSON: only the DONE hash can tell
        damaged = path.read_bytes().replace(b'"content": "', b'"content": "EDITED ', 1)
        path.write_bytes(damaged)
    else:
        damaged = cut(path)
    done_1 = (cfg.run_dir / "cycle-001" / "DONE").read_bytes()
    run(cfg)
    assert outputs(cfg.run_dir) == expected, difference(outputs(cfg.run_dir), expected)
    err = capsys.readouterr().err
    [line] = warnings(err)
    cycle = rel.split("/")[0]
    assert line.startswith(f"warning: {cfg.run_dir / cycle}: {rel.split('/', 1)[1].split('/')[0]} no longer matches the hash")
    assert ("the whole cycle is redone" if stage == "data" else f"redone from its {stage} stage") in line  # data: the first stage
    moved = aside_copy(cfg.run_dir, rel)
    assert moved.read_bytes() == damaged  # the damaged file is kept aside
    if cycle == "cycle-000":  # cycle 0 redone to the same bytes: cycle 1's lineage still holds, it is kept
        assert "cycle 1: already done, skipped" in err
        assert (cfg.run_dir / "cycle-001" / "DONE").read_bytes() == done_1


def test_a_finished_cycle_without_its_manifest_record_is_redone_whole(copy, capsys):
    """Redoing only its eval would recompute metrics without the data stage's counts: the whole cycle instead."""
    cfg, expected = copy
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    del manifest["cycles"]["1"]
    (cfg.run_dir / "manifest.json").write_text(json.dumps(manifest))
    cut(cfg.run_dir / "cycle-001" / "eval.jsonl")
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    [line] = warnings(capsys.readouterr().err)
    assert "eval.jsonl no longer matches" in line and "record in manifest.json is lost" in line and "whole cycle is redone" in line


@pytest.mark.parametrize("done", ["{", '{"hash": "0"}'])
def test_a_damaged_or_old_style_done_redoes_the_whole_cycle(copy, capsys, done):
    """A DONE that is not JSON; a DONE without per-file hashes (before this format) that does not match."""
    cfg, expected = copy
    (cfg.run_dir / "cycle-001" / "DONE").write_text(done)
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    [line] = warnings(capsys.readouterr().err)
    assert "the whole cycle is redone" in line
    reason = "DONE marker is damaged" if done == "{" else "files no longer match its DONE marker"
    assert reason in line
    assert aside_copy(cfg.run_dir, "cycle-001/DONE").read_text() == done
    assert aside_copy(cfg.run_dir, "cycle-001/manifest-record.json").is_file()  # the cycle's record went with it


def test_a_cycle_made_from_a_parent_redone_differently_is_redone(tmp_path):
    """Lineage: cycle 0 redone with another result since cycle 1 was made from it (store level, fake adapters)."""
    from traitloop.config import ExperimentConfig

    cfg = ExperimentConfig(name="run", out_dir=tmp_path, n_seed=5, cycles=1)
    notes: list[str] = []
    store = RunStore(cfg.run_dir, log=notes.append)
    store.open(cfg)

    class Adapter:
        def __init__(self, weights):
            self.weights = weights

        def save_pretrained(self, path, safe_serialization=False):
            os.makedirs(path)
            Path(path, "adapter_config.json").write_text("{}")
            Path(path, "adapter_model.bin").write_text(self.weights)

    for k in (0, 1):
        store.write_rows(k, "data", [{"k": k}])
        store.record_stage(k, "data", 0.0, n_train_examples=1)
        store.save_adapter(k, Adapter("w"))
        store.write_rows(k, "answers", [{"question": "q", "sample": 0, "answer": "a"}])
        store.write_rows(k, "eval", [{"question": "q", "sample": 0, "answer": "a", "trait": 1.0}])
        store.commit_cycle(k, {"cycle": k}, "h")
    assert store.resume_cycle(1, "h")
    store.save_adapter(0, Adapter("other"))  # cycle 0 retrained to another result
    store.commit_cycle(0, {"cycle": 0}, "h")
    assert store.resume_cycle(0, "h") and not store.resume_cycle(1, "h")
    store.release()
    assert not (cfg.run_dir / "cycle-001").exists()
    assert "cycle 0 was redone with a different result" in notes[-1] and "the whole cycle is redone" in notes[-1]


def test_an_unfinished_later_cycle_goes_aside_when_an_earlier_one_is_redone(copy, capsys):
    cfg, expected = copy
    unfinish(cfg.run_dir, 1)
    cut(cfg.run_dir / "cycle-000" / "eval.jsonl")
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    lines = warnings(capsys.readouterr().err)
    assert len(lines) == 2 and "cycle-000: eval.jsonl no longer matches" in lines[0]
    assert "cycle-001: unfinished, and made from cycle 0's old files" in lines[1]


# ---- manifest.json ---------------------------------------------------------------------------------


def test_a_damaged_manifest_is_refused_with_one_message_then_moved_aside_the_run_resumes(copy, monkeypatch, capsys):
    cfg, expected = copy
    unfinish(cfg.run_dir)
    manifest = cfg.run_dir / "manifest.json"
    manifest.write_text(manifest.read_text()[:-40])
    config_path = cfg.run_dir.parent / "c.yaml"
    config_path.write_text(cfg.to_yaml())
    before = {p: p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()}
    code, output = run_cli(["run", str(config_path)], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in output
    [line] = output.splitlines()
    assert line.startswith(f"error: {manifest}: not valid JSON") and f"mv {manifest} {manifest}.damaged" in line
    assert {p: p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()} == before  # nothing changed, the lock let go

    manifest.rename(cfg.run_dir / "manifest.json.damaged")  # what the message says to do
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    lines = warnings(capsys.readouterr().err)
    assert "manifest.json is missing" in lines[0] and "cycle-001: its record in manifest.json is lost" in lines[1]


def test_a_manifest_that_is_not_an_object_is_refused(copy):
    cfg, _ = copy
    (cfg.run_dir / "manifest.json").write_text("[]\n")
    with pytest.raises(UserError, match=r"manifest.json: holds a JSON list, not an object.*Restore it"):
        run(cfg)


# ---- base/ -----------------------------------------------------------------------------------------


def test_damaged_base_files_are_moved_aside_at_open(tmp_path, capsys):
    from traitloop.config import ExperimentConfig

    cfg = ExperimentConfig(name="run", out_dir=tmp_path, n_seed=5, cycles=1)
    store = RunStore(cfg.run_dir)
    store.open(cfg)
    base = store.cycle_dir(store_mod.BASE)
    store.write_rows(store_mod.BASE, "answers", [{"question": "q", "sample": 0, "answer": "a"}])
    (base / "eval.jsonl").write_text('{"question": "q", "trait": 1')
    (base / "metrics.json").write_text("{}\n")
    (base / "rejected_answers.jsonl").write_text('{"key": "k"')
    store.open(cfg)
    store.release()
    assert sorted(p.name for p in base.iterdir()) == ["answers.jsonl"]
    lines = warnings(capsys.readouterr().err)
    assert "eval.jsonl: its last line (line 1) is cut off" in lines[0] and "base model's evaluation is redone" in lines[0]
    assert "rejected_answers.jsonl" in lines[1]
    assert aside_copy(cfg.run_dir, "base/metrics.json").read_text() == "{}\n"


# ---- on purpose: --redo-from -------------------------------------------------------------------------


def test_redo_from_moves_the_cycles_aside_and_the_run_redoes_them(copy, capsys):
    cfg, expected = copy
    old_eval = (cfg.run_dir / "cycle-001" / "eval.jsonl").read_bytes()
    dest = RunStore(cfg.run_dir).redo_from(1, cfg)
    assert not (cfg.run_dir / "cycle-001").exists() and not (cfg.run_dir / "scores.csv").exists()
    assert (dest / "cycle-001" / "eval.jsonl").read_bytes() == old_eval and (dest / "scores.csv").is_file()
    assert "1" not in json.loads((cfg.run_dir / "manifest.json").read_text())["cycles"]
    assert json.loads((dest / "cycle-001" / "manifest-record.json").read_text())["starts_from"] == "base"
    run(cfg)
    assert outputs(cfg.run_dir) == expected
    err = capsys.readouterr().err
    assert "cycle 0: already done, skipped" in err and "cycle 1: already done" not in err


def test_redo_from_on_the_command_line(copy, monkeypatch, capsys):
    import traitloop.cli

    cfg, _ = copy
    config_path = cfg.run_dir.parent / "c.yaml"
    config_path.write_text(cfg.to_yaml())
    ran = []
    monkeypatch.setattr(traitloop.cli, "_run_experiment", lambda config, force: ran.append(config.run_dir))
    code, output = run_cli(["run", str(config_path), "--redo-from", "0"], monkeypatch, capsys)
    store_mod.release_locks()
    assert code == 0, output
    assert ran == [cfg.run_dir] and not list(cfg.run_dir.glob("cycle-*"))
    assert "--redo-from 0: moved cycle-000, cycle-001, scores.csv aside" in output
    code, output = run_cli(["run", str(config_path), "--redo-from", "2"], monkeypatch, capsys)
    store_mod.release_locks()
    assert (code, output.splitlines()) == (2, ["error: --redo-from 2: the run has cycles 0 to 1; give one of those"])
    code, output = run_cli(["run", str(config_path), "--redo-from", "0", "--out", str(cfg.run_dir.parent / "new")], monkeypatch, capsys)
    assert code == 2 and "holds no run yet" in output and len(output.splitlines()) == 1


# ---- a full disk --------------------------------------------------------------------------------------


def test_a_full_disk_in_an_atomic_write_is_one_message_and_leaves_the_old_file(tmp_path, monkeypatch):
    """ENOSPC raised in-process (runs everywhere; the tmpfs tests below use a real full filesystem)."""
    path = tmp_path / "eval.jsonl"
    path.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError) as info:
        atomic_write_text(path, "new\n" * 1000)
    message = str(info.value)
    assert message.startswith(f"{path}: no space left on the device") and "rerun the same command" in message
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl"]


def test_a_full_disk_while_saving_an_adapter_leaves_no_half_adapter(tmp_path):
    class FullDisk:
        def save_pretrained(self, path, safe_serialization=False):
            os.makedirs(path)
            Path(path, "adapter_config.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")

    store = RunStore(tmp_path / "run")
    with pytest.raises(UserError, match="adapter: no space left on the device"):
        store.save_adapter(0, FullDisk())
    assert not (store.cycle_dir(0) / ".adapter.tmp").exists() and not store.has(0, "adapter")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root or CAP_SYS_ADMIN; skipped where this process cannot mount one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root: the in-process ENOSPC tests above cover the same paths")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): the in-process ENOSPC tests above cover the same paths")
    yield mount
    store_mod.release_locks()
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path) -> Path:
    """Fill the filesystem to its last byte."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("stage", ["answers", "adapter"])
def test_a_disk_that_fills_up_mid_stage_fails_clearly_and_the_rerun_completes(finished, tiny_dir, small_disk, monkeypatch, stage):  # noqa: F811
    cfg = config(tiny_dir, small_disk, setting="sft", cycles=1)
    shutil.copytree(finished[0], cfg.run_dir)
    cycle = cfg.run_dir / "cycle-001"
    redo = ["answers.jsonl", "eval.jsonl"] if stage == "answers" else ["adapter", "answers.jsonl", "eval.jsonl"]
    for name in [*redo, "metrics.json", "DONE"]:  # cycle 1 stopped before this stage
        shutil.rmtree(cycle / name) if name == "adapter" else (cycle / name).unlink()
    filler = []
    if stage == "answers":
        write_rows = RunStore.write_rows

        def full_then_write(self, k, name, rows):
            if (k, name) == (1, "answers") and not filler:
                filler.append(fill(small_disk))
            return write_rows(self, k, name, rows)

        monkeypatch.setattr(RunStore, "write_rows", full_then_write)
    else:
        save_adapter = RunStore.save_adapter

        def full_then_save(self, k, model):
            if k == 1 and not filler:
                filler.append(fill(small_disk))
            return save_adapter(self, k, model)

        monkeypatch.setattr(RunStore, "save_adapter", full_then_save)

    with pytest.raises(UserError) as info:
        run(cfg)
    target = cycle / ("answers.jsonl" if stage == "answers" else "adapter")
    assert str(info.value).startswith(f"{target}: no space left on the device"), str(info.value)
    assert not target.exists() and [p.name for p in cycle.iterdir() if p.name.startswith(".")] == []  # no partial file

    filler[0].unlink()  # space freed
    run(cfg)
    assert outputs(cfg.run_dir) == finished[1], difference(outputs(cfg.run_dir), finished[1])
