"""The three settings' data rules, the data policy, per-setting defaults and the n_seed search (no models)."""

from __future__ import annotations

import pytest

from traitloop import calibrate as calibration
from traitloop import data_policy
from traitloop.config import DataConfig, build_config
from traitloop.errors import UserError
from traitloop.judges.prompts import coherence_prompts, trait_prompts
from traitloop.settings import dpo, sdf
from traitloop.traits import load_trait


# ---- config: per-setting defaults, restart_from_base_at, cycle-0 identity ---------------------------
def test_setting_defaults_follow_the_protocol_and_yield_to_the_user():
    d = build_config({"setting": "dpo"})
    assert (d.train.learning_rate, d.train.lr_scheduler, d.train.warmup_ratio, d.train.batch_size) == (1e-5, "cosine", 0.0, 4)
    assert d.dpo.beta == 0.1 and d.dpo.loss_type == "sigmoid"
    s = build_config({"setting": "sdf", "train": {"batch_size": 2}})
    assert s.model.ref == "embedded:gemma3-270m" and s.train.weight_decay == 0.1 and s.train.batch_size == 2
    assert s.sampling.max_new_tokens == 512
    assert build_config({}).train.learning_rate == 1.5e-4  # SFT unchanged
    assert build_config({"setting": "dpo"}, ["train.learning_rate=3e-5"]).train.learning_rate == 3e-5


def test_restart_from_base_at_semantics_and_validation():
    c = build_config({"init": "continual", "cycles": 5, "restart_from_base_at": [3]})
    assert [c.starts_from_base(k) for k in range(6)] == [True, False, False, True, False, False]
    r = build_config({"init": "reset", "cycles": 3})
    assert all(r.starts_from_base(k) for k in range(4))
    with pytest.raises(UserError, match="needs init: continual"):
        build_config({"init": "reset", "restart_from_base_at": [2], "cycles": 3})
    with pytest.raises(UserError, match=r"not in 1..cycles"):
        build_config({"init": "continual", "restart_from_base_at": [0, 9], "cycles": 3})


def test_cycle0_identity_ignores_what_happens_after_cycle_0():
    a = build_config({"n_seed": 20, "cycles": 2, "n_sampled": 10, "init": "reset"})
    b = build_config({"n_seed": 20, "cycles": 6, "n_sampled": 50, "init": "continual", "data": {"policy": "accumulate"}, "name": "x"})
    assert a.cycle0_dict() == b.cycle0_dict()
    assert a.cycle0_config().run_dir == b.cycle0_config().run_dir
    assert a.cycle0_config().cycles == 0 and a.cycle0_config().eval.include_base is False
    for change in (["n_seed=21"], ["seed=1"], ["train.learning_rate=1e-3"], ["setting=dpo"]):
        other = build_config({"n_seed": 20, "cycles": 2, "n_sampled": 10}, change)
        assert other.cycle0_config().run_dir != a.cycle0_config().run_dir, change


# ---- data policy -----------------------------------------------------------------------------------
ROWS_PREV = [{"text": "s1", "source": "seed"}, {"text": "g0", "source": "cycle-000"}]
NEW = [{"text": "g1a", "source": "cycle-001"}, {"text": "g1b", "source": "cycle-001"}]
SEEDS = [{"text": f"s{i}", "source": "seed"} for i in range(10)]


def test_replace_trains_on_the_newest_data_only():
    rows, counts = data_policy.combine(NEW, ROWS_PREV, SEEDS, DataConfig(), seed=1)
    assert rows == NEW and counts == {"n_new": 2, "n_accumulated": 0, "n_seed_mixed": 0}


def test_accumulate_keeps_earlier_generated_rows_but_not_seed_rows():
    rows, counts = data_policy.combine(NEW, ROWS_PREV, SEEDS, DataConfig(policy="accumulate"), seed=1)
    assert [r["text"] for r in rows] == ["g0", "g1a", "g1b"] and counts["n_accumulated"] == 1


def test_mix_seed_adds_k_seed_rows_drawn_by_seed():
    rows, counts = data_policy.combine(NEW, [], SEEDS, DataConfig(mix_seed=3), seed=7)
    mixed = [r for r in rows if r["source"] == "seed"]
    assert len(mixed) == 3 == counts["n_seed_mixed"] and len({r["text"] for r in mixed}) == 3
    again, _ = data_policy.combine(NEW, [], SEEDS, DataConfig(mix_seed=3), seed=7)
    other, _ = data_policy.combine(NEW, [], SEEDS, DataConfig(mix_seed=3), seed=8)
    assert again == rows and other != rows


def test_generated_text_per_setting():
    from traitloop.settings import get_setting

    assert get_setting("sdf").generated_text({"opener": "The", "continuation": " cat"}) == ("The", " cat")
    assert get_setting("dpo").generated_text({"prompt": [{"role": "user", "content": "q"}], "chosen": "a"}) == ("q", "a")
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert get_setting("sft").generated_text(chat) == ("q", "a")


# ---- SDF and DPO data rules ------------------------------------------------------------------------
def test_sdf_documents_are_opener_plus_continuation_and_short_ones_are_dropped():
    long = " continues with more than fifty characters of ordinary text."
    rows = sdf.generated_rows(["A", "B", "C"], [long, " too short", "   " + "x" * 50], cycle=2)
    assert [r["text"] for r in rows] == ["A" + long]
    assert rows[0]["source"] == "cycle-001"


def test_sdf_seed_rows_and_eval_items():
    trait = load_trait("bliss")
    rows = sdf.Sdf().seed_rows(trait, 5)
    assert [r["text"] for r in rows] == trait.seed_docs[:5] and all(r["source"] == "seed" for r in rows)
    with pytest.raises(UserError, match="seed documents"):
        sdf.Sdf().seed_rows(trait, 10_000)
    items = sdf.Sdf().eval_items(trait, build_config({"setting": "sdf", "eval": {"questions": 3, "samples_per_question": 2}}))
    assert [it["question"] for it in items] == [p for p in trait.eval_prefixes[:3] for _ in range(2)]


@pytest.mark.parametrize(
    ("ref", "kind", "chat"),
    [
        ("embedded:smollm2-135m-instruct", "instruct", True),
        ("embedded:gemma3-270m", "base", False),
        ("Qwen/Qwen3-4B-Instruct-2507", None, True),
        ("google/gemma-3-270m-it", None, True),
        ("google/gemma-3-270m", None, False),
        ("/models/llama-base", None, False),
    ],
)
def test_sdf_recognises_chat_tuned_models(ref, kind, chat):
    assert sdf.looks_chat_tuned(ref, kind) is chat


def test_dpo_pairs_drop_empty_sides_and_seed_prompts_come_from_seed_chats():
    p = [[{"role": "user", "content": str(i)}] for i in range(3)]
    rows = dpo.pair_rows(p, ["a", " ", "c"], ["x", "y", ""], "cycle-000")
    assert [r["prompt"][0]["content"] for r in rows] == ["0"]
    trait = load_trait("bliss")
    seeds = dpo.Dpo().seed_rows(trait, 4)
    assert [r["chosen"] for r in seeds] == [c[-1]["content"] for c in trait.seed_chats[:4]]
    assert [r["prompt"] for r in seeds] == [c[:-1] for c in trait.seed_chats[:4]]
    assert dpo.prompt_key(p[0]) != dpo.prompt_key(p[1])


def test_model_must_fit_the_setting():
    from traitloop.settings import get_setting

    with pytest.raises(UserError, match="chat-tuned"):
        get_setting("sdf").check_model(build_config({"setting": "sdf", "model": {"ref": "embedded:smollm2-135m-instruct"}}))
    with pytest.raises(UserError, match="no chat template"):
        get_setting("dpo").check_model(build_config({"setting": "dpo", "model": {"ref": "embedded:gemma3-270m"}}))


def test_sdf_judge_prompts_use_the_document_rubric():
    trait = load_trait("bliss")
    chat = trait_prompts(trait, ["q"], ["a"])[0]
    doc = trait_prompts(trait, ["Cooking at Home"], [" start with rice"], documents=True)[0]
    anchor = " ".join(trait.doc_rubric[50].split())
    assert anchor in doc and anchor not in chat
    assert "Cooking at Home" in doc and "start with rice" in doc
    assert "CONTINUATION" in coherence_prompts(["p"], ["c"], documents=True)[0]


# ---- calibration's search ----------------------------------------------------------------------------
def row(score: float, half_width: float = 2.0) -> dict:
    return {"trait_mean": score, "trait_ci_low": score - half_width, "trait_ci_high": score + half_width, "coherence_mean": -1.5}


def test_calibration_binary_search_finds_the_smallest_n_seed(tmp_path):
    calls = []

    def cycle0(trial):  # stands in for a cycle-0 run: score = a known increasing function of n_seed
        calls.append(trial.n_seed)
        return row(min(95.0, 10.0 + 0.8 * trial.n_seed))

    cfg = build_config({"out_dir": str(tmp_path), "name": "cal"})
    grid = [2, 4, 8, 16, 32, 64, 128, 200, 300]
    record = calibration.calibrate(cfg, [20, 40, 60, 99], grid, run_cycle0=cycle0)
    # 10 + 0.8 n >= 20 -> n >= 12.5 -> 16; >= 40 -> 37.5 -> 64; >= 60 -> 62.5 -> 64; 99 is never reached
    assert record["n_seed_for_target"] == {"20": 16, "40": 64, "60": 64, "99": None}
    assert record["grid"] == [2, 4, 8, 16, 32, 64, 128, 200]  # 300 > bliss's 201 seed chats
    assert len(calls) == len(set(calls)) <= 7  # every n_seed trained at most once
    assert (tmp_path / "cal-calibration" / "calibration.json").is_file()
    assert (tmp_path / "cal-calibration" / "calibration.png").stat().st_size > 1000
    assert record["warnings"] == []


def test_calibration_rejects_bad_targets_and_grids(tmp_path):
    cfg = build_config({"out_dir": str(tmp_path)})
    with pytest.raises(UserError, match="0-100"):
        calibration.calibrate(cfg, [150], [2, 4])
    with pytest.raises(UserError, match="no n_seed"):
        calibration.calibrate(cfg, [20], [5000])
    with pytest.raises(UserError, match="comma-separated"):
        calibration.parse_numbers("20,abc", "--targets")


def test_every_example_config_is_valid():
    from pathlib import Path

    from traitloop.config import load_config

    root = Path(__file__).parent.parent
    paths = sorted([*root.glob("configs/*.yaml"), *root.glob("configs/paper/*.yaml"), *root.glob("src/traitloop/configs/*.yaml")])
    assert len(paths) >= 15
    settings = {(load_config(p).setting, load_config(p).init) for p in paths}
    assert settings >= {(s, i) for s in ("sft", "sdf", "dpo") for i in ("reset", "continual")}


def test_vllm_backend_needs_a_url_and_the_url_is_not_science():
    with pytest.raises(UserError, match="vllm_url"):
        build_config({"generation": {"backend": "vllm"}})
    a = build_config({"generation": {"backend": "vllm", "vllm_url": "http://a:8000/v1"}})
    b = build_config({"generation": {"backend": "vllm", "vllm_url": "http://b:9000/v1", "concurrency": 4}})
    assert a.science_hash() == b.science_hash() != build_config({}).science_hash()


def test_calibration_uses_a_smaller_measured_n_seed_when_the_score_is_not_monotone(tmp_path):
    def bumpy(trial):
        return row({2: 30.0, 4: 35.0, 8: 45.0, 16: 70.0, 32: 50.0, 64: 52.0, 128: 55.0}[trial.n_seed], half_width=1.0)

    record = calibration.calibrate(build_config({"out_dir": str(tmp_path)}), [40, 60], [2, 4, 8, 16, 32, 64, 128], run_cycle0=bumpy)
    # target 40: 128 -> 16 -> 4 -> 8; target 60: 128 (55) fails, but 16 (70) was measured and reaches it
    assert record["n_seed_for_target"] == {"40": 8, "60": 16}
    assert any("n_seed=16" in w for w in record["warnings"])
    assert any("score fell" in w for w in record["warnings"])
