"""Judging hygiene (#15): a judgement that failed is asked again on resume and only it; a cycle the
judge could not fully score stays unfinished with every reading kept; diversity across answers and
the under-90%-scored flag are computed exactly."""

from __future__ import annotations

import json
import math

import pytest
from test_loop_settings import config, experiment, tiny_dir  # noqa: F401  (fixtures and helpers)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl
from traitloop.judges.base import Score
from traitloop.judges.coherence import distinct2_across, self_similarity
from traitloop.report_data import scored_warning


class FlakyJudge:
    """Scores = answer length; while `down`, every second answer's request "fails after its retries"."""

    name = "flaky"

    def __init__(self):
        self.down = True
        self.asked: list[str] = []

    def info(self):
        return {"judge": self.name}

    def score(self, questions, answers):
        out = []
        for i, a in enumerate(answers):
            self.asked.append(a)
            if self.down and i % 2 == 1:
                out.append(Score(None, self.name, "failed after 3 attempts: 500 server error", failed=True))
            else:
                out.append(Score(float(min(100, len(a))), self.name))
        return out


def test_failed_judgements_stop_the_cycle_keep_every_reading_and_are_the_only_ones_asked_again(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path, cycles=0, eval={"questions": 2, "samples_per_question": 2})
    judge = FlakyJudge()
    with pytest.raises(UserError, match=r"cycle 0: the judge could not be asked about 2 answer\(s\) after its retries"):
        experiment(cfg, judge=judge).run()
    eval_path = cfg.run_dir / "cycle-000" / "eval.jsonl"
    first = read_jsonl(eval_path)
    assert [r["trait"] is None for r in first] == [False, True, False, True]
    assert all(r["trait_failed"] and r["trait_missing"].startswith("failed after") for r in first[1::2])
    assert not (cfg.run_dir / "cycle-000" / "DONE").exists()  # the cycle stays unfinished

    judge.down, judge.asked = False, []
    rows = experiment(cfg, judge=judge).run()
    assert judge.asked == [first[1]["answer"], first[3]["answer"]]  # only the failed ones, nothing else re-asked
    final = read_jsonl(eval_path)
    assert [r["trait"] for r in final] == [float(min(100, len(r["answer"]))) for r in final]
    assert not any("trait_failed" in r or "trait_missing" in r for r in final)
    assert [final[0], final[2]] == [first[0], first[2]]  # readings already taken are kept as they were
    assert rows[0]["n_trait_scored"] == 4 and (cfg.run_dir / "cycle-000" / "DONE").is_file()


def test_diversity_across_answers():
    # bigrams (a,b) (b,c) (a,b) (b,d): 3 distinct of 4
    assert distinct2_across(["a b c", "a b d"]) == 0.75
    assert distinct2_across(["one"]) == 0.0
    # question 1: identical answers (1.0); question 2: nothing shared (0.0); question 3: one answer, not counted
    assert self_similarity([["a b c", "A b C"], ["x y", "z w"], ["solo answer"]]) == 0.5
    assert math.isnan(self_similarity([["only one"]]))


@pytest.mark.parametrize(
    ("answers", "scored", "warning"), [(36, 36, ""), (36, 33, ""), (36, 32, "only 32 of 36 scored"), (10, 0, "only 0 of 10 scored")]
)
def test_a_cycle_with_under_90_percent_scored_is_flagged(answers, scored, warning):
    assert scored_warning({"n_answers": answers, "n_trait_scored": scored}) == warning


def test_heldout_perplexity_is_the_cycle_models_perplexity_on_the_traits_graded_texts(tiny_dir, tmp_path):
    """Recomputed here by a plain forward pass of the cycle-0 model (base + adapter) over each held-out
    text after its question: the value in heldout.json, metrics.json and scores.csv must match."""
    import csv

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from traitloop.judges.validity import read_validation
    from traitloop.traits import load_trait

    cfg = config(tiny_dir, tmp_path, cycles=0, eval={"include_base": True})
    experiment(cfg).run()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(cfg.run_dir / "cycle-000" / "adapter"))
    model = model.merge_and_unload().eval()
    rows = read_validation(load_trait("bliss").folder)

    def ppl(levels):
        means = []
        for r in (r for r in rows if r["kind"] == "chat" and r["level"] in levels):
            prompt = tok(
                tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            ).input_ids
            answer = tok(r["text"], add_special_tokens=False).input_ids[:256]
            with torch.no_grad():
                logits = model(torch.tensor([prompt + answer])).logits[0]
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1).gather(1, torch.tensor(answer)[:, None])
            means.append(logprobs.mean().item())
        return math.exp(-sum(means) / len(means))

    measured = json.loads((cfg.run_dir / "cycle-000" / "heldout.json").read_text())
    assert measured["heldout_high_ppl"] == pytest.approx(ppl((75, 100)), rel=1e-3)  # batched with padding vs one by one: float noise
    assert measured["heldout_low_ppl"] == pytest.approx(ppl((0, 25)), rel=1e-3)
    with open(cfg.run_dir / "scores.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["heldout_high_ppl"]) == pytest.approx(measured["heldout_high_ppl"], abs=1e-4)
    assert "heldout_low_ppl" in json.loads((cfg.run_dir / "base" / "metrics.json").read_text())  # the base line too


@pytest.mark.parametrize(
    ("answer", "typicality", "generic", "expected"),
    [
        ("Hello there my good friend.", -3.0, -3.5, 100.0),  # complete, varied, on topic, fluent
        ("Put it in a sunny spot and water it whe", -3.0, -3.5, 0.0),  # cut off mid-word
        ("Too short.", -3.0, -3.5, 0.0),  # under MIN_WORDS
        ("Hello there my good friend.", -3.0, -3.1, 50.0),  # the question helps 0.1 nats/token: half of RELEVANT_NATS
        ("Hello there my good friend.", -3.0, -2.9, 0.0),  # the answer is likelier WITHOUT the question: off topic
        ("Hello there my good friend.", -5.25, -6.5, 50.0),  # half-way up the fluency span
        ("a b c d a b c d a b c d.", -3.0, -3.5, 100.0 * (5 / 9) ** 2),  # 4 of 9 word 4-grams repeat
        ("   ", -3.0, -3.5, None),
    ],
)
def test_coherence_score_parts(answer, typicality, generic, expected):
    from traitloop.judges.coherence_score import coherence_score

    value = coherence_score(answer, typicality, generic)
    assert value == (None if expected is None else pytest.approx(expected))


def test_eval_rows_carry_the_coherence_score_and_the_filter_can_use_it(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path, cycles=0)
    rows = experiment(cfg).run()
    scored = read_jsonl(cfg.run_dir / "cycle-000" / "eval.jsonl")
    by_question = {}
    for r in scored:
        by_question.setdefault(r["question"], []).append(r["coherence_score"])
    assert rows[0]["coherence_score_mean"] == pytest.approx(sum(sum(v) / len(v) for v in by_question.values()) / len(by_question))
    # the tiny random model writes word salad: a coherence-score filter at 100 keeps nothing
    strict = config(tiny_dir, tmp_path / "strict", cycles=1, data={"min_coherence_score": 100})
    with pytest.raises(UserError, match="no usable training examples"):
        experiment(strict).run()


def test_a_cut_off_generation_is_flagged_and_counted(tiny_dir, tmp_path, monkeypatch):
    """Truncation policy: an answer that hit max_new_tokens is kept and flagged (answers.jsonl and
    eval.jsonl `truncated`), and each cycle counts them (scores.csv n_truncated)."""
    import csv

    import traitloop.generation.vllm
    from traitloop.generation.hf import Text, is_truncated

    assert is_truncated([5, 6, 7], 3, {2}) and not is_truncated([5, 2, 0], 3, {2}) and not is_truncated([5, 6], 3, {2})

    class FakeSampler:  # the vLLM backend's shape: every second answer "finished for length"
        def __init__(self, url, concurrency):
            pass

        def base_model(self):
            return "tiny"

        def generate(self, adapter, prompts, **params):
            return [
                Text.of(f"answer number {i} that is long enough to be kept as a training example here", i % 2 == 1)
                for i in range(len(prompts))
            ]

    monkeypatch.setattr(traitloop.generation.vllm, "VllmSampler", FakeSampler)
    cfg = config(
        tiny_dir,
        tmp_path,
        cycles=0,
        generation={"backend": "vllm", "vllm_url": "http://vllm.test/v1"},
        eval={"questions": 2, "samples_per_question": 2},
    )
    experiment(cfg).run()
    answers = read_jsonl(cfg.run_dir / "cycle-000" / "answers.jsonl")
    assert [bool(a.get("truncated")) for a in answers] == [False, True, False, True]
    assert [bool(r.get("truncated")) for r in read_jsonl(cfg.run_dir / "cycle-000" / "eval.jsonl")] == [False, True, False, True]
    with open(cfg.run_dir / "scores.csv") as f:
        assert next(csv.DictReader(f))["n_truncated"] == "2"


def test_the_transformers_backend_flags_answers_cut_off_at_max_new_tokens(tokenizer):
    from test_tiny_model import make_model

    from traitloop.generation.hf import generate

    model = make_model(tokenizer, seed=1)
    answers = generate(
        model, tokenizer, [[{"role": "user", "content": "hello"}]] * 6, temperature=1.0, max_new_tokens=2, batch_size=3, seed=0
    )
    # two tokens and no end-of-sequence among them: cut off (a random model almost never ends in two tokens)
    assert all(hasattr(a, "truncated") for a in answers) and sum(a.truncated for a in answers) >= 4  # seeded: deterministic
