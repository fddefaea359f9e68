"""The cycle engine for every setting and init mode, end to end, on a tiny random Llama saved to disk.

Seconds per run: the model is random (its answers are noise), so these tests check the machinery, not
the science: which model each cycle starts from, what data each cycle trains on (SDF documents, DPO
pairs with cached base answers, accumulate / mix_seed / coherence filter), resume and cycle-0 reuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.config import GenerationConfig, build_config
from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl
from traitloop.loop import Experiment
from traitloop.progress import Reporter


class LengthJudge:
    """A stand-in trait judge (score = answer length, capped at 100): these tests are about the cycle
    machinery, and the probe's fit would be most of their time. The real probe is tested elsewhere."""

    name = "length"

    def info(self):
        return {"judge": self.name}

    def score(self, questions, answers):
        from traitloop.judges.base import Score

        return [Score(float(min(100, len(a))), self.name) for a in answers]


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    model = make_model(tokenizer, seed=3)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def config(tiny_dir, tmp_path, **extra):
    base = {
        "name": "t",
        "out_dir": str(tmp_path / "runs"),
        "trait": "bliss",
        "n_seed": 4,
        "n_sampled": 4,
        "cycles": 2,
        "model": {"ref": str(tiny_dir)},
        "sampling": {"max_new_tokens": 40, "batch_size": 4},
        "train": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-3},
        "eval": {"questions": 2, "samples_per_question": 1, "max_new_tokens": 12, "batch_size": 4, "include_base": False},
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return build_config(base)


def experiment(cfg, **collaborators):
    """The engine with the stand-in judge (and any other collaborator given)."""
    collaborators.setdefault("judge", LengthJudge())
    return Experiment(cfg, reporter=Reporter(enabled=False), **collaborators)


def run(cfg, **collaborators):
    engine = experiment(cfg, **collaborators)
    rows = engine.run()
    assert_base_untouched(engine.base, cfg.model.ref)
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    return rows, manifest["cycles"]


def assert_base_untouched(base, model_dir) -> None:
    """Every cycle trains its adapter on the run's one frozen base (no second copy): afterwards the base
    must hold no LoRA layers, be in eval mode, and have exactly the weights on disk, or coherence
    scoring and the next cycle would see a changed model."""
    from safetensors.torch import load_file

    names = [name for name, _ in base.named_modules()]
    assert not any("lora" in n for n in names), [n for n in names if "lora" in n][:3]
    assert not base.training
    on_disk = load_file(str(next(Path(model_dir).glob("*.safetensors"))))
    state = base.state_dict()
    for name, tensor in on_disk.items():
        assert torch.equal(state[name], tensor), name
    # and it computes what a fresh load computes (TRL patches the forward of the model it trains)
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.inference_mode():
        assert torch.equal(base(input_ids=ids).logits, fresh(input_ids=ids).logits)


def data(cfg, k):
    return read_jsonl(cfg.run_dir / f"cycle-{k:03d}" / "data.jsonl")


@pytest.mark.parametrize("setting", ["sft", "sdf", "dpo"])
@pytest.mark.parametrize("init", ["reset", "continual"])
def test_every_setting_and_init_runs_and_starts_each_cycle_from_the_right_model(tiny_dir, tmp_path, setting, init):
    cfg = config(tiny_dir, tmp_path, setting=setting, init=init)
    rows, cycles = run(cfg)
    assert [r["cycle"] for r in rows] == [0, 1, 2]
    expected = ["base", "base", "base"] if init == "reset" else ["base", "cycle 0", "cycle 1"]
    assert [cycles[str(k)]["starts_from"] for k in range(3)] == expected
    assert (cfg.run_dir / "scores.csv").is_file()
    validity = json.loads((cfg.run_dir / "manifest.json").read_text())["judge"]["validity"]
    assert validity["kind"] == ("doc" if setting == "sdf" else "chat")  # the kind of text the run's judge reads
    assert validity["valid"] is None and "probe judge only" in validity["unmeasured"]  # the stand-in is no probe
    if setting == "sdf":
        seed = data(cfg, 0)
        assert all(r["source"] == "seed" and r["text"] for r in seed)
        for r in data(cfg, 1):
            assert r["text"] == r["opener"] + r["continuation"] and len(r["continuation"].strip()) > 50
        from traitloop.traits import load_trait

        answers = read_jsonl(cfg.run_dir / "cycle-001" / "answers.jsonl")
        assert [a["question"] for a in answers] == load_trait("bliss").eval_prefixes[:2]  # documents are continued
    if setting == "dpo":
        rows0 = data(cfg, 0)
        assert all(r["chosen"] and r["rejected"] and r["source"] == "seed" for r in rows0)
        cached = read_jsonl(cfg.run_dir / "base" / "rejected_answers.jsonl")
        assert len(cached) == 4 + 4 + 4  # the seed prompts and each cycle's fresh prompts, each sampled once
        assert all(r["source"] == f"cycle-{k - 1:03d}" for k in (1, 2) for r in data(cfg, k))


def test_restart_from_base_at(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path, setting="dpo", init="continual", cycles=3, restart_from_base_at=[2])
    _, cycles = run(cfg)
    assert [cycles[str(k)]["starts_from"] for k in range(4)] == ["base", "cycle 0", "base", "cycle 2"]


def test_accumulate_and_mix_seed(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path, setting="sft", data={"policy": "accumulate", "mix_seed": 2})
    _, cycles = run(cfg)
    sources = [[r["source"] for r in data(cfg, k)] for k in (1, 2)]
    assert sorted(sources[0]) == ["cycle-000"] * 4 + ["seed"] * 2
    assert sorted(sources[1]) == ["cycle-000"] * 4 + ["cycle-001"] * 4 + ["seed"] * 2  # seed rows are not carried
    assert cycles["2"]["n_accumulated"] == 4 and cycles["2"]["n_seed_mixed"] == 2 and cycles["2"]["n_new"] == 4


def test_coherence_filter_drops_and_reports(tiny_dir, tmp_path):
    # Find the coherence scores the tiny model's samples get, then set a threshold between them.
    probe = config(tiny_dir, tmp_path / "probe", setting="sft", cycles=1, data={"min_coherence": -1e9})
    _, cycles = run(probe)
    scores = sorted(r["coherence"] for r in data(probe, 1))
    assert cycles["1"]["n_dropped_coherence"] == 0 and len(scores) == 4
    threshold = (scores[1] + scores[2]) / 2
    cfg = config(tiny_dir, tmp_path / "filtered", setting="sft", cycles=1, data={"min_coherence": threshold})
    _, cycles = run(cfg)
    kept = data(cfg, 1)
    assert cycles["1"]["n_dropped_coherence"] == 2 and len(kept) == 2
    assert all(r["coherence"] >= threshold for r in kept)
    everything = config(tiny_dir, tmp_path / "all", setting="sft", cycles=1, data={"min_coherence": 0.0})
    with pytest.raises(UserError, match="coherence filter"):
        run(everything)
    assert (everything.run_dir / "cycle-000" / "DONE").is_file()  # nothing computed is lost


def test_a_calibrated_cycle_0_is_reused_by_a_later_run(tiny_dir, tmp_path):
    from traitloop.calibrate import calibrate

    cfg = config(tiny_dir, tmp_path, setting="sft", cycles=1)
    calibrate(cfg, [0.0], [2, 4], run_cycle0=lambda trial: experiment(trial).run()[0])
    trial = cfg.cycle0_config()
    assert (trial.run_dir / "cycle-000" / "DONE").is_file()
    _, cycles = run(cfg)
    assert cycles["0"]["adopted_from"] == str(trial.run_dir)
    same = (trial.run_dir / "cycle-000" / "eval.jsonl").read_bytes()
    assert (cfg.run_dir / "cycle-000" / "eval.jsonl").read_bytes() == same


def test_vllm_backend_generates_with_the_right_adapter(tiny_dir, tmp_path, monkeypatch):
    """generation.backend=vllm: data comes from cycle k-1's adapter, eval answers from cycle k's, DPO's
    rejected side and the base eval from the served base (adapter None). The server is faked here;
    tests/test_vllm_generation.py runs the real one."""
    import traitloop.generation.vllm

    calls = []

    class FakeSampler:
        def __init__(self, url, concurrency):
            assert url == "http://vllm.test/v1" and concurrency == GenerationConfig().concurrency

        def base_model(self):
            return "tiny"

        def generate(self, adapter, prompts, **params):
            calls.append((None if adapter is None else adapter.parent.name, len(prompts), params["temperature"]))
            return [" a generated answer that is comfortably longer than fifty characters, to be kept"] * len(prompts)

    monkeypatch.setattr(traitloop.generation.vllm, "VllmSampler", FakeSampler)
    cfg = config(
        tiny_dir,
        tmp_path,
        setting="dpo",
        cycles=1,
        generation={"backend": "vllm", "vllm_url": "http://vllm.test/v1"},
        eval={"include_base": True},
    )
    run(cfg)
    assert calls == [
        (None, 2, 0.7),  # base eval
        (None, 4, 0.8),  # cycle 0: the base's rejected answers to the seed prompts
        ("cycle-000", 2, 0.7),  # cycle 0 eval
        ("cycle-000", 4, 0.8),  # cycle 1: chosen answers by the cycle 0 model
        (None, 4, 0.8),  # cycle 1: rejected answers by the base
        ("cycle-001", 2, 0.7),  # cycle 1 eval
    ]


@pytest.mark.parametrize("setting", ["sft", "dpo"])
def test_a_cycle_resumed_after_training_answers_exactly_as_the_uninterrupted_run(tiny_dir, tmp_path, setting):
    """The model that answers the eval questions right after training must be the trained adapter on
    the base: the same answers as a run that stopped after saving the adapter and resumed (which
    rebuilds the model from disk). A sampling model that missed the adapter fails this."""
    cfg = config(tiny_dir, tmp_path, setting=setting, cycles=1, init="continual")
    run(cfg)
    cycle = cfg.run_dir / "cycle-001"
    answers = read_jsonl(cycle / "answers.jsonl")
    for name in ("answers.jsonl", "eval.jsonl", "metrics.json", "DONE"):
        (cycle / name).unlink(missing_ok=True)
    run(cfg)
    assert read_jsonl(cycle / "answers.jsonl") == answers


@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_a_run_trains_and_scores_under_its_matmul_precision_and_puts_the_old_one_back(tiny_dir, tmp_path, monkeypatch, precision):
    from traitloop.judges.coherence import LoglikCoherence
    from traitloop.settings.sft import Sft

    seen = {"train": set(), "coherence": set()}
    loglik = LoglikCoherence.loglik

    class RecordingSft(Sft):  # a collaborator passed in: the SFT setting, noting the precision it trains under
        def train(self, *args, **kwargs):
            seen["train"].add(torch.get_float32_matmul_precision())
            return super().train(*args, **kwargs)

    def recording_loglik(self, *args, **kwargs):
        seen["coherence"].add(torch.get_float32_matmul_precision())
        return loglik(self, *args, **kwargs)

    monkeypatch.setattr(LoglikCoherence, "loglik", recording_loglik)
    torch.set_float32_matmul_precision("high")  # what the caller had: must survive the run
    try:
        run(config(tiny_dir, tmp_path, cycles=1, model={"matmul_precision": precision}), setting=RecordingSft())
        assert seen == {"train": {precision}, "coherence": {precision}}
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_matmul_precision_is_part_of_the_science_hash(tiny_dir, tmp_path):
    """It changes results (slightly), so a run resumed with another precision must not reuse cycles."""
    a = config(tiny_dir, tmp_path, model={"matmul_precision": "highest"})
    b = config(tiny_dir, tmp_path, model={"matmul_precision": "medium"})
    assert a.science_hash() != b.science_hash()


def test_a_published_cycle_0_and_base_evaluation_are_adopted_by_the_other_init(tiny_dir, tmp_path):
    """publish_cycle0 (traitloop reproduce's grids): the reset run copies its finished cycle 0 and its base
    evaluation into out_dir/cycle0-cache; the continual run of the same seed adopts both instead of
    computing them, and ends with exactly the scores it computes alone. Another seed adopts nothing, and
    a run whose cycle 0 came from another seed (cycle0_from) publishes nothing."""
    shared = {"setting": "sft", "cycles": 1, "eval": {"include_base": True}, "publish_cycle0": True}
    reset = config(tiny_dir, tmp_path, init="reset", name="reset", **shared)
    _, cycles = run(reset)
    assert "adopted_from" not in cycles["0"]
    cache = reset.cycle0_config().run_dir
    assert cache.parent == tmp_path / "runs" / "cycle0-cache"
    assert (cache / "cycle-000" / "DONE").is_file() and (cache / "base" / "metrics.json").is_file()
    assert not list(cache.parent.glob(".*publish*"))  # built aside, renamed into place
    shutil.rmtree(cache)
    run(reset)  # every cycle done: a rerun (or a resume after a crash before the copy) publishes it too
    assert (cache / "cycle-000" / "DONE").is_file() and (cache / "base" / "metrics.json").is_file()

    continual = config(tiny_dir, tmp_path, init="continual", name="continual", **shared)
    rows, cycles = run(continual)
    assert cycles["0"]["adopted_from"] == str(cache)
    assert "-1" not in cycles  # the base evaluation was copied, not run
    for part in ("base/answers.jsonl", "base/eval.jsonl", "base/metrics.json", "cycle-000/eval.jsonl", "cycle-000/data.jsonl"):
        assert (continual.run_dir / part).read_bytes() == (reset.run_dir / part).read_bytes(), part

    alone = config(tiny_dir, tmp_path / "alone", init="continual", name="continual", **{**shared, "publish_cycle0": False})
    alone_rows, alone_cycles = run(alone)
    assert "adopted_from" not in alone_cycles["0"] and "-1" in alone_cycles  # computed everything itself
    assert (continual.run_dir / "scores.csv").read_text() == (alone.run_dir / "scores.csv").read_text()
    assert (continual.run_dir / "base" / "metrics.json").read_text() == (alone.run_dir / "base" / "metrics.json").read_text()

    other_seed = config(tiny_dir, tmp_path, init="continual", name="seed1", seed=1, **shared)
    _, cycles = run(other_seed)
    assert "adopted_from" not in cycles["0"] and "-1" in cycles
    copied = config(tiny_dir, tmp_path, init="reset", name="seed2", seed=2, cycle0_from=str(reset.run_dir), **shared)
    _, cycles = run(copied)
    assert cycles["0"]["adopted_from"] == str(reset.run_dir)
    assert not copied.cycle0_config().run_dir.exists()  # seed 0's cycle 0 is not offered as seed 2's
