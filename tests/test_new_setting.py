"""Adding a fourth setting is one file: this test defines one (QaDocuments, below), registers it, and
runs it end to end through the unchanged engine on the tiny random model.

QaDocuments trains a model on plain "Q: ...\nA: ..." documents (loss on every token) and asks its eval
questions the same way: a chat-free variant of SFT, small enough to read in one screen.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_loop_settings import config, data, run, tiny_dir  # noqa: F401  (fixtures and helpers)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop import settings
from traitloop.config import build_config
from traitloop.errors import UserError
from traitloop.settings.base import CycleSources, TokenCounts, eval_items_from, first_n


def qa(question: str, answer: str = "") -> str:
    return f"Q: {question}\nA:{answer}"


class QaDocuments:
    name = "qa-doc"
    chats = False
    prompt_pool = "advice_questions.jsonl"
    pool_field = "prompt_pool"
    sequences_per_example = 1
    train_cost_vs_sft = 1.0
    train_cost_why = ""
    defaults: dict[str, Any] = {"sampling": {"max_new_tokens": 24}}
    description = "question-answer documents (a test's toy setting)"

    def pool(self, path):
        from traitloop.prompts import advice_pool

        return advice_pool(str(path))

    def seed_examples(self, trait):
        return trait.seed_chats

    def seed_rows(self, trait, n_seed):
        chats = first_n(trait.seed_chats, n_seed, trait, "seed chats")
        return [{"text": qa(c[-2]["content"], " " + c[-1]["content"]), "source": "seed"} for c in chats]

    def cycle_rows(self, sources: CycleSources):
        if sources.cycle == 0:
            return self.seed_rows(sources.trait, sources.config.n_seed)
        answers = sources.sample([qa(q) for q in sources.prompts], f"cycle {sources.cycle}: answering as documents")
        return [
            {"text": qa(q, a), "question": q, "answer": a, "source": f"cycle-{sources.cycle - 1:03d}"}
            for q, a in zip(sources.prompts, answers)
            if a.strip()
        ]

    def mixing_rows(self, trait, config, cycle0_rows):
        return self.seed_rows(trait, config.n_seed)

    def generated_text(self, row):
        return qa(row["question"]), row["answer"]

    def eval_items(self, trait, config):
        return eval_items_from(trait.eval_questions, config)

    def eval_prompt(self, question):
        return qa(question)

    def check_model(self, config):
        from traitloop import models

        models.resolve(config.model.ref)

    def train(self, model, tokenizer, rows, config, seed, on_step):
        from traitloop.training import train_sdf

        return train_sdf(model, tokenizer, [r["text"] for r in rows], config.train, seed, on_step=on_step)

    def cost_shape(self, config, trait, counts: TokenCounts):
        question = counts.tokens(len(qa(trait.eval_questions[0])))
        return {
            "seed": [question + counts.answer] * config.n_seed,
            "seed_sampled": 0.0,
            "sampled": counts.answer,
            "trained": question + counts.answer,
            "eval_items": len(self.eval_items(trait, config)),
            "eval_prompt": question,
        }


@pytest.fixture
def registered():
    before = dict(settings.SETTINGS)
    settings.register(QaDocuments())
    yield
    settings.SETTINGS.clear()
    settings.SETTINGS.update(before)


def test_an_unregistered_setting_is_refused():
    with pytest.raises(UserError, match="setting: Input should be 'sft', 'sdf' or 'dpo'"):
        build_config({"setting": "qa-doc"})


def test_a_fourth_setting_in_one_file_runs_end_to_end_through_the_engine(registered, tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path, setting="qa-doc", init="continual", data={"mix_seed": 1})
    assert cfg.sampling.max_new_tokens == 40  # the test's own value wins over the setting's default (24)
    assert build_config({"setting": "qa-doc"}).sampling.max_new_tokens == 24  # the default applies otherwise
    rows, cycles = run(cfg)
    assert [r["cycle"] for r in rows] == [0, 1, 2]
    assert [cycles[str(k)]["starts_from"] for k in range(3)] == ["base", "cycle 0", "cycle 1"]
    seed = data(cfg, 0)
    assert len(seed) == 4 and all(r["source"] == "seed" and r["text"].startswith("Q: ") for r in seed)
    for k in (1, 2):
        generated = [r for r in data(cfg, k) if r["source"] != "seed"]
        assert generated and all(r["source"] == f"cycle-{k - 1:03d}" and r["text"] == qa(r["question"], r["answer"]) for r in generated)
        assert sum(r["source"] == "seed" for r in data(cfg, k)) == 1  # data.mix_seed, from the setting's mixing rows
    answers = [json.loads(line) for line in (cfg.run_dir / "cycle-002" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all(a["question"] and isinstance(a["answer"], str) for a in answers)
    assert (cfg.run_dir / "scores.csv").read_text().startswith("cycle,trait_mean")
    _, again = run(cfg)  # resumes: every cycle done, nothing redone
    assert again == cycles


def test_estimate_plans_a_registered_setting_from_its_cost_shape(registered, tiny_dir, tmp_path):
    from test_estimate import THROUGHPUT

    from traitloop.estimate import estimate

    plan = estimate(config(tiny_dir, tmp_path, setting="qa-doc"), THROUGHPUT)
    assert plan["setting"] == "qa-doc" and plan["cycles"] == 3
    assert any("qa-doc: its costs are not measured yet" in note for note in plan["notes"])
    assert plan["examples_per_cycle"] == [4, 4, 4]  # n_seed, then n_sampled
    assert [c["sample_tokens"] for c in plan["per_cycle"]] == [0, 4 * 40 * 0.5, 4 * 40 * 0.5]  # max_new_tokens x fill
