"""Rescore a finished run with another judge, and measure how much two judges agree.

Nothing is retrained or resampled: the answers in every cycle's eval.jsonl (and base/) are scored
again and written BESIDE the old scores, never over them:

    cycle-NNN/judges/<judge-id>.jsonl    one row per answer: question, sample, trait, coherence_judge
    scores-<judge-id>.csv                per-cycle means with bootstrap intervals
    figures/trait_coherence-<judge-id>.png
    agreement.json                       written by `agreement`

Both hold the run directory's LOCK while they read and write (store.py), so neither interleaves with a
run or with each other.

A cycle whose judges/<judge-id>.jsonl exists is skipped, so an interrupted rescoring resumes; the
api judge's request cache means repeated answers are never paid for twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from traitloop.config import ExperimentConfig, JudgeConfig, format_validation_error
from traitloop.errors import UserError
from traitloop.evaluation import Evaluator, intervals
from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.progress import Reporter
from traitloop.report import plot_trait_coherence
from traitloop.seeding import derive_seed
from traitloop.settings import get_setting
from traitloop.store import BASE, CI_UNIT, RunStore, write_csv
from traitloop.traits import load_trait

PRIMARY = "primary"


def parse_judge(spec: str) -> JudgeConfig:
    """'probe' | 'api:MODEL' | 'local:MODEL_REF' | path to a YAML file with judge fields."""
    path = Path(spec)
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        data = data.get("judge", data)
        try:
            return JudgeConfig.model_validate(data)
        except ValidationError as err:
            raise UserError(format_validation_error(err, str(path), what="judge config")) from None
    if spec == "probe":
        return JudgeConfig(kind="probe")
    kind, _, model = spec.partition(":")
    if kind in ("api", "local") and model:
        return JudgeConfig(kind=kind, model=model)
    raise UserError(f"judge {spec!r}: use probe, api:MODEL, local:MODEL_REF, or a YAML file with judge settings")


def _open_run(run_dir: Path) -> tuple[RunStore, ExperimentConfig, list[int]]:
    store = RunStore(run_dir)
    config = store.config()
    cycles = [k for k in [BASE, *range(config.cycles + 1)] if store.has(k, "eval")]
    if not cycles:
        raise UserError(f"{run_dir} has no judged cycles yet (no eval.jsonl); run or resume it first")
    return store, config, cycles


def judge_run(run_dir: Path, judge_config: JudgeConfig, on_cycle=None, judge=None) -> dict[str, Any]:
    """Score every finished cycle's answers with `judge_config` (or with `judge`, a collaborator made from
    it). Holds the run directory's lock throughout (store.py: a run or another judge on the same directory
    is refused). Returns paths and usage."""
    store, config, cycles = _open_run(run_dir)
    if judge is None and judge_config.kind == "api":
        from traitloop.preflight import check_api_judge

        check_api_judge(judge_config)  # key and endpoint, before anything is written
    with store.locked():
        return _judge_locked(run_dir, judge_config, on_cycle, judge)


def _judge_locked(run_dir: Path, judge_config: JudgeConfig, on_cycle, judge) -> dict[str, Any]:
    from traitloop.judges import make_judge

    store, config, cycles = _open_run(run_dir)  # read again under the lock: a run may have finished cycles since
    trait = load_trait(config.trait)
    if judge is None:
        judge = make_judge(judge_config, trait, seed=config.seed, documents=not get_setting(config.setting).chats)
    evaluator = Evaluator(judge, coherence=None, llm_coherence=judge_config.coherence, reporter=Reporter(enabled=False))
    ident = judge_config.identity()
    for k in cycles:
        path = store.judge_scores_path(k, ident)
        if not path.is_file():
            rows = store.read_rows(k, "eval")
            trait_scores, coherence = evaluator.judgements([r["question"] for r in rows], [r["answer"] for r in rows])
            write_jsonl(
                path,
                [
                    {
                        "question": r["question"],
                        "sample": r.get("sample"),
                        "trait": s.value,
                        **({"trait_missing": s.reason} if s.value is None else {}),
                        "coherence_judge": c.value if c else None,
                        "judge": ident,
                    }
                    for r, s, c in zip(rows, trait_scores, coherence)
                ],
            )
        if on_cycle:
            on_cycle(k)
    rows = summarise(store, config, cycles, ident)
    scores = [r for r in rows if r["cycle"] != BASE]
    base = next((r for r in rows if r["cycle"] == BASE), None)
    csv_path = write_csv(store.judge_scores_csv(ident), scores, list(scores[0]) if scores else ["cycle"])
    figure = plot_trait_coherence(
        [_with_loglik(store, r) for r in scores],
        store.figure_path(ident),
        f"{config.trait} rescored by {ident}",
        base=_with_loglik(store, base) if base else None,
    )
    manifest = store.manifest()
    manifest.setdefault("extra_judges", {})[ident] = {**judge.info(), **({"usage": judge.usage} if hasattr(judge, "usage") else {})}
    store.write_manifest(manifest)
    return {"judge": ident, "scores": str(csv_path), "figure": str(figure), "cycles": len(cycles)}


def _scores_of(store: RunStore, k: int, ident: str) -> list[dict[str, Any]]:
    if ident == PRIMARY:
        return [{"question": r["question"], "sample": r.get("sample"), "trait": r.get("trait")} for r in store.read_rows(k, "eval")]
    path = store.judge_scores_path(k, ident)
    if not path.is_file():
        raise UserError(f"{store.cycle_dir(k).name} has no scores from judge '{ident}'; run `traitloop judge` with it first")
    return read_jsonl(path)


def summarise(store: RunStore, config: ExperimentConfig, cycles: list[int], ident: str) -> list[dict[str, Any]]:
    out = []
    for k in cycles:
        rows = _scores_of(store, k, ident)
        seed = derive_seed(config.seed, k, "bootstrap")
        t, c = intervals(rows, "trait", seed), intervals(rows, "coherence_judge", seed)
        out.append(
            {
                "cycle": k,
                "trait_mean": t[0],
                "trait_ci_low": t[1],
                "trait_ci_high": t[2],
                "n_trait_scored": t[3],
                "ci_unit": CI_UNIT,
                "coherence_judge_mean": c[0],
                "coherence_judge_ci_low": c[1],
                "coherence_judge_ci_high": c[2],
                "n_answers": len(rows),
            }
        )
    return out


def _with_loglik(store: RunStore, row: dict[str, Any]) -> dict[str, Any]:
    """The per-run figure draws coherence as log-likelihood; reuse the run's own values."""
    m = store.metrics(row["cycle"])
    return {**row, **{k: m[k] for k in ("coherence_mean", "coherence_ci_low", "coherence_ci_high")}}


def available_judges(run_dir: Path) -> list[str]:
    return RunStore(run_dir).judge_ids()


def agreement(run_dir: Path, judge_a: str = PRIMARY, judge_b: str | None = None) -> dict[str, Any]:
    """Spearman correlation and mean absolute difference of two judges' trait scores, per cycle and
    overall, over the answers both scored. Writes agreement.json, holding the run directory's lock as
    `judge_run` does (a run or a judge writing the directory refuses it: UserError naming the holder)."""
    store, _, _ = _open_run(run_dir)
    if judge_b is None:
        others = [j for j in available_judges(run_dir) if j != judge_a]
        if not others:
            raise UserError(f"{run_dir}: only one judge has scored this run; add one with `traitloop judge {run_dir} --judge ...`")
        judge_b = others[0]
    with store.locked():
        return _agreement_locked(run_dir, judge_a, judge_b)


def _agreement_locked(run_dir: Path, judge_a: str, judge_b: str) -> dict[str, Any]:
    from scipy.stats import spearmanr

    store, config, cycles = _open_run(run_dir)  # read again under the lock: a run may have finished cycles since

    def paired(k: int) -> tuple[np.ndarray, np.ndarray]:
        a = {(r["question"], r.get("sample")): r.get("trait") for r in _scores_of(store, k, judge_a)}
        b = {(r["question"], r.get("sample")): r.get("trait") for r in _scores_of(store, k, judge_b)}
        keys = [key for key in a if key in b and a[key] is not None and b[key] is not None]
        return np.array([a[key] for key in keys], dtype=float), np.array([b[key] for key in keys], dtype=float)

    def stats(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        rho = float(spearmanr(x, y)[0]) if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
        return {"n": int(len(x)), "spearman": rho, "mean_abs_diff": float(np.mean(np.abs(x - y))) if len(x) else float("nan")}

    per_cycle, all_a, all_b = {}, [], []
    for k in cycles:
        x, y = paired(k)
        per_cycle["base" if k == BASE else str(k)] = stats(x, y)
        all_a.append(x)
        all_b.append(y)
    result = {
        "judge_a": judge_a if judge_a != PRIMARY else f"{PRIMARY} ({config.judge.identity()})",
        "judge_b": judge_b,
        "overall": stats(np.concatenate(all_a), np.concatenate(all_b)),
        "per_cycle": per_cycle,
    }
    store.write_agreement(result)
    return result
