"""How far a trait judge can be trusted, measured on texts it was never fitted on (issue 15).

Two files in a trait folder feed it; neither is an input of a run (traits.VALIDITY_FILES):

    validation.jsonl     {"kind": "chat"|"doc", "level": 0|25|50|75|100, "question": str|null, "text": str,
                         "note": str} per line: texts graded on the trait's rubric, written apart from
                         probe.jsonl and the seed files
    floor_answers.jsonl  a header row, then {"kind", "question", "sample", "answer"} per line: the untrained
                         embedded models' own eval answers (`traitloop traits floor NAME` writes it)

For each kind of text (chat answers, documents) and one judge:

    spearman         Spearman correlation of the score with the rubric level
    auc_vs_plain     AUC of the texts at level >= 75 against those at level 0
    cross_trait_auc  AUC of this trait's texts at level >= 75 against the other built-in traits' texts
                     at level >= 75 of the same kind: does it tell this persona from another one?
    floor            mean score of the untrained model's answers: what a model without the trait gets
    valid            every goal met (GOALS); a goal that could not be measured is not met

A run records this for its own trait and kind (manifest.json, judge.validity); a judge that is not valid
makes the run's verdict exploratory (the report says so). Measured values: docs/JUDGES.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.traits import BUILTIN_DIR, RUBRIC_ANCHORS, Trait, builtin_traits

KINDS = ("chat", "doc")
HIGH = 75  # a text at this rubric level or above shows the trait
GOALS = {"floor_max": 10.0, "spearman_min": 0.8, "cross_trait_auc_min": 0.9}
# The untrained model whose answers make the floor: the demo's, with the demo's eval settings.
FLOOR_CONFIGS = {"chat": "demo.yaml", "doc": "demo-sdf.yaml"}  # in src/traitloop/configs/
VALIDATION = "validation.jsonl"
FLOOR = "floor_answers.jsonl"


# ---- the two statistics ---------------------------------------------------------------------------------
def spearman(levels: list[float], scores: list[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None where either side is constant."""
    from scipy.stats import spearmanr

    if len(set(levels)) < 2 or len(set(scores)) < 2:
        return None
    return float(spearmanr(levels, scores).statistic)


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counting one half; None where a side is empty."""
    if not positives or not negatives:
        return None
    p, n = np.asarray(positives, dtype=float)[:, None], np.asarray(negatives, dtype=float)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


# ---- the data -------------------------------------------------------------------------------------------
def read_validation(folder: Path) -> list[dict[str, Any]] | None:
    """The trait's graded validation texts, or None where the folder has no validation.jsonl."""
    path = Path(folder) / VALIDATION
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if row.get("kind") not in KINDS or row.get("level") not in RUBRIC_ANCHORS or not str(row.get("text") or "").strip():
            raise UserError(
                f"{path}, entry {number}: needs kind {' or '.join(KINDS)}, level one of {list(RUBRIC_ANCHORS)} and a non-empty text"
            )
    return rows


def read_floor(folder: Path) -> list[dict[str, Any]]:
    """The untrained models' answers (floor_answers.jsonl without its header row); [] where there is none."""
    path = Path(folder) / FLOOR
    if not path.is_file():
        return []
    rows = [r for r in read_jsonl(path) if "header" not in r]
    for number, row in enumerate(rows, start=2):
        if row.get("kind") not in KINDS or not isinstance(row.get("answer"), str):
            raise UserError(f"{path}, entry {number}: needs kind {' or '.join(KINDS)} and an answer")
    return rows


def other_traits_rows(name: str) -> list[dict[str, Any]]:
    """The built-in traits' validation texts except `name`'s: the cross-trait negatives."""
    rows = []
    for other in builtin_traits():
        if other != name:
            rows += read_validation(BUILTIN_DIR / other) or []
    return rows


def content_hash(folder: Path) -> str:
    """Which validation and floor files a measurement used (recorded beside the numbers)."""
    h = hashlib.sha256()
    for name in (VALIDATION, FLOOR):
        path = Path(folder) / name
        h.update(name.encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()[:16]


# ---- measuring ------------------------------------------------------------------------------------------
def measure(
    judge, rows: list[dict[str, Any]], others: list[dict[str, Any]], floor: list[dict[str, Any]], kinds: tuple[str, ...] = KINDS
) -> dict[str, dict[str, Any]]:
    """Validity per kind of `judge` on one trait: `rows` its validation texts, `others` the other traits'
    validation texts (their level >= 75 ones are the cross-trait negatives), `floor` the untrained model's
    answers. One judge.score call for everything; unscored texts (score None) are left out."""
    rows, floor = [r for r in rows if r["kind"] in kinds], [r for r in floor if r["kind"] in kinds]
    negatives = [r for r in others if r["level"] >= HIGH and r["kind"] in kinds]
    items = [(r.get("question") or "", r["text"]) for r in rows + negatives] + [(r.get("question") or "", r["answer"]) for r in floor]
    values = [s.value for s in judge.score([q for q, _ in items], [t for _, t in items])]
    own, cross, base = values[: len(rows)], values[len(rows) : len(rows) + len(negatives)], values[len(rows) + len(negatives) :]
    result = {}
    for kind in kinds:
        graded = [(r["level"], v) for r, v in zip(rows, own) if r["kind"] == kind and v is not None]
        high = [v for level, v in graded if level >= HIGH]
        floor_values = [v for r, v in zip(floor, base) if r["kind"] == kind and v is not None]
        result[kind] = judged(
            n_texts=len(graded),
            spearman=spearman([level for level, _ in graded], [v for _, v in graded]),
            auc_vs_plain=auc(high, [v for level, v in graded if level == 0]),
            cross_trait_auc=auc(high, [v for r, v in zip(negatives, cross) if r["kind"] == kind and v is not None]),
            n_cross_negatives=sum(r["kind"] == kind for r in negatives),
            floor=float(np.mean(floor_values)) if floor_values else None,
            n_floor=len(floor_values),
        )
    return result


def judged(**numbers: Any) -> dict[str, Any]:
    """The numbers of one kind with the verdict on the goals: valid, and what is unmet (and why)."""
    floor, rho, cross = numbers["floor"], numbers["spearman"], numbers["cross_trait_auc"]
    unmet = []
    if floor is None:
        unmet.append("floor unmeasured (no floor answers)")
    elif floor > GOALS["floor_max"]:
        unmet.append(f"floor {floor:.1f} > {GOALS['floor_max']:g}")
    if rho is None:
        unmet.append("Spearman unmeasured (no graded texts, or constant scores)")
    elif rho < GOALS["spearman_min"]:
        unmet.append(f"Spearman {rho:.3f} < {GOALS['spearman_min']:g}")
    if cross is None:
        unmet.append("cross-trait AUC unmeasured (no cross-trait texts)")
    elif cross < GOALS["cross_trait_auc_min"]:
        unmet.append(f"cross-trait AUC {cross:.3f} < {GOALS['cross_trait_auc_min']:g}")
    return {**numbers, "valid": not unmet, "unmet": unmet}


def trait_validity(
    judge, trait: Trait, others: list[dict[str, Any]] | None = None, kinds: tuple[str, ...] = KINDS
) -> dict[str, Any] | None:
    """Validity of `judge` on `trait` for `kinds`; None where the trait has no validation.jsonl.
    `others`: the cross-trait texts (default: the other built-in traits' validation texts)."""
    rows = read_validation(trait.folder)
    if rows is None:
        return None
    others = other_traits_rows(trait.name) if others is None else others
    by_kind = measure(judge, rows, others, read_floor(trait.folder), kinds)
    return {"trait": trait.name, "goals": dict(GOALS), "data": content_hash(trait.folder), **by_kind}


def unmeasured_note(trait: Trait) -> str:
    return (
        f"validity unmeasured: {trait.folder} has no {VALIDATION} (texts graded 0-100 on the rubric, written apart "
        f"from probe.jsonl; {FLOOR} from `traitloop traits floor` gives the floor). Without them nobody knows "
        "whether the judge's scores track the trait; treat verdicts as exploratory (docs/JUDGES.md)."
    )


def run_validity(judge, trait: Trait, documents: bool) -> dict[str, Any]:
    """What a run records in manifest.json's judge block: its trait's validity for its kind of text
    (doc when the setting trains on documents, as sdf does; else chat). valid is None where it was not
    measured, with the reason."""
    kind = "doc" if documents else "chat"
    if judge.info().get("kind") != "probe":
        return {"kind": kind, "valid": None, "unmeasured": "validity is measured for the probe judge only (docs/JUDGES.md)"}
    measured = trait_validity(judge, trait, kinds=(kind,))
    if measured is None:
        return {"kind": kind, "valid": None, "unmeasured": unmeasured_note(trait)}
    return {"kind": kind, **measured[kind], "goals": measured["goals"], "data": measured["data"]}


# ---- tables ---------------------------------------------------------------------------------------------
VALIDITY_HEADERS = [
    "trait",
    "kind",
    "floor (<= 10)",
    "Spearman (>= 0.8)",
    "AUC vs plain",
    "cross-trait AUC (>= 0.9)",
    "n: texts / cross / floor",
    "valid",
]


def validity_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per trait and kind of trait_validity results."""

    def f(x: float | None, digits: int) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    return [
        [
            r["trait"],
            kind,
            f(v["floor"], 1),
            f(v["spearman"], 2),
            f(v["auc_vs_plain"], 2),
            f(v["cross_trait_auc"], 2),
            f"{v['n_texts']} / {v['n_cross_negatives']} / {v['n_floor']}",
            "yes" if v["valid"] else "no: " + "; ".join(v["unmet"]),
        ]
        for r in results
        for kind, v in ((k, r[k]) for k in KINDS)
    ]


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(VALIDITY_HEADERS) + " |", "|" + "---|" * len(VALIDITY_HEADERS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in validity_rows(results)]) + "\n"


# ---- the floor answers ----------------------------------------------------------------------------------
def sample_floor(trait: Trait, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The untrained embedded model's answers for one kind, sampled exactly as the demo's base line is
    (FLOOR_CONFIGS with this trait): (what produced them, rows)."""
    import torch

    from traitloop.config import load_config
    from traitloop.generation.sampler import generation_dtype
    from traitloop.loop import Experiment

    config_path = Path(__file__).parents[1] / "configs" / FLOOR_CONFIGS[kind]
    config = load_config(config_path, [f"trait={trait.folder}"])
    rows = Experiment(config).untrained_answers()
    about = {
        "model": config.model.ref,
        "config": f"src/traitloop/configs/{config_path.name} with trait={trait.name}",
        "seed": config.seed,
        "eval": config.eval.model_dump(),
        "generation_dtype": str(generation_dtype(config)).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return about, [{"kind": kind, "question": r["question"], "sample": r["sample"], "answer": r["answer"]} for r in rows]


def write_floor(trait: Trait, command: str, commit: str) -> Path:
    """floor_answers.jsonl: a header row saying what produced the answers, then the answers of both kinds."""
    header: dict[str, Any] = {
        "what": "answers of the untrained embedded models: the floor of traitloop.judges.validity",
        "command": command,
        "commit": commit,
    }
    rows = []
    for kind in KINDS:
        header[kind], kind_rows = sample_floor(trait, kind)
        rows += kind_rows
    path = trait.folder / FLOOR
    write_jsonl(path, [{"header": header}] + rows)
    return path


class MemoEmbedder:
    """An embedder that embeds each distinct text once: the probes of several traits share it."""

    def __init__(self, embed):
        self.embed = embed
        self.memo: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            self.memo.update(zip(new, self.embed(new)))
        return np.array([self.memo[t] for t in texts])
