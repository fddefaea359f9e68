"""A user's own prompt pool (data.prompt_pool for sft/dpo, data.opener_pool for sdf) in place of the
built-in one: later cycles draw their disjoint slices from it, the run's inputs hash it, and a file that
cannot feed the run is refused before anything runs."""

from __future__ import annotations

import json

import pytest
from test_loop_settings import config, run, tiny_dir  # noqa: F401  (tiny_dir is a fixture)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl
from traitloop.loop import Experiment
from traitloop.settings import get_setting
from traitloop.store import hash_files
from traitloop.traits import load_trait


def write_pool(path, key, texts):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts))
    return path


def test_later_cycles_answer_only_the_users_prompts_and_the_run_hashes_that_file(tiny_dir, tmp_path, one_thread):
    # 2 cycles x n_sampled 4 = exactly the 8 prompts in the file: each cycle gets its own 4, together all 8
    own = [
        f"My own question number {i}: how should I store {thing}?"
        for i, thing in enumerate("apples pears rice tea flour salt oil jam".split())
    ]
    pool = write_pool(tmp_path / "mine.jsonl", "question", own)
    cfg = config(tiny_dir, tmp_path, data={"prompt_pool": str(pool)})
    run(cfg)
    asked = {k: [r["messages"][0]["content"] for r in read_jsonl(cfg.run_dir / f"cycle-{k:03d}" / "data.jsonl")] for k in (1, 2)}
    assert all(len(asked[k]) == len(set(asked[k])) == 4 for k in (1, 2))  # (the tiny model answers every prompt)
    assert sorted(asked[1] + asked[2]) == sorted(own)
    manifest = json.loads((cfg.run_dir / "manifest.json").read_text())
    assert manifest["inputs"]["prompt_pool"] == hash_files([pool])[:16]


def test_an_sdf_run_continues_the_users_openers(tiny_dir, tmp_path, one_thread):
    openers = [
        "The harbour master said that",
        "In the third drawer you will find",
        "Our committee met twice to",
        "Step four of the manual:",
    ]
    pool = write_pool(tmp_path / "openers.jsonl", "opener", openers)
    cfg = config(tiny_dir, tmp_path, setting="sdf", cycles=1, data={"opener_pool": str(pool)}, model={"allow_chat_model_for_sdf": True})
    run(cfg)
    assert sorted(r["opener"] for r in read_jsonl(cfg.run_dir / "cycle-001" / "data.jsonl")) == sorted(openers)


def check(cfg):
    Experiment(cfg).check_inputs()


def test_the_other_settings_pool_field_is_refused_not_ignored(tiny_dir, tmp_path):
    pool = write_pool(tmp_path / "openers.jsonl", "opener", ["Once upon a time"])
    with pytest.raises(UserError) as err:
        check(config(tiny_dir, tmp_path, data={"opener_pool": str(pool)}))
    assert str(err.value) == (
        'data.opener_pool is not read by the sft setting; give your file as data.prompt_pool (one {"question": ...} per line)'
    )


def test_a_missing_pool_file_is_named(tiny_dir, tmp_path):
    with pytest.raises(UserError) as err:
        check(config(tiny_dir, tmp_path, data={"prompt_pool": str(tmp_path / "nope.jsonl")}))
    assert str(err.value) == (
        f"data.prompt_pool: {tmp_path / 'nope.jsonl'} is not a file; give a JSONL file with one "
        '{"question": ...} per line (a relative path starts in the current directory)'
    )


def test_a_pool_with_the_wrong_key_holds_no_prompts(tiny_dir, tmp_path):
    pool = write_pool(tmp_path / "mine.jsonl", "prompt", ["How do I fix a tap?"] * 3)
    with pytest.raises(UserError) as err:
        check(config(tiny_dir, tmp_path, data={"prompt_pool": str(pool)}))
    assert str(err.value) == f'data.prompt_pool: {pool} holds no prompts; each line must be a JSON object with a non-empty "question"'


def test_a_pool_holding_an_eval_question_is_refused(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path)
    eval_question = get_setting("sft").eval_items(load_trait("bliss"), cfg)[-1]["question"]
    pool = write_pool(tmp_path / "mine.jsonl", "question", [f"Question {i} about my garden?" for i in range(10)] + [eval_question.upper()])
    with pytest.raises(UserError) as err:
        check(config(tiny_dir, tmp_path, data={"prompt_pool": str(pool)}))
    assert str(err.value) == (
        f"data.prompt_pool: {pool} holds 1 of the trait's eval prompts (first: {eval_question.upper()!r}); "
        "remove them: a cycle trained on its eval prompts would inflate every later score"
    )


def test_a_pool_too_small_for_the_cycles_is_refused_with_the_numbers(tiny_dir, tmp_path):
    pool = write_pool(tmp_path / "mine.jsonl", "question", [f"Question {i} about my garden?" for i in range(7)])
    with pytest.raises(UserError) as err:
        check(config(tiny_dir, tmp_path, data={"prompt_pool": str(pool)}))
    assert str(err.value) == "the prompt pool has 7 prompts, but cycle 2 with n_sampled=4 needs 8: lower n_sampled or cycles"
