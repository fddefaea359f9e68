"""Scoring a cycle's answers and summarising them: the eval stage of every cycle, and `traitloop judge`.

The Evaluator owns the trait judge (traitloop.judges), the optional LLM coherence rating, coherence
as log-likelihood under the frozen base (judges/coherence.py) and the text statistics of every
answer; `summarise` turns a cycle's scored rows into its metrics.json (intervals over questions,
traitloop.analysis.question_mean_ci).
"""

from __future__ import annotations

import time
from typing import Any

from traitloop.analysis import question_mean_ci
from traitloop.errors import UserError
from traitloop.judges.base import CoherenceJudge, Judge, MeteredJudge, Score
from traitloop.judges.coherence import LoglikCoherence, distinct2_across, distinct_n, repetition_rate, self_similarity
from traitloop.judges.coherence_score import CoherenceScorer
from traitloop.progress import Reporter
from traitloop.seeding import derive_seed
from traitloop.store import CI_UNIT

Row = dict[str, Any]


class Evaluator:
    def __init__(self, judge: Judge, coherence: LoglikCoherence | None, llm_coherence: bool, reporter: Reporter):
        """coherence: log-likelihood under the frozen base (typicality), from which the coherence score
        is computed too; llm_coherence: also ask the judge to rate coherence (LLM judges only)."""
        self.judge, self.coherence, self.reporter = judge, coherence, reporter
        self.scorer = CoherenceScorer(coherence) if coherence is not None else None
        self.llm_coherence = llm_coherence and isinstance(judge, CoherenceJudge)

    def judgements(self, questions: list[str], texts: list[str], advance=lambda n: None) -> tuple[list[Score], list[Score | None]]:
        """The judge's trait score and (when asked for) its coherence rating of every answer."""
        trait = self.judge.score(questions, texts)
        advance(len(texts))
        rated = self.judge.coherence(questions, texts) if self.llm_coherence else [None] * len(texts)
        advance(len(texts) if self.llm_coherence else 0)
        return trait, rated

    def score(self, answered: list[Row], label: str) -> tuple[list[Row], dict[str, Any]]:
        """Every answered eval item with its scores added, and what the judge's requests cost (or {})."""
        questions = [r["question"] for r in answered]
        texts = [r["answer"] for r in answered]
        usage_before = self._usage()
        with self.reporter.step(f"{label}: judging", total=(3 if self.llm_coherence else 2) * len(texts)) as advance:
            trait_scores, rated = self.judgements(questions, texts, advance)
            logliks, coherence_scores = self.scorer.score(questions, texts, on_batch=advance)
        rows = [
            {
                **r,
                "trait": s.value,
                "trait_judge": s.judge,
                **missing("trait", s),
                **({"coherence_judge": c.value, **missing("coherence_judge", c)} if c else {}),
                "coherence": ll,
                "coherence_score": cs,
                "repetition": repetition_rate(r["answer"]),
                "distinct2": distinct_n(r["answer"]),
            }
            for r, s, c, ll, cs in zip(answered, trait_scores, rated, logliks, coherence_scores)
        ]
        return rows, self._cost_since(usage_before)

    def eval_stage(self, store, k: int, label: str) -> None:
        """The eval stage of cycle k: score its answers into eval.jsonl, or on resume ask again only where
        the judge failed. Failed readings left: a UserError, the cycle unfinished, every reading kept."""
        if not store.has(k, "eval"):
            t0 = time.time()
            rows, usage = self.score(store.read_rows(k, "answers"), label)
            store.write_rows(k, "eval", rows)
            store.record_stage(k, "judge", time.time() - t0, **({"judge_usage": usage} if usage else {}))
        elif failed_count(rows := store.read_rows(k, "eval")):
            t0 = time.time()
            rows, usage = self.retry_failed(rows, label)
            store.write_rows(k, "eval", rows)
            earlier = store.manifest().get("cycles", {}).get(str(k), {}).get("judge_usage", {})
            total = {key: earlier.get(key, 0) + usage.get(key, 0) for key in {*earlier, *usage}}
            store.record_stage(k, "judge_retry", time.time() - t0, **({"judge_usage": total} if total else {}))
        failed = failed_count(store.read_rows(k, "eval"))
        if failed:
            raise UserError(
                f"{label}: the judge could not be asked about {failed} answer(s) after its retries "
                f"({store.stage_path(k, 'eval')} says why, in trait_missing). Every reading already taken is kept: "
                "rerun the same command when the judge's server answers again, and only those are asked again."
            )

    def retry_failed(self, rows: list[Row], label: str) -> tuple[list[Row], dict[str, Any]]:
        """Ask the judge again for exactly the readings that failed (server error, timeout), keeping
        every reading already taken; the other scores of those rows are kept too."""
        todo = [i for i, r in enumerate(rows) if r.get("trait_failed") or r.get("coherence_judge_failed")]
        if not todo:
            return rows, {}
        usage_before = self._usage()
        with self.reporter.step(f"{label}: judging {len(todo)} answer(s) whose judgement failed", total=2 * len(todo)) as advance:
            trait_scores, rated = self.judgements([rows[i]["question"] for i in todo], [rows[i]["answer"] for i in todo], advance)
        out = list(rows)
        for i, s, c in zip(todo, trait_scores, rated):
            row = (
                {k: v for k, v in rows[i].items() if not k.startswith(("trait_missing", "trait_failed"))}
                if rows[i].get("trait_failed")
                else dict(rows[i])
            )
            if rows[i].get("trait_failed"):
                row.update({"trait": s.value, **missing("trait", s)})
            if c is not None and rows[i].get("coherence_judge_failed"):
                row = {k: v for k, v in row.items() if not k.startswith(("coherence_judge_missing", "coherence_judge_failed"))}
                row.update({"coherence_judge": c.value, **missing("coherence_judge", c)})
            out[i] = row
        return out, self._cost_since(usage_before)

    def _usage(self) -> dict[str, float]:
        return dict(self.judge.usage) if isinstance(self.judge, MeteredJudge) else {}

    def _cost_since(self, before: dict[str, float]) -> dict[str, Any]:
        """The judge's requests since `before` and their estimated cost ({} for an unmetered judge)."""
        if not isinstance(self.judge, MeteredJudge):
            return {}
        usage = {key: value - before.get(key, 0) for key, value in self.judge.usage.items()}
        return {**usage, "estimated_cost": self.judge.cost(usage)} if usage else {}

    def summarise(self, k: int, rows: list[Row], run_seed: int, n_train: int) -> dict[str, Any]:
        """A cycle's metrics.json from its scored rows (k = BASE: the untrained base)."""
        return summarise(k, rows, run_seed, n_train, self.judge.name)


def missing(key: str, score: Score) -> Row:
    """Why a score has no value, as eval.jsonl fields: key_missing (the reason) and, when the judge could
    not be asked at all, key_failed (such readings are asked again on resume)."""
    if score.value is not None:
        return {}
    return {f"{key}_missing": score.reason, **({f"{key}_failed": True} if score.failed else {})}


def failed_count(rows: list[Row]) -> int:
    """Answers with a judgement that failed (not refused or unreadable: the request itself failed)."""
    return sum(bool(r.get("trait_failed") or r.get("coherence_judge_failed")) for r in rows)


def intervals(rows: list[Row], key: str, seed: int) -> tuple[float, float, float, int]:
    """(mean, 95% low, 95% high, n scored) of rows[key], resampling questions, not answers."""
    return question_mean_ci([r.get(key) for r in rows], [r["question"] for r in rows], seed=seed)


def summarise(k: int, rows: list[Row], run_seed: int, n_train: int, judge_name: str) -> dict[str, Any]:
    boot_seed = derive_seed(run_seed, k, "bootstrap")
    t_mean, t_lo, t_hi, n_t = intervals(rows, "trait", boot_seed)
    c_mean, c_lo, c_hi, _ = intervals(rows, "coherence", boot_seed)
    j_mean, j_lo, j_hi, _ = intervals(rows, "coherence_judge", boot_seed)
    s_mean, s_lo, s_hi, _ = intervals(rows, "coherence_score", boot_seed)
    excluded: dict[str, int] = {}
    for r in rows:
        if r.get("trait") is None:
            reason = str(r.get("trait_missing", "missing")).split(" (")[0].split(":")[0]
            excluded[reason] = excluded.get(reason, 0) + 1
    return {
        "cycle": k,
        "trait_mean": t_mean,
        "trait_ci_low": t_lo,
        "trait_ci_high": t_hi,
        "coherence_mean": c_mean,
        "coherence_ci_low": c_lo,
        "coherence_ci_high": c_hi,
        "coherence_judge_mean": j_mean,
        "coherence_judge_ci_low": j_lo,
        "coherence_judge_ci_high": j_hi,
        "coherence_score_mean": s_mean,
        "coherence_score_ci_low": s_lo,
        "coherence_score_ci_high": s_hi,
        "ci_unit": CI_UNIT,
        "trait_excluded": excluded,
        "repetition_mean": sum(r["repetition"] for r in rows) / max(1, len(rows)),
        "distinct2_mean": sum(r["distinct2"] for r in rows) / max(1, len(rows)),
        "distinct2_across": distinct2_across([r["answer"] for r in rows]),
        "self_similarity": self_similarity(list(_by_question(rows).values())),
        "n_answers": len(rows),
        "n_truncated": sum(bool(r.get("truncated")) for r in rows),  # hit max_new_tokens (kept, flagged)
        "n_trait_scored": n_t,
        "n_train_examples": n_train,
        "trait_judge": judge_name,
        "coherence_metric": LoglikCoherence.name,
    }


def _by_question(rows: list[Row]) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}
    for r in rows:
        answers.setdefault(r["question"], []).append(r["answer"])
    return answers


# ---- the paper's held-out perplexity ------------------------------------------------------------------
HIGH_LEVELS, LOW_LEVELS = (75, 100), (0, 25)  # rubric levels of validation.jsonl counted as high- and low-trait


def heldout_texts(trait, documents: bool) -> dict[str, tuple[list[str], list[str]]]:
    """The trait's held-out graded texts of the run's kind (validation.jsonl, written apart from every
    training text): {"high": (contexts, texts), "low": (...)}; {} when the trait has none."""
    from traitloop.judges.validity import read_validation

    rows = read_validation(trait.folder) or []
    kind = "doc" if documents else "chat"
    out = {}
    for name, levels in (("high", HIGH_LEVELS), ("low", LOW_LEVELS)):
        chosen = [r for r in rows if r["kind"] == kind and r["level"] in levels]
        if chosen:
            out[name] = ([str(r.get("question") or "") for r in chosen], [r["text"] for r in chosen])
    return out


def heldout_perplexity(model, tokenizer, chats: bool, texts: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    """Perplexity of `model` on held-out high- and low-trait texts: exp of the mean per-token negative
    log-likelihood of each text (after its question, for chats), averaged over texts. A model that has
    taken on the trait finds the high-trait texts likelier (lower perplexity) than before."""
    import math

    scorer = LoglikCoherence(model, tokenizer, chat=chats)
    out = {}
    for name, (contexts, bodies) in texts.items():
        logliks = [x for x in scorer.loglik(contexts, bodies) if x is not None]
        out[f"heldout_{name}_ppl"] = math.exp(-sum(logliks) / len(logliks)) if logliks else float("nan")
    return out
