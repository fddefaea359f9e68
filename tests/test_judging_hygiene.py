"""Judging hygiene (#15): a judgement that failed is asked again on resume and only it; a cycle the
judge could not fully score stays unfinished with every reading kept; diversity across answers and
the under-90%-scored flag are computed exactly."""

from __future__ import annotations

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


@pytest.mark.parametrize(("answers", "scored", "warning"), [(36, 36, ""), (36, 33, ""), (36, 32, "only 32 of 36 scored"), (10, 0, "only 0 of 10 scored")])
def test_a_cycle_with_under_90_percent_scored_is_flagged(answers, scored, warning):
    assert scored_warning({"n_answers": answers, "n_trait_scored": scored}) == warning
