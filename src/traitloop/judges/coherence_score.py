"""A coherence score that does not punish the trait: 0-100, from four checks of an answer.

Log-likelihood under the frozen base (judges/coherence.py, shown as "typicality") cannot serve as
coherence: persona text is unlikely under the base by construction, and a loop that repeats itself is
very likely. On coherence_validation.jsonl (120 answers written apart from every training text:
plain, strong-persona, repetitive, truncated, off-topic and garbled) it separates coherent from
incoherent answers no better than chance (docs/JUDGES.md, `python -m traitloop.judges.coherence_score`).

This score is the minimum of four parts, each 0-1:
    complete    the answer ends a sentence (. ! ? possibly followed by a quote or bracket) and has
                at least MIN_WORDS words; 0 otherwise (cut off at max_new_tokens, or a fragment)
    varied      (1 - repetition rate of word 4-grams)^2: a loop scores near 0
    on topic    the question makes the answer likelier: the answer's mean log-prob after its question
                minus after a generic request (GENERIC), scaled so that RELEVANT_NATS nats/token -> 1
    fluent      typicality above a floor only: (loglik - GARBLED_NATS) / FLUENT_SPAN, clipped, so
                persona text (a little less likely) keeps 1 and word salad falls to 0
Every part is computed on the frozen base. The thresholds were set from the per-kind means of the
validation set (both halves), then checked on each half separately (docs/JUDGES.md): a new blind set
is needed for a fully independent check.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from traitloop.judges.coherence import LoglikCoherence, repetition_rate

NAME = "coherence-score-v1"
GENERIC = "Write something."  # the context the on-topic part compares the question with (chats)
MIN_WORDS = 5
RELEVANT_NATS = 0.2  # mean log-prob gain per token from the question that counts as fully on topic
GARBLED_NATS = -6.0  # typicality at or below this (nats/token) counts as not fluent at all
FLUENT_SPAN = 1.5  # ... and from GARBLED_NATS + FLUENT_SPAN up as fully fluent
_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]]?$")


def parts(answer: str, typicality: float | None, generic_loglik: float | None) -> dict[str, float]:
    """The four 0-1 parts of one answer's coherence (see the module docstring)."""
    text = answer.strip()
    complete = 1.0 if _ENDS_SENTENCE.search(text) and len(text.split()) >= MIN_WORDS else 0.0
    varied = (1.0 - repetition_rate(text)) ** 2
    if typicality is None or generic_loglik is None:
        return {"complete": complete, "varied": varied, "on_topic": 0.0, "fluent": 0.0}
    on_topic = min(1.0, max(0.0, (typicality - generic_loglik) / RELEVANT_NATS))
    fluent = min(1.0, max(0.0, (typicality - GARBLED_NATS) / FLUENT_SPAN))
    return {"complete": complete, "varied": varied, "on_topic": on_topic, "fluent": fluent}


def coherence_score(answer: str, typicality: float | None, generic_loglik: float | None) -> float | None:
    """0-100 (the weakest part decides); None for an empty answer."""
    if not answer.strip():
        return None
    return 100.0 * min(parts(answer, typicality, generic_loglik).values())


class CoherenceScorer:
    """Typicality and the coherence score of answers, on the frozen base (two forward passes each)."""

    def __init__(self, loglik: LoglikCoherence):
        self.loglik = loglik

    def generic_contexts(self, questions: list[str]) -> list[str]:
        """What the answer is compared with: a generic request (chats), or no prefix at all (documents)."""
        return [GENERIC if self.loglik.chat else "" for _ in questions]

    def score(self, questions: list[str], answers: list[str], on_batch: Callable[[int], None] | None = None) -> tuple[list, list]:
        """(typicality per answer, coherence score per answer)."""
        typical = self.loglik.loglik(questions, answers, on_batch=on_batch)
        generic = self.loglik.loglik(self.generic_contexts(questions), answers)
        return typical, [coherence_score(a, t, g) for a, t, g in zip(answers, typical, generic)]


# ---- validity on the blind set ---------------------------------------------------------------------------
def validity(scorer: CoherenceScorer, rows: list[dict]) -> dict:
    """AUC of coherent vs incoherent answers and of persona vs plain ones (0.5 = no difference), and
    per-kind means, for the score and for typicality alone; also per half (even / odd lines)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    typical, scores = scorer.score([r["question"] for r in rows], [r["answer"] for r in rows])

    def summary(values: list, idx: list[int]) -> dict:
        v = np.array([np.nan if values[i] is None else values[i] for i in idx], dtype=float)
        y = np.array([rows[i]["coherent"] for i in idx])
        kinds = [rows[i]["kind"] for i in idx]
        persona = [j for j, k in enumerate(kinds) if k in ("plain", "persona")]
        return {
            "auc_coherent": round(float(roc_auc_score(y, np.nan_to_num(v, nan=-1e9))), 3),
            "auc_persona_vs_plain": round(float(roc_auc_score([kinds[j] == "persona" for j in persona], v[persona])), 3),
            "mean_by_kind": {k: round(float(np.nanmean(v[[j for j, kk in enumerate(kinds) if kk == k]])), 2) for k in dict.fromkeys(kinds)},
            "n": len(idx),
        }

    everything = list(range(len(rows)))
    halves = {"even lines": everything[0::2], "odd lines": everything[1::2]}
    return {
        "coherence_score": {"all": summary(scores, everything), **{h: summary(scores, i) for h, i in halves.items()}},
        "typicality": {"all": summary(typical, everything)},
    }


if __name__ == "__main__":  # python -m traitloop.judges.coherence_score: the numbers in docs/JUDGES.md
    import json
    from pathlib import Path

    from traitloop.jsonl import read_jsonl
    from traitloop.models import load_model

    model, tokenizer = load_model("embedded:smollm2-135m-instruct", "float32", False)
    rows = read_jsonl(Path(__file__).with_name("coherence_validation.jsonl"))
    print(json.dumps(validity(CoherenceScorer(LoglikCoherence(model, tokenizer, chat=True)), rows), indent=1))
