"""Plan an experiment before spending GPU hours: simulate runs of a given size with a given noise and
put them through the verdict code the reports use (traitloop.verdicts), to get

  false_amplified / false_decayed  how often "amplified" / "decayed" is called when nothing changes
  power                            how often it is called for a true rise of `effect` points over the run
  mde                              the smallest such rise called at least 80% of the time

One seed: the per-run verdict (decide_run). Several seeds: the condition's verdict (decide_condition).

The simulated score of sample j of question q at cycle c of seed s is
    clip(base + a_q + b_sc + g_scq + e_scqj + effect * c / (cycles - 1), 0, 100)
    a_q   ~ N(0, question_sd)        questions differ (the same questions for every seed and cycle)
    b_sc  ~ N(0, cycle_sd)           a cycle's model differs from the next by training randomness
    g_scq ~ N(0, question_cycle_sd)  and differs question by question
    e     ~ N(0, answer_sd)          samples of one question differ
The noise comes from finished runs (`noise_from_runs`, `traitloop power --from RUN|SWEEP`) or from
DEFAULT_NOISE, measured on the demo's sweep (docs/RESULTS.md says with which command).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from traitloop.analysis import Criteria, classify, eval_scores_by_question
from traitloop.verdicts import QuestionScores, SeedRun, decide_condition, decide_run

TARGET_POWER = 0.8


@dataclass(frozen=True)
class Design:
    cycles: int  # cycles scored, cycle 0 included (the demo's cycles: 3 -> 4 scored cycles)
    questions: int  # eval questions per cycle
    samples: int  # samples per question
    seeds: int = 1  # independent seeds per condition


@dataclass(frozen=True)
class Noise:
    base: float  # mean trait score at cycle 0
    question_sd: float
    answer_sd: float
    cycle_sd: float
    question_cycle_sd: float
    source: str = "default"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Measured with `traitloop power --from sweeps/bliss-init` on the demo sweep (docs/RESULTS.md); the
# model noise is the verdicts' default allowance (Criteria.cycle_sd), so the two stay one number.
DEFAULT_NOISE = Noise(
    base=61.7,
    question_sd=16.8,
    answer_sd=22.1,
    cycle_sd=Criteria().cycle_sd,
    question_cycle_sd=4.7,
    source="default: the demo sweep (docs/RESULTS.md)",
)


def simulate_means(design: Design, noise: Noise, effect: float, rng: np.random.Generator) -> np.ndarray:
    """Per-question mean scores of one simulated experiment: (seeds, cycles, questions)."""
    s, c, q, j = design.seeds, design.cycles, design.questions, design.samples
    trend = effect * np.arange(c) / max(1, c - 1)
    latent = (
        noise.base
        + rng.normal(0, noise.question_sd, (1, 1, q, 1))
        + rng.normal(0, noise.cycle_sd, (s, c, 1, 1))
        + rng.normal(0, noise.question_cycle_sd, (s, c, q, 1))
        + rng.normal(0, noise.answer_sd, (s, c, q, j))
        + trend[None, :, None, None]
    )
    return np.clip(latent, 0, 100).mean(axis=3)


RULES = ("tested", "screening")  # the verdict the reports give; the paper's screening flag alone (point means)


def outcome(means: np.ndarray, criteria: Criteria, seed: int, rule: str = "tested") -> str:
    """The verdict the reports would give one simulated experiment (rule "screening": what the
    paper's criteria alone would say of one run, for comparison)."""
    cycles = list(range(means.shape[1]))
    if rule == "screening":
        return classify(means[0].mean(axis=1).tolist(), criteria).verdict
    if means.shape[0] == 1:
        scores = QuestionScores(cycles, [str(i) for i in range(means.shape[2])], means[0])
        return decide_run(scores, criteria, seed=seed, intervals=False).verdict
    runs = [SeedRun(f"seed {i}", m.mean(axis=1).tolist(), cycle0_source=f"seed {i}") for i, m in enumerate(means)]
    return decide_condition(runs, criteria)["overall"]


def rates(
    design: Design, noise: Noise, effect: float, criteria: Criteria, n_sims: int, seed: int, rule: str = "tested"
) -> dict[str, float]:
    """Share of simulated experiments with each outcome (common random numbers: the same seed gives
    the same noise at every effect, so rates change smoothly with the effect)."""
    rng = np.random.default_rng(seed)
    found: dict[str, int] = {}
    for i in range(n_sims):
        verdict = outcome(simulate_means(design, noise, effect, rng), criteria, seed=seed + i, rule=rule)
        found[verdict] = found.get(verdict, 0) + 1
    return {k: v / n_sims for k, v in sorted(found.items())}


def true_end_delta(design: Design, noise: Noise, effect: float, seed: int, n: int = 20000) -> float:
    """The expected s_N - s_0 of one seed (the effect, bent by clipping at 0 and 100), by averaging
    very many simulated seeds."""
    curves = simulate_means(replace(design, seeds=n), noise, effect, np.random.default_rng(seed)).mean(axis=2)
    return float(np.mean(curves[:, -1] - curves[:, 0]))


def interval_coverage(design: Design, noise: Noise, effect: float, criteria: Criteria, n_sims: int, seed: int) -> float:
    """How often the condition's interval of s_N - s_0 over seeds covers the true value (nominal:
    criteria.level); every seed counts as independent here."""
    truth = true_end_delta(design, noise, effect, seed + 7)
    rng = np.random.default_rng(seed)
    covered = 0
    for _ in range(n_sims):
        means = simulate_means(design, noise, effect, rng)
        runs = [SeedRun(str(i), m.mean(axis=1).tolist(), cycle0_source=str(i)) for i, m in enumerate(means)]
        end = decide_condition(runs, replace(criteria, min_seeds=max(3, design.seeds)))["end_delta"]
        covered += end["low"] <= truth <= end["high"]
    return covered / n_sims


def _called(result: dict[str, float], direction: str) -> float:
    return sum(v for k, v in result.items() if k in (direction, f"replicated {'amplification' if direction == 'amplified' else 'decay'}"))


def minimum_detectable_effect(
    design: Design, noise: Noise, criteria: Criteria, n_sims: int, seed: int, resolution: float = 0.5, rule: str = "tested"
) -> float | None:
    """The smallest rise (points over the run) called amplified in >= 80% of simulations, by
    bisection on [0, 100 - base]; None when even the largest possible rise is not."""
    high = 100.0 - noise.base

    def power(effect: float) -> float:
        return _called(rates(design, noise, effect, criteria, n_sims, seed, rule), "amplified")

    if power(high) < TARGET_POWER:
        return None
    low = 0.0
    while high - low > resolution:
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid) < TARGET_POWER else (low, mid)
    return high


def plan(
    design: Design,
    noise: Noise = DEFAULT_NOISE,
    effect: float = 15.0,
    criteria: Criteria = Criteria(),
    n_sims: int = 1000,
    seed: int = 0,
    rule: str = "tested",
) -> dict[str, Any]:
    """Everything `traitloop power` prints, as one JSON-ready object."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}: choose one of {RULES}")
    if rule == "screening" and design.seeds != 1:
        raise ValueError("rule screening judges one run: use seeds 1")
    null = rates(design, noise, 0.0, criteria, n_sims, seed, rule)
    rise = rates(design, noise, effect, criteria, n_sims, seed + 1, rule)
    mde_sims = max(200, n_sims // 4)
    note = None
    if design.seeds > 1 and design.seeds < criteria.min_seeds:
        note = f"{design.seeds} seeds are fewer than min_seeds {criteria.min_seeds}: every condition verdict is 'insufficient seeds'"
    return {
        "design": asdict(design),
        "noise": noise.as_dict(),
        "criteria": asdict(criteria),
        "n_sims": n_sims,
        "false_amplified": _called(null, "amplified"),
        "false_decayed": _called(null, "decayed"),
        "false_amplified_mc_se": float(np.sqrt(max(_called(null, "amplified"), 1 / n_sims) * (1 - _called(null, "amplified")) / n_sims)),
        "effect": effect,
        "power": _called(rise, "amplified"),
        "mde": minimum_detectable_effect(design, noise, criteria, mde_sims, seed + 2, rule=rule),
        "rule": rule,
        "mde_sims": mde_sims,
        "interval_coverage": interval_coverage(design, noise, effect, criteria, n_sims, seed + 3) if design.seeds >= 3 else None,
        "outcomes_null": null,
        "outcomes_effect": rise,
        "note": note,
    }


# ---- the noise of finished runs ---------------------------------------------------------------------
def noise_from_runs(runs: list[list[list[dict[str, Any]]]], source: str) -> Noise:
    """Variance components from finished runs' eval rows (per run, per cycle, the eval.jsonl rows):
    answer_sd from samples within (cycle, question); question_sd from question means within a cycle;
    question_cycle_sd from how a question's mean moves between consecutive cycles beyond its samples'
    noise and beyond the move of the whole cycle; cycle_sd from how cycle 0 differs between runs that
    trained their own cycle 0 (identical cycles 0 count once), beyond what its questions explain; 0
    from a single cycle 0, which cannot tell."""
    within, between, moves, base, samples = [], [], [], [], []
    cycle0: dict[str, tuple[float, int]] = {}  # fingerprint -> (mean over questions, number of questions)
    for rows_per_cycle in runs:
        cells_per_cycle = []
        for rows in rows_per_cycle:
            cells = eval_scores_by_question(rows)
            cells_per_cycle.append(cells)
            within += [np.var(v, ddof=1) for v in cells.values() if len(v) > 1]
            samples += [len(v) for v in cells.values()]
            if len(cells) > 1:
                between.append(np.var([np.mean(v) for v in cells.values()], ddof=1))
        for a, b in zip(cells_per_cycle, cells_per_cycle[1:]):
            pair = np.array([np.mean(a[q]) - np.mean(b[q]) for q in a if q in b])
            moves += list(pair - pair.mean()) if pair.size > 1 else []  # the whole cycle's move is cycle noise (or trend)
        if cells_per_cycle and cells_per_cycle[0]:
            first = cells_per_cycle[0]
            means = [round(float(np.mean(v)), 6) for v in first.values()]
            cycle0.setdefault(json.dumps(sorted(zip(first, means))), (float(np.mean(means)), len(first)))
            base.append(np.mean([v for vs in first.values() for v in vs]))
    if not within or not between:
        raise ValueError("no cycle with two or more questions and two or more samples per question")
    answer_var = float(np.mean(within))
    per_question = answer_var / float(np.mean(samples))
    question_var = max(0.0, float(np.mean(between)) - per_question)
    move_var = float(np.var(moves, ddof=1)) if len(moves) > 1 else 0.0
    question_cycle_var = max(0.0, move_var / 2 - per_question)
    cycle_var = 0.0
    if len(cycle0) > 1:  # same questions in every run: only model, question-cycle and answer noise differ
        firsts = np.array([m for m, _ in cycle0.values()])
        n_questions = float(np.mean([n for _, n in cycle0.values()]))
        cycle_var = max(0.0, float(np.var(firsts, ddof=1)) - (question_cycle_var + per_question) / n_questions)
    return Noise(
        base=round(float(np.mean(base)), 2),
        question_sd=round(float(np.sqrt(question_var)), 2),
        answer_sd=round(float(np.sqrt(answer_var)), 2),
        cycle_sd=round(float(np.sqrt(cycle_var)), 2),
        question_cycle_sd=round(float(np.sqrt(question_cycle_var)), 2),
        source=f"{source}, {len(cycle0)} independent cycle 0",
    )


def with_overrides(noise: Noise, **values: float | None) -> Noise:
    """noise with the given components replaced (None leaves one as it is)."""
    return replace(noise, **{k: v for k, v in values.items() if v is not None})
