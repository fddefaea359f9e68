"""The run directory: open/resume/force, rows, atomic writes, DONE markers with lineage, adapters, scores."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from test_tiny_model import tokenizer  # noqa: F401  (fixture)

import traitloop.store as store_mod
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.store import SCORES_COLUMNS, RunStore

HASH = "cfg-hash"


@pytest.fixture
def cfg(tmp_path) -> ExperimentConfig:
    return ExperimentConfig(name="run", out_dir=tmp_path, n_seed=5, cycles=2)


@pytest.fixture
def store(cfg) -> RunStore:
    s = RunStore(cfg.run_dir)
    s.open(cfg)
    return s


class FakeAdapterModel:
    """Stands in for a PeftModel: save_pretrained writes a directory with adapter_config.json."""

    def __init__(self, payload: str = "weights"):
        self.payload = payload
        self.calls: list[tuple[Path, bool]] = []

    def save_pretrained(self, path, safe_serialization=False):
        self.calls.append((Path(path), safe_serialization))
        os.makedirs(path, exist_ok=True)
        Path(path, "adapter_config.json").write_text(json.dumps({"r": 4}))
        Path(path, "adapter_model.safetensors").write_text(self.payload)


def _finish_cycle(store: RunStore, k: int, metrics: dict | None = None, payload: str = "weights") -> None:
    store.write_rows(k, "data", [{"messages": [{"role": "user", "content": f"q{k}"}], "source": "seed"}])
    store.save_adapter(k, FakeAdapterModel(payload))
    store.write_rows(k, "answers", [{"question": "q", "sample": 0, "answer": "a"}])
    store.write_rows(k, "eval", [{"question": "q", "answer": "a", "trait": 10.0}])
    store.commit_cycle(k, metrics or {"cycle": k}, HASH)


# ---- open ---------------------------------------------------------------------------------------


def test_open_writes_config_and_manifest(store, cfg):
    root = cfg.run_dir
    assert ExperimentConfig.model_validate(yaml.safe_load((root / "config.yaml").read_text())) == cfg
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config_hash"] == cfg.science_hash()
    assert manifest["seed"] == cfg.seed
    assert manifest["cycles"] == {}
    versions = manifest["versions"]
    assert "python" in versions
    assert "torch" in versions and "transformers" in versions
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert versions["traitloop_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert "created" in manifest and "updated" in manifest


def test_reopen_with_same_config_keeps_the_run(store, cfg):
    _finish_cycle(store, 0)
    created = store.manifest()["created"]
    store.open(cfg)
    # A different name/out_dir is not a different science config either.
    RunStore(cfg.run_dir).open(cfg.model_copy(update={"name": "renamed"}))
    assert store.is_done(0, HASH)
    assert store.manifest()["created"] == created
    assert not list(cfg.run_dir.parent.glob("run.replaced-*"))


def test_reopen_with_different_config_is_refused(store, cfg):
    _finish_cycle(store, 0)
    other = cfg.model_copy(update={"n_seed": cfg.n_seed + 1})
    with pytest.raises(UserError, match="different config"):
        store.open(other)
    # Nothing was touched.
    assert yaml.safe_load((cfg.run_dir / "config.yaml").read_text())["n_seed"] == cfg.n_seed
    assert store.is_done(0, HASH)


def test_unreadable_old_config_counts_as_different(store, cfg):
    (cfg.run_dir / "config.yaml").write_text("not_a_key: 1\n")
    with pytest.raises(UserError):
        store.open(cfg)


def test_force_moves_old_run_aside_and_starts_fresh(store, cfg):
    _finish_cycle(store, 0)
    other = cfg.model_copy(update={"n_seed": cfg.n_seed + 1})
    store.open(other, force=True)

    asides = list(cfg.run_dir.parent.glob("run.replaced-*"))
    assert len(asides) == 1
    old = asides[0]
    assert old.is_dir()
    assert (old / "cycle-000" / "DONE").is_file()
    assert (old / "cycle-000" / "data.jsonl").is_file()
    assert yaml.safe_load((old / "config.yaml").read_text())["n_seed"] == cfg.n_seed

    assert not store.cycle_dir(0).exists()
    assert yaml.safe_load((cfg.run_dir / "config.yaml").read_text())["n_seed"] == cfg.n_seed + 1
    assert store.manifest()["config_hash"] == other.science_hash()
    assert store.manifest()["cycles"] == {}


def test_two_forced_replacements_in_the_same_second(store, cfg, monkeypatch):
    monkeypatch.setattr(store_mod.time, "strftime", lambda fmt, *a: "20250101-000000")
    store.open(cfg.model_copy(update={"n_seed": 1}), force=True)
    store.open(cfg.model_copy(update={"n_seed": 2}), force=True)
    assert len(list(cfg.run_dir.parent.glob("run.replaced-*"))) == 2


# ---- rows and atomic writes -------------------------------------------------------------------


def test_rows_round_trip(store):
    rows = [{"a": 1, "text": "héllo ✨", "nested": {"x": [1, 2]}}, {"a": None}]
    store.write_rows(3, "answers", rows)
    assert store.has(3, "answers")
    assert not store.has(3, "eval")
    assert store.read_rows(3, "answers") == rows
    assert store.stage_path(3, "answers") == store.root / "cycle-003" / "answers.jsonl"


def test_rewrite_replaces_and_leaves_no_temp_files(store):
    store.write_rows(0, "data", [{"i": i} for i in range(50)])
    store.write_rows(0, "data", [{"i": 0}])
    store.write_scores([{"cycle": 0}])
    assert store.read_rows(0, "data") == [{"i": 0}]
    leftovers = [p.name for p in store.root.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert leftovers == []
    assert sorted(p.name for p in store.cycle_dir(0).iterdir()) == ["data.jsonl"]


def test_unknown_stage_is_rejected(store):
    with pytest.raises(ValueError):
        store.stage_path(0, "bogus")


# ---- DONE markers ------------------------------------------------------------------------------


def test_commit_then_done(store):
    assert not store.is_done(0, HASH)
    _finish_cycle(store, 0, {"cycle": 0, "trait_mean": 12.5})
    assert store.is_done(0, HASH)
    assert store.metrics(0) == {"cycle": 0, "trait_mean": 12.5}
    assert not store.is_done(0, "another-config-hash")


def test_changing_a_byte_of_data_undoes_done(store):
    _finish_cycle(store, 0)
    path = store.stage_path(0, "data")
    raw = bytearray(path.read_bytes())
    i = raw.index(b"q0")
    raw[i + 1] = ord("9")
    path.write_bytes(bytes(raw))
    assert not store.is_done(0, HASH)


def test_changing_the_adapter_undoes_done(store):
    _finish_cycle(store, 0)
    (store.stage_path(0, "adapter") / "adapter_model.safetensors").write_text("other weights")
    assert not store.is_done(0, HASH)


def test_lineage_missing_parent_done(store):
    _finish_cycle(store, 0)
    _finish_cycle(store, 1)
    assert store.is_done(1, HASH)
    (store.cycle_dir(0) / "DONE").unlink()
    assert not store.is_done(0, HASH)
    assert not store.is_done(1, HASH)


def test_lineage_redone_parent_invalidates_child(store):
    _finish_cycle(store, 0)
    _finish_cycle(store, 1)
    assert store.is_done(1, HASH)
    # Redo cycle 0 with a different adapter: cycle 0 is done again, cycle 1 is stale.
    store.save_adapter(0, FakeAdapterModel("retrained"))
    store.commit_cycle(0, {"cycle": 0}, HASH)
    assert store.is_done(0, HASH)
    assert not store.is_done(1, HASH)


def test_deleted_stage_file_undoes_done(store):
    _finish_cycle(store, 0)
    store.stage_path(0, "eval").unlink()
    assert store.is_done(0, HASH) is False


# ---- adapters -----------------------------------------------------------------------------------


def test_save_adapter_is_atomic_and_safe(store):
    model = FakeAdapterModel()
    assert not store.has(0, "adapter")
    target = store.save_adapter(0, model)
    assert target == store.stage_path(0, "adapter")
    assert store.has(0, "adapter")
    assert model.calls and model.calls[0][1] is True  # safe_serialization=True
    assert model.calls[0][0].name == ".adapter.tmp"
    assert not (store.cycle_dir(0) / ".adapter.tmp").exists()


def test_save_adapter_replaces_old_one_and_stale_tmp(store):
    store.save_adapter(0, FakeAdapterModel("first"))
    stale = store.cycle_dir(0) / ".adapter.tmp"
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    store.save_adapter(0, FakeAdapterModel("second"))
    adapter = store.stage_path(0, "adapter")
    assert (adapter / "adapter_model.safetensors").read_text() == "second"
    assert not stale.exists()


def test_adapter_without_config_does_not_count(store):
    d = store.stage_path(0, "adapter")
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_text("x")
    assert not store.has(0, "adapter")


# ---- scores -------------------------------------------------------------------------------------


def test_write_scores_header_order_and_formatting(store):
    rows = [
        {"cycle": 0, "trait_mean": 1 / 3, "n_answers": 12, "not_a_column": "ignored"},
        {"n_answers": 5, "cycle": 1, "coherence_mean": -1.23456},
    ]
    path = store.write_scores(rows)
    assert path == store.root / "scores.csv"
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == SCORES_COLUMNS
    parsed = list(csv.DictReader(lines))
    assert parsed[0]["cycle"] == "0"
    assert parsed[0]["trait_mean"] == "0.3333"
    assert parsed[0]["n_answers"] == "12"
    assert parsed[0]["coherence_mean"] == ""
    assert parsed[1]["coherence_mean"] == "-1.2346"
    assert "not_a_column" not in parsed[0]


def test_record_stage_accumulates(store):
    store.record_stage(0, "data", 1.23456, seed=42, n_train_examples=7)
    store.record_stage(0, "train", 2.0, seed=43)
    entry = store.manifest()["cycles"]["0"]
    assert entry["timings_s"] == {"data": 1.235, "train": 2.0}
    assert entry["seeds"] == {"data": 42, "train": 43}
    assert entry["n_train_examples"] == 7


def test_changed_input_data_is_refused_like_a_changed_config(store, cfg):
    store.open(cfg, inputs={"trait": "aaa", "prompt_pool": "bbb"})
    store.open(cfg, inputs={"trait": "aaa", "prompt_pool": "bbb"})  # same data: resumes
    with pytest.raises(UserError, match=r"different input data \(prompt_pool changed\)"):
        store.open(cfg, inputs={"trait": "aaa", "prompt_pool": "ccc"})
    store.open(cfg, inputs={"trait": "aaa", "prompt_pool": "ccc"}, force=True)
    assert store.manifest()["inputs"]["prompt_pool"] == "ccc"


def test_a_saved_adapter_lists_its_target_modules_sorted_so_identical_adapters_hash_alike(tmp_path, tokenizer):  # noqa: F811
    """PEFT writes target_modules from a set, in an order that depends on the process's string hashing:
    the store sorts it, so two processes that train the same adapter write the same bytes (and DONE hash)."""
    from peft import PeftModel
    from test_tiny_model import make_model

    from traitloop import training
    from traitloop.config import LoraConfig

    model = training.attach_adapter(make_model(tokenizer, seed=1), LoraConfig(r=4, alpha=8, target_modules=["v_proj", "q_proj"]))
    model.peft_config["default"].target_modules = ["v_proj", "q_proj", "o_proj"]  # as an unlucky set order would list them
    saved = RunStore(tmp_path / "run").save_adapter(0, model)
    assert json.loads((saved / "adapter_config.json").read_text())["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    reloaded = PeftModel.from_pretrained(make_model(tokenizer, seed=1), saved)  # and it still loads
    assert sorted(reloaded.peft_config["default"].target_modules) == ["o_proj", "q_proj", "v_proj"]


def test_the_commit_is_traitloops_own_never_an_enclosing_repositorys(tmp_path):
    """A checkout of traitloop gives its commit; the same file installed inside another repository (a
    project's .venv) gives "unknown", not that project's commit."""

    def commit_all(repo: Path) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
            subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    checkout = tmp_path / "traitloop" / "src" / "traitloop" / "store.py"
    installed = tmp_path / "project" / ".venv" / "lib" / "traitloop" / "store.py"
    for path in (checkout, installed):
        path.parent.mkdir(parents=True)
        path.write_text("# a copy\n")
    commit = commit_all(tmp_path / "traitloop")
    assert store_mod.git_commit(checkout) == commit
    commit_all(tmp_path / "project")
    assert store_mod.git_commit(installed) == "unknown"
    assert store_mod.git_commit(tmp_path / "nowhere" / "store.py") == "unknown"
