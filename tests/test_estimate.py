"""`traitloop run --dry-run` and traitloop.estimate: work counts and time scale as they should, and a dry
run prints a table and writes nothing. No model is loaded (throughput comes from a dict or a file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import run_cli

from traitloop import estimate as est
from traitloop.config import build_config

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT = {
    "model_ref": "embedded:smollm2-135m-instruct",
    "params": 134_515_008,
    "sample_tokens_per_s": {"16": 100.0, "24": 120.0},
    "answer_fill": 0.5,
    "train_tokens_per_s": 200.0,
    "judge_answers_per_s": 40.0,
    "judge_fit_s": 5.0,
    "coherence_tokens_per_s": 2000.0,
    "model_load_s": 0.5,
    "chars_per_token": 4.0,
    "template_tokens": 31,
    "source": "test",
    "measured_at": "2026-01-01 00:00",
}


def config(**overrides):
    data = {
        "name": "t",
        "out_dir": "/nonexistent-traitloop-test",
        "trait": "bliss",
        "n_seed": 20,
        "n_sampled": 10,
        "cycles": 2,
        "eval": {"questions": 4, "samples_per_question": 2},
    }
    return build_config({**data, **overrides})


def scaled(throughput: dict, factor: float) -> dict:
    rates = ("train_tokens_per_s", "judge_answers_per_s", "coherence_tokens_per_s")
    out = {**throughput, **{k: throughput[k] * factor for k in rates}}
    out["sample_tokens_per_s"] = {b: r * factor for b, r in throughput["sample_tokens_per_s"].items()}
    out["model_load_s"] = throughput["model_load_s"] / factor
    out["judge_fit_s"] = throughput["judge_fit_s"] / factor
    return out


def test_counts_follow_the_config():
    e = est.estimate(config(), THROUGHPUT)
    assert e["cycles"] == 3 and e["cycles_to_run"] == 3
    assert e["examples_per_cycle"] == [20, 10, 10]
    assert [c["sample_tokens"] for c in e["per_cycle"]] == [0, 10 * 256 * 0.5, 10 * 256 * 0.5]
    assert e["totals"]["eval_answers"] == 4 * 2 * 4  # three cycles + the base
    assert all(c["status"] == "planned" for c in e["per_cycle"])


def test_tokens_and_time_scale_with_cycles_and_n_sampled():
    small, more_cycles = est.estimate(config(cycles=2), THROUGHPUT), est.estimate(config(cycles=4), THROUGHPUT)
    assert more_cycles["totals"]["sample_tokens"] == 2 * small["totals"]["sample_tokens"]
    later = lambda e: sum(c["seconds"] for c in e["per_cycle"][1:])  # noqa: E731
    assert later(more_cycles) == pytest.approx(2 * later(small), rel=1e-3)

    double = est.estimate(config(n_sampled=20), THROUGHPUT)
    for a, b in zip(small["per_cycle"][1:], double["per_cycle"][1:]):
        assert b["sample_tokens"] == 2 * a["sample_tokens"]
        assert b["train_tokens"] == pytest.approx(2 * a["train_tokens"], abs=1)
        assert b["stages_s"]["sampling"] == pytest.approx(2 * a["stages_s"]["sampling"], rel=1e-2)
    assert double["per_cycle"][0] == small["per_cycle"][0]  # cycle 0 trains on the seed data either way


def test_time_is_inverse_to_throughput():
    slow, fast = est.estimate(config(), THROUGHPUT), est.estimate(config(), scaled(THROUGHPUT, 2.0))
    assert fast["totals"]["seconds"] == pytest.approx(slow["totals"]["seconds"] / 2, rel=1e-2)
    assert fast["totals"]["train_tokens"] == slow["totals"]["train_tokens"]


def test_batch_size_picks_the_nearest_measured_rate():
    at16 = est.estimate(config(sampling={"batch_size": 16}), THROUGHPUT)
    at24 = est.estimate(config(sampling={"batch_size": 24}), THROUGHPUT)
    assert at24["per_cycle"][1]["stages_s"]["sampling"] < at16["per_cycle"][1]["stages_s"]["sampling"]
    at64 = est.estimate(config(sampling={"batch_size": 64}), THROUGHPUT)
    assert any("batch 64 uses the rate measured at batch 24" in n for n in at64["notes"])


def test_a_batch_size_between_two_measured_ones_gets_the_interpolated_rate():
    rates = THROUGHPUT["sample_tokens_per_s"]
    at16, at24 = (est.estimate(config(sampling={"batch_size": b}), THROUGHPUT) for b in (16, 24))
    at20 = est.estimate(config(sampling={"batch_size": 20}), THROUGHPUT)
    sampling = lambda e: e["per_cycle"][1]["stages_s"]["sampling"]  # noqa: E731
    middle_rate = (rates["16"] + rates["24"]) / 2
    assert sampling(at20) == pytest.approx(sampling(at16) * rates["16"] / middle_rate, rel=1e-2)  # stages are rounded to 0.1 s
    assert sampling(at24) < sampling(at20) < sampling(at16)
    assert any("interpolated between batches 16 and 24" in n for n in at20["notes"])


def test_accumulate_and_mix_seed_add_examples():
    e = est.estimate(config(cycles=3, data={"policy": "accumulate", "mix_seed": 4}), THROUGHPUT)
    assert e["examples_per_cycle"] == [20, 14, 24, 34]


def test_unmeasured_settings_say_so():
    dpo = est.estimate(config(setting="dpo"), THROUGHPUT)
    assert any("SFT per-token rate" in n for n in dpo["notes"])
    assert dpo["per_cycle"][0]["sample_tokens"] > 0  # the base's rejected answers to the seed prompts
    sft = est.estimate(config(), THROUGHPUT)
    assert dpo["per_cycle"][1]["sample_tokens"] == 2 * sft["per_cycle"][1]["sample_tokens"]
    measured = est.estimate(config(setting="dpo"), {**THROUGHPUT, "dpo_train_tokens_per_s": 50.0})
    assert not any("SFT per-token rate" in n for n in measured["notes"])


def test_missing_figures_are_reported_as_assumed():
    partial = {k: v for k, v in THROUGHPUT.items() if k not in ("judge_answers_per_s", "judge_fit_s")}
    e = est.estimate(config(), partial)
    assert any("assumed: judge_answers_per_s, judge_fit_s" in n for n in e["notes"])


def test_missing_throughput_file_is_measured_once_and_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLOOP_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(est, "measure_throughput", lambda log=print: calls.append(1) or dict(THROUGHPUT))
    est.estimate(config())
    est.estimate(config())
    assert calls == [1]
    assert json.loads((tmp_path / "throughput.json").read_text())["train_tokens_per_s"] == 200.0


def test_param_count_from_safetensors_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model.safetensors"))
    assert est._count_params(str(tmp_path)) == 17


def test_cli_dry_run_prints_a_table_and_writes_nothing(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "throughput.json").write_text(json.dumps(THROUGHPUT))
    monkeypatch.setenv("TRAITLOOP_CACHE", str(cache))
    name = next(p for p in ("configs/sft-bliss-smollm2.yaml", "configs/sft-reset-bliss-smollm2.yaml") if (ROOT / p).is_file())
    out = tmp_path / "runs"
    code, text = run_cli(["run", str(ROOT / name), "--dry-run", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert "dry run" in text and "total (7 of 7 cycles)" in text
    assert not out.exists()
    assert sorted(p.name for p in cache.iterdir()) == ["throughput.json"]


def test_bf16_sampling_uses_the_measured_gain():
    with_gain = {**THROUGHPUT, "sample_bf16_speedup": 2.0}
    fp32 = est.estimate(config(generation={"dtype": "float32"}), with_gain)
    bf16 = est.estimate(config(generation={"dtype": "bfloat16"}), with_gain)
    assert bf16["per_cycle"][1]["stages_s"]["sampling"] == pytest.approx(fp32["per_cycle"][1]["stages_s"]["sampling"] / 2, rel=1e-2)
    assert bf16["per_cycle"][1]["sample_tokens"] == fp32["per_cycle"][1]["sample_tokens"]


def test_threads_option_sets_torch_threads_and_the_estimate_says_so(tmp_path, monkeypatch, capsys):
    import torch

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "throughput.json").write_text(json.dumps({**THROUGHPUT, "threads": 2}))
    monkeypatch.setenv("TRAITLOOP_CACHE", str(cache))
    name = next(p for p in ("configs/sft-bliss-smollm2.yaml", "configs/sft-reset-bliss-smollm2.yaml") if (ROOT / p).is_file())
    before = torch.get_num_threads()
    try:
        code, text = run_cli(["run", str(ROOT / name), "--dry-run", "--threads", "1"], monkeypatch, capsys)
        assert code == 0, text
        assert torch.get_num_threads() == 1
        assert "measured with 2 torch thread(s), this run would use 1" in " ".join(text.split())
        code, text = run_cli(["run", str(ROOT / name), "--dry-run", "--threads", "0"], monkeypatch, capsys)
        assert code == 2 and "--threads 0" in text
    finally:
        torch.set_num_threads(before)


def write_manifest(run_dir: Path, cycles: dict[str, dict[str, float]]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"cycles": {k: {"timings_s": t} for k, t in cycles.items()}}))
    return run_dir


def test_finished_runs_give_each_cycles_median_and_the_time_a_run_has_left(tmp_path):
    """A grid's finished runs time its runs to go: per cycle the median of the stage timings they recorded
    (totals and copied cycles left out), summed over the cycles a run has not done or will copy."""
    runs = [
        write_manifest(
            tmp_path / f"r{i}",
            {
                "-1": {"heldout": 10.0, "answers": 5.0 + i, "judge": 5.0},
                "0": {"data": 1.0, "train": 100.0 * (i + 1), "answers": 9.0, "cycle_total_this_process": 999.0},
                "1": {"data": 20.0, "train": 40.0 + i, "judge_retry": 500.0},
            },
        )
        for i in range(3)
    ]
    adopter = write_manifest(tmp_path / "copied", {"0": {"adopted": 0.0}, "1": {"data": 20.0, "train": 1000.0}})
    assert est.measured_cycle_seconds(runs[0]) == {-1: 20.0, 0: 110.0, 1: 60.0}
    assert est.measured_cycle_seconds(adopter) == {1: 1020.0}  # its cycle 0 cost nothing
    assert est.measured_stage_seconds(runs[0]) == {"heldout": 10.0, "answers": 14.0, "judge": 5.0, "data": 21.0, "train": 140.0}
    assert est.measured_stage_seconds(adopter) == {"data": 20.0, "train": 1000.0}
    profile = est.measured_profile([*runs, adopter])
    assert profile == {-1: 21.0, 0: 210.0, 1: 61.5}  # medians: (20, 21, 22); (110, 210, 310); (60, 61, 62, 1020)

    config = build_config({"name": "todo", "out_dir": str(tmp_path / "runs"), "cycles": 1, "eval": {"include_base": True}})
    assert est.remaining_from_profile(config, profile) == 21.0 + 210.0 + 61.5
    assert est.remaining_from_profile(config, profile, copies_cycle0=True) == 61.5  # cycle 0 and base copied
    longer = config.model_copy(update={"cycles": 2})
    assert est.remaining_from_profile(longer, profile) is None  # cycle 2 was never timed: use the throughput
