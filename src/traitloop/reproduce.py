"""`traitloop reproduce`: the paper's three findings, run as sweeps and set against what the paper reports.

    FINDINGS   what the paper reports, in this project's words, and for each condition that tests it
               (reset, continual) which replicated verdicts agree with the paper and which contradict it
    TIERS      quick / standard / full: each a list of ordinary sweep grid files shipped in
               configs/reproduce/ (`traitloop sweep FILE` runs any one of them alone); their comments say
               how `traitloop power` sized them
    plan       what a tier would run: conditions, seeds, runs (and runs already finished), estimated wall
               time from traitloop.estimate (`--dry-run`)
    run        every grid through traitloop.sweep (its local or Ray executor): finished runs are skipped,
               so rerunning the command resumes
    compare    traitloop.report_data.summarize over every finished run, then one row per comparison (a
               finding, or a finding at one value of another key the tier varies, such as n_sampled):
               each condition's replicated verdict, the interval of s_N - s_0 over its seeds, the seeds,
               and agrees / disagrees / inconclusive by the mapping below
    write      OUT/reproduction.md, OUT/reproduction.json, and OUT/report.html (+ report.md, figures/:
               every run on shared axes, the trade-off, and the data-quantity figure when n_sampled varies)

The mapping (MAPPING), first per condition, then per finding:
  a condition AGREES when its replicated verdict (traitloop.verdicts.decide_condition) is one the paper's
  claim predicts, DISAGREES when it is one the claim rules out, and is INCONCLUSIVE otherwise ("not
  replicated", "inconclusive", "insufficient seeds", or the condition was not run);
  a finding DISAGREES when any of its conditions disagrees, AGREES when every one of them agrees, and is
  INCONCLUSIVE otherwise.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitloop.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs" / "reproduce"
PAPER_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "paper"  # a source checkout's configs/paper

# ---- the findings --------------------------------------------------------------------------------
AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
AMPLIFIES = ("replicated amplification",)
HOLDS = ("replicated decay", "static")  # decays or stays level: replicated evidence of no rise


@dataclass(frozen=True)
class Expectation:
    """What the paper's claim says of one condition, as replicated verdicts."""

    init: str  # the condition: reset | continual
    claim: str  # in words
    agrees: tuple[str, ...]  # verdicts that agree with the claim
    disagrees: tuple[str, ...]  # verdicts that contradict it (anything else: inconclusive)


@dataclass(frozen=True)
class Finding:
    key: str  # the setting the finding is about (a condition's config `setting`)
    title: str
    paper: str  # what the paper reports, in this project's words
    short: str  # the same in one line, for the terminal
    expectations: tuple[Expectation, ...]


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "sft",
        "1. SFT (instruct model): reset vs continual",
        "Under SFT a seeded trait mostly fades or stays where it was, whether each cycle restarts from the base "
        "(reset) or keeps training the last cycle (continual); later cycles change little. Amplification is the "
        "exception, and where it happens it costs coherence and depends on how much data each cycle gets.",
        "reset and continual: the trait decays or holds; rare amplification costs coherence",
        (
            Expectation("reset", "decays or stays level", HOLDS, AMPLIFIES),
            Expectation("continual", "decays or stays level", HOLDS, AMPLIFIES),
        ),
    ),
    Finding(
        "sdf",
        "2. SDF (base model): reset vs continual",
        "A base model trained on documents it wrote itself behaves as under SFT: the trait mostly fades or "
        "holds, reset or continual; the rare amplification costs coherence.",
        "reset and continual: the trait decays or holds; rare amplification costs coherence",
        (
            Expectation("reset", "decays or stays level", HOLDS, AMPLIFIES),
            Expectation("continual", "decays or stays level", HOLDS, AMPLIFIES),
        ),
    ),
    Finding(
        "dpo",
        "3. DPO (instruct model): continual vs reset",
        "Under iterated DPO the trait grows reliably when training is continual (each cycle's policy and "
        "reference start from the last cycle), and the growth disappears when every cycle restarts from the base.",
        "continual: the trait amplifies, reliably; reset: it does not",
        (
            Expectation("continual", "amplifies", AMPLIFIES, HOLDS),
            Expectation("reset", "does not amplify (decays or stays level)", HOLDS, AMPLIFIES),
        ),
    ),
)
FINDING_OF = {f.key: f for f in FINDINGS}

# Points of trait score cycle 0 must rise above the base model for a condition to test the paper's claims
# (which are about a seeded trait): the paper's screening threshold, also the tiers' effect size.
SEEDING_LIFT_MIN = 15.0

MAPPING = (
    "Per condition: agrees when its replicated verdict is one the paper's claim predicts "
    "(amplifies: 'replicated amplification'; decays or stays level: 'replicated decay' or 'static'), disagrees "
    "when it is one the claim rules out (the other of those two groups), inconclusive otherwise ('not replicated', "
    "'inconclusive', 'insufficient seeds', or the condition was not run). Whatever its verdict, a condition whose "
    f"cycle 0 rose less than {SEEDING_LIFT_MIN:g} points above the base model on average over its seeds is "
    "inconclusive: the paper's claims are about a seeded trait, and the seeding did not instill one. Per finding: disagrees when any "
    "condition disagrees, agrees when every condition agrees, inconclusive otherwise. The coherence part of the "
    "SFT/SDF claim is reported (mean change over seeds) but not scored: coherence here is the log-likelihood "
    "under the base model, which measures how typical the text is, not whether it is coherent."
)


def condition_agreement(expectation: Expectation, verdict: str | None, seeding_lift: float | None = None) -> str:
    """agrees / disagrees / inconclusive for one condition's replicated verdict (None: not run), given how far
    its cycle 0 rose above the base model (None: the base model was not evaluated)."""
    if seeding_lift is not None and seeding_lift < SEEDING_LIFT_MIN:
        return INCONCLUSIVE
    if verdict in expectation.agrees:
        return AGREES
    if verdict in expectation.disagrees:
        return DISAGREES
    return INCONCLUSIVE


def finding_agreement(agreements: list[str]) -> str:
    """A finding's agreement from its conditions' (MAPPING)."""
    if DISAGREES in agreements:
        return DISAGREES
    if agreements and all(a == AGREES for a in agreements):
        return AGREES
    return INCONCLUSIVE


def compare_finding(finding: Finding, measured: dict[str, dict[str, Any] | None], label: str = "") -> dict[str, Any]:
    """One table row: `measured` maps init -> that condition's summary (report_data.condition_summary's
    dict: overall, reason, end_delta, n_seeds, n_independent, min_seeds, verdicts; optionally
    delta_coherence, seeding_lift and condition) or None when the condition was not run."""
    from traitloop.report_data import seed_interval, seeds_text

    conditions = []
    for expectation in finding.expectations:
        m = measured.get(expectation.init)
        verdict = m["overall"] if m else None
        entry: dict[str, Any] = {
            "init": expectation.init,
            "paper_expects": expectation.claim,
            "verdict": verdict or "not run",
            "agreement": condition_agreement(expectation, verdict, m.get("seeding_lift") if m else None),
        }
        if m:
            entry.update(
                condition=m.get("condition", ""),
                reason=m.get("reason", ""),
                end_delta=m["end_delta"],
                end_delta_text=seed_interval(m, "end_delta", 1),
                seeds=seeds_text(m),
                n_seeds=m["n_seeds"],
                n_independent=m["n_independent"],
                min_seeds=m["min_seeds"],
                run_verdicts=m.get("verdicts", {}),
                delta_coherence=m.get("delta_coherence"),
                seeding_lift=m.get("seeding_lift"),
            )
        conditions.append(entry)
    agreement = finding_agreement([c["agreement"] for c in conditions])
    return {
        "finding": finding.key,
        "title": finding.title + (f" ({label})" if label else ""),
        "label": label,
        "paper": finding.paper,
        "paper_short": finding.short,
        "conditions": conditions,
        "agreement": agreement,
        "why": agreement_reason(conditions, agreement),
    }


def agreement_reason(conditions: list[dict[str, Any]], agreement: str) -> str:
    def said(c: dict[str, Any]) -> str:
        lift = c.get("seeding_lift")
        unseeded = f", but not seeded: cycle 0 {lift:+.1f} over the base model" if lift is not None and lift < SEEDING_LIFT_MIN else ""
        return f"{c['init']} {c['verdict']} (paper: {c['paper_expects']}{unseeded})"

    if agreement == DISAGREES:
        return "contradicted by " + "; ".join(said(c) for c in conditions if c["agreement"] == DISAGREES)
    if agreement == AGREES:
        return "every condition as the paper says: " + "; ".join(said(c) for c in conditions)
    return "not decided by " + "; ".join(said(c) for c in conditions if c["agreement"] == INCONCLUSIVE)


# ---- the tiers -----------------------------------------------------------------------------------
TIERS: dict[str, tuple[str, ...]] = {
    "quick": ("quick-sft.yaml", "quick-sdf.yaml", "quick-dpo.yaml"),
    "standard": ("standard-sft.yaml", "standard-sdf.yaml", "standard-dpo.yaml", "standard-sft-data.yaml"),
    "full": ("full-sft.yaml", "full-sdf.yaml", "full-dpo.yaml"),
}
GPU_TIERS = ("full",)  # paper-scale configs (configs/paper): hub models of billions of parameters, an API judge


def tier_grids(tier: str) -> list[Path]:
    if tier not in TIERS:
        raise UserError(f"unknown tier {tier!r}: choose {', '.join(TIERS)}")
    return [CONFIG_DIR / name for name in TIERS[tier]]


def default_out(tier: str) -> Path:
    return Path("reproduce") / tier


def load_tier(tier: str, grids: list[Path], out: Path, absolute: bool = False) -> list:
    """Every grid of the tier as a validated traitloop.sweep.Sweep under out/<grid name>; nothing is written.
    Bad input is a UserError naming the grid file."""
    from traitloop.sweep import load_sweep

    if tier == "full" and not PAPER_CONFIGS.is_dir():
        raise UserError(
            f"--full runs the paper-scale configs in configs/paper/ of a source checkout of traitloop, and this "
            f"installation has none (looked in {PAPER_CONFIGS}); clone the repository and run it from there"
        )
    sweeps = [load_sweep(grid, out, absolute=absolute) for grid in grids]
    names = [s.name for s in sweeps]
    if len(set(names)) < len(names):
        raise UserError(f"two grid files share a sweep name ({', '.join(names)}): each needs its own directory under {out}")
    return sweeps


# ---- the plan (--dry-run) --------------------------------------------------------------------------
def sweep_conditions(sweep) -> list[dict[str, Any]]:
    """A sweep's conditions (runs equal but for the seed) with their seeds and finished runs."""
    from traitloop.sweep import is_finished

    groups: dict[str, dict[str, Any]] = {}
    for run in sweep.runs:
        key = json.dumps(run.config.condition_dict(), sort_keys=True)
        label = ", ".join(f"{k}={v}" for k, v in run.values.items() if k != "seed") or "all runs"
        group = groups.setdefault(
            key,
            {
                "label": label,
                "setting": run.config.setting,
                "init": run.config.init,
                "seeds": [],
                "runs": 0,
                "finished": 0,
                "shared_cycle0": 0,
            },
        )
        group["seeds"].append(run.config.seed)
        group["runs"] += 1
        group["finished"] += is_finished(run.config)
        group["shared_cycle0"] += run.config.cycle0_from is not None
    return list(groups.values())


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of runs started in order, each on the first free one of `workers` slots."""
    slots = [0.0] * max(1, workers)
    for s in seconds:
        i = slots.index(min(slots))
        slots[i] += s
    return max(slots) if seconds else 0.0


def plan(sweeps: list, jobs: int | None, executor: str = "local", with_estimate: bool = True) -> dict[str, Any]:
    """What the tier would run, per sweep: conditions, seeds, runs, finished runs, and (when this machine's
    throughput is measured: $TRAITLOOP_CACHE/throughput.json) the estimated time per run and wall time."""
    from traitloop.estimate import measured_profile
    from traitloop.sweep import is_finished

    throughput = None
    if with_estimate:
        from traitloop.estimate import load_throughput

        throughput = load_throughput()
    out: dict[str, Any] = {"sweeps": [], "notes": [], "runs": 0, "to_run": 0, "run_seconds": None, "wall_seconds": None}
    if not with_estimate:
        out["notes"].append("no time estimate: paper-scale runs on GPUs; this machine's measured throughput does not describe them")
    total_run_s = total_wall_s = 0.0
    estimated = False
    for sweep in sweeps:
        todo = [r for r in sweep.runs if not is_finished(r.config)]
        entry: dict[str, Any] = {
            "name": sweep.name,
            "root": str(sweep.root),
            "conditions": sweep_conditions(sweep),
            "runs": len(sweep.runs),
            "to_run": len(todo),
        }
        finished = [r.config.run_dir for r in sweep.runs if r not in todo]
        profile = measured_profile(finished) if with_estimate else {}
        if throughput is not None or profile:
            seconds = run_seconds(todo, throughput, profile, out["notes"])
            if profile and seconds is not None:
                out["notes"].append(
                    f"{sweep.name}: the runs to go are estimated from the stage timings of its {len(finished)} finished "
                    "run(s) (each cycle's median), at the load they ran under, where those cover them"
                )
            if seconds is not None:
                estimated = True
                entry["run_seconds"] = seconds
                entry["wall_seconds"] = makespan(seconds, jobs or 1) if executor == "local" else None
                total_run_s += sum(seconds)
                total_wall_s += entry["wall_seconds"] or 0.0
            if throughput is not None:
                out["throughput"] = {k: throughput.get(k) for k in ("source", "measured_at", "threads")}
        out["sweeps"].append(entry)
        out["runs"] += entry["runs"]
        out["to_run"] += entry["to_run"]
    if with_estimate and throughput is None and not estimated:
        out["notes"].append(
            "no time estimate: this machine's throughput is not measured yet (`traitloop run CONFIG --dry-run` "
            "measures it in about 20 s, `python -m bench` fully)"
        )
    if estimated:
        out["run_seconds"] = total_run_s
        out["wall_seconds"] = total_wall_s if executor == "local" else None
    out["jobs"] = jobs or 1
    out["executor"] = executor
    out["published"] = any(r.config.publish_cycle0 for sweep in sweeps for r in sweep.runs)
    out["notes"] = list(dict.fromkeys(out["notes"]))
    return out


def run_seconds(todo: list, throughput: dict[str, Any] | None, profile: dict[int, float], notes: list[str]) -> list[float] | None:
    """Estimated seconds of each run to go: from the grid's own finished runs (`profile`, each cycle's median
    seconds) where they cover it, else from this machine's throughput; None when some run has neither. The
    second run of a seed's cycle-0 config under publish_cycle0 is planned as copying cycle 0 and the base
    evaluation."""
    from traitloop.estimate import estimate, remaining_from_profile

    seconds, published = [], set()
    for run in todo:
        config, copies = run.config, False
        if config.publish_cycle0:
            cache = config.cycle0_config().run_dir
            copies = cache in published
            published.add(cache)
            if copies:
                config = config.model_copy(update={"cycle0_from": cache})
        left = remaining_from_profile(config, profile, copies_cycle0=copies) if profile else None
        if left is None and throughput is None:
            return None
        if left is None:
            est = estimate(config, throughput)
            left = float(est["totals"]["seconds"])
            notes.extend(n for n in est["notes"] if "already done" not in n)
        seconds.append(left)
    return seconds


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    seconds = int(round(seconds))
    h, m = seconds // 3600, seconds % 3600 // 60
    return f"{h}h {m:02d}m" if h else f"{m}m {seconds % 60:02d}s"


def plan_table(tier: str, p: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    where = p.get("throughput") or {}
    caption = [
        f"{p['runs']} runs, {p['to_run']} to run; executor {p['executor']}"
        + (f", {p['jobs']} at a time" if p["executor"] == "local" else ""),
        "every seed trains its own cycle 0 (independent replications) unless marked shared"
        + ("; the inits of a seed compute it, and the base evaluation, once (publish_cycle0)" if p.get("published") else ""),
    ]
    if p["run_seconds"] is not None:
        caption.append(
            f"estimated: {duration(p['run_seconds'])} of run time"
            + (
                f", about {duration(p['wall_seconds'])} wall time at {p['jobs']} at a time (sweeps one after another)"
                if p["wall_seconds"] is not None
                else " (wall time: divide by the runs Ray runs at once)"
            )
        )
        caption.append(f"throughput: {where.get('source')}, measured {where.get('measured_at')} with {where.get('threads')} thread(s)")
    caption += [f"note: {n}" for n in p["notes"]]
    table = Table(title=f"traitloop reproduce --{tier} --dry-run: nothing is run or written", caption=escape("\n".join(caption)))
    for col in ["sweep", "condition", "seeds", "runs (finished)", "est. per run", "est. wall"]:
        table.add_column(col)
    for s in p["sweeps"]:
        per_run = s.get("run_seconds")
        for i, c in enumerate(s["conditions"]):
            seeds = ",".join(map(str, c["seeds"])) + (f" ({c['shared_cycle0']} share a cycle 0)" if c["shared_cycle0"] else "")
            table.add_row(
                s["name"] if i == 0 else "",
                f"{c['setting']} {c['label']}",
                seeds,
                f"{c['runs']} ({c['finished']})",
                duration(max(per_run)) if (i == 0 and per_run) else "",
                duration(s.get("wall_seconds")) if (i == 0 and per_run is not None) else "",
            )
    return table


# ---- running -------------------------------------------------------------------------------------
def make_executor(
    executor: str,
    jobs: int | None,
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: float | None = None,
    max_retries: int | None = None,
    reporter=None,
):
    """The sweep's executor from the command line (the same rules as `traitloop sweep`)."""
    from traitloop.sweep import LocalExecutor

    ray_only = {"--address": address, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run, "--max-retries": max_retries}
    if executor == "local":
        given = ", ".join(k for k, v in ray_only.items() if v is not None)
        if given:
            raise UserError(f"{given}: only with --executor ray")
        return LocalExecutor(workers=jobs or 1)
    if executor != "ray":
        raise UserError(f"--executor {executor}: choose local or ray")
    if jobs is not None:
        raise UserError("--jobs: only with --executor local (Ray runs as many at a time as --gpus-per-run / --cpus-per-run allow)")
    from traitloop.sweep import RayExecutor

    return RayExecutor(
        address=address,
        gpus_per_run=gpus_per_run,
        cpus_per_run=cpus_per_run or 1.0,
        max_retries=2 if max_retries is None else max_retries,
        reporter=reporter,
    )


def run_tier(sweeps: list, executor, reporter=None) -> dict[str, dict[str, dict[str, Any]]]:
    """Every sweep through traitloop.sweep.run_sweep, one after another; status.json's runs per sweep."""
    from traitloop.sweep import run_sweep

    statuses = {}
    try:
        for sweep in sweeps:
            statuses[sweep.name] = run_sweep(sweep, executor, reporter=reporter)
    finally:
        close = getattr(executor, "close", None)
        if close:
            close()
    return statuses


# ---- comparing -------------------------------------------------------------------------------------
def finished_roots(sweeps: list) -> list[Path]:
    """The sweep directories holding at least one finished run (scores.csv)."""
    return [s.root for s in sweeps if any((s.root / "runs").glob("*/scores.csv"))]


def run_times(sweeps: list) -> list[dict[str, Any]]:
    """Per grid, the seconds its finished runs spent, summed over the stage timings their manifests recorded
    (estimate.measured_cycle_seconds: a cycle 0 and base evaluation copied from the seed's other run cost
    nothing). Run time, not wall time: runs that ran side by side, or across restarts, count each."""
    from traitloop.estimate import measured_stage_seconds
    from traitloop.sweep import is_finished

    times = []
    for sweep in sweeps:
        per_run = [measured_stage_seconds(r.config.run_dir) for r in sweep.runs if is_finished(r.config)]
        seconds = [sum(stages.values()) for stages in per_run]
        if seconds:
            stages: dict[str, float] = {}
            for run in per_run:
                for stage, s in run.items():
                    stages[stage] = stages.get(stage, 0.0) + s
            times.append(
                {
                    "grid": sweep.root.name,
                    "runs": len(seconds),
                    "seconds": sum(seconds),
                    "min_s": min(seconds),
                    "max_s": max(seconds),
                    "stages": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
                }
            )
    return times


def run_commits(sweeps: list) -> dict[str, int]:
    """How many finished runs each traitloop commit last opened (manifest versions.traitloop_commit;
    "not recorded" for runs made before it was): the table's commit is the one that wrote it."""
    from collections import Counter

    from traitloop.store import RunStore
    from traitloop.sweep import is_finished

    commits = Counter(
        RunStore(r.config.run_dir).manifest().get("versions", {}).get("traitloop_commit", "not recorded")
        for s in sweeps
        for r in s.runs
        if is_finished(r.config)
    )
    return dict(sorted(commits.items()))


def seeding_lift(runs: list) -> float | None:
    """Mean over runs of the trait score at cycle 0 minus the base model's (how much the seeding instilled);
    None when no run evaluated the base model."""
    lifts = [r.trait_curve[0] - r.base["trait_mean"] for r in runs if r.base and r.base.get("trait_mean") is not None and r.rows]
    lifts = [v for v in lifts if math.isfinite(v)]
    return sum(lifts) / len(lifts) if lifts else None


def seeding_note(title: str, lift: float | None) -> str | None:
    """A note for a condition whose seeding instilled less than SEEDING_LIFT_MIN points (None otherwise)."""
    if lift is None or lift >= SEEDING_LIFT_MIN:
        return None
    return (
        f"{title}: cycle 0 scores only {lift:+.1f} above the base model on average over its seeds (under the "
        f"{SEEDING_LIFT_MIN:g}-point screening threshold): the seeding barely instilled the trait, so its verdict says "
        "little about what happens to an instilled one and it counts as inconclusive; seed with more data (n_seed, "
        "`traitloop calibrate`) to test the claim"
    )


def comparisons(collection, summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per comparison: the conditions of one finding (same setting) that are equal in every key
    but init; a tier that also varies another key (n_sampled) gets one row per value. Also notes on
    conditions that belong to no finding."""
    from traitloop.report_data import differing_keys, science

    deltas = {r["run"]: r["delta_coherence"] for r in summary["runs"]}
    groups: dict[str, dict[str, Any]] = {}
    notes = []
    for condition, csum in zip(collection.conditions, summary["conditions"]):
        cfg = condition.runs[0].config
        finding = FINDING_OF.get(str(cfg.get("setting")))
        init = str(cfg.get("init"))
        if finding is None or init not in {e.init for e in finding.expectations}:
            notes.append(f"{condition.title}: setting {cfg.get('setting')} / init {init} is part of no finding; it is in report.html only")
            continue
        rest = {k: v for k, v in science(cfg).items() if k != "init"}
        key = finding.key + "|" + json.dumps(rest, sort_keys=True, default=str)
        while key in groups and init in groups[key]["measured"]:  # the same condition twice (two sources): keep both
            key += "+"
        group = groups.setdefault(key, {"finding": finding, "rest": rest, "measured": {}})
        values = [deltas.get(name) for name in csum["runs"]]
        values = [v for v in values if v is not None and math.isfinite(v)]
        lift = seeding_lift(condition.runs)
        group["measured"][init] = {**csum, "delta_coherence": sum(values) / len(values) if values else None, "seeding_lift": lift}
        note = seeding_note(condition.title, lift)
        if note:
            notes.append(note)
    rows = []
    for finding in FINDINGS:
        mine = [g for g in groups.values() if g["finding"] is finding]
        keys = differing_keys([g["rest"] for g in mine])
        for g in mine:
            label = ", ".join(f"{k}={g['rest'].get(k)}" for k in keys)
            rows.append(compare_finding(finding, g["measured"], label))
    return rows, notes


def data_quantity_note(collection) -> tuple[bool, str]:
    """Whether report.html holds the data-quantity figure, and a note saying so either way."""
    from traitloop.report_data import n_sampled_series

    if n_sampled_series(collection.conditions):
        return True, (
            "data quantity: n_sampled varies, so report.html has the figure 'Trait change vs n_sampled' "
            "(figures/n_sampled.png: s_N - s_0 per run against n_sampled, with the mean and a 95% t-interval per value)"
        )
    values = sorted({str(r.config.get("n_sampled")) for r in collection.runs})
    return False, (
        f"data quantity: n_sampled does not vary within any finding here (values used: {', '.join(values)}), so there "
        "is no data-quantity figure, and the paper's claim that the rare amplification depends on how much data each "
        "cycle gets is not tested by this run (the standard tier varies n_sampled for SFT)"
    )


def missing_findings(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["finding"] for r in rows}
    return [f.title for f in FINDINGS if f.key not in present]


# ---- writing ---------------------------------------------------------------------------------------
def measured_text(condition: dict[str, Any], sep: str = "; ") -> str:
    """'reset: replicated decay; s_N - s_0 -23.3 [-41.6, -4.9]; 5 seeds; coherence +0.05' for one condition."""
    if condition["verdict"] == "not run":
        return f"{condition['init']}: not run"
    parts = [f"{condition['init']}: {condition['verdict']}", f"s_N - s_0 {condition['end_delta_text']}", f"{condition['seeds']} seeds"]
    counts = {k: v for k, v in (condition.get("run_verdicts") or {}).items() if v}
    if counts:
        parts.append("per run " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    lift = condition.get("seeding_lift")
    if lift is not None:
        parts.append(f"cycle 0 {lift:+.1f} over the base model")
    dc = condition.get("delta_coherence")
    if dc is not None:
        parts.append(f"coherence {dc:+.3f} nats/token")
    return sep.join(parts)


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# traitloop reproduce: {result['tier']}",
        "",
        f"- commit `{result['commit']}`, machine: {result['machine']}, written {result['written']}",
        f"- grids: {', '.join(result['grids'])}",
        "- runs made at: " + ", ".join(f"{commit} ({n})" for commit, n in result["run_commits"].items()),
        f"- runs: {result['runs_finished']} finished of {result['runs_total']}"
        + (f"; {result['runs_failed']} failed (see each sweep's status.json and logs/)" if result["runs_failed"] else ""),
        f"- a replicated verdict needs {result['min_seeds']} independent seeds (`--min-seeds`); the rule is in report.html",
        "",
        "| finding | what the paper reports | what traitloop measured | agreement |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        measured = "<br>".join(md_cell(measured_text(c)) for c in row["conditions"])
        lines.append(f"| {md_cell(row['title'])} | {md_cell(row['paper'])} | {measured} | **{row['agreement']}**: {md_cell(row['why'])} |")
    lines += [
        "",
        "## Run time",
        "",
        "Each finished run's recorded stage timings, summed (not wall time: runs side by side count each):",
        "",
    ]
    for t in result["run_time"]:
        shares = ", ".join(f"{stage} {seconds / t['seconds']:.0%}" for stage, seconds in t["stages"].items() if t["seconds"])
        lines.append(
            f"- {t['grid']}: {duration(t['seconds'])} over {t['runs']} run(s), {duration(t['min_s'])} to {duration(t['max_s'])} "
            f"each; {shares}"
        )
    lines += ["", "## How the agreement column is decided", "", result["mapping"], "", "## Notes", ""]
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", f"Every run, condition and figure: [report.html]({result['report']}) (and report.md)."]
    return "\n".join(lines) + "\n"


def console_table(result: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"traitloop reproduce --{result['tier']}", show_lines=True)
    for col, width in (("finding", 22), ("what the paper reports", 40), ("what traitloop measured", 48), ("agreement", 14)):
        table.add_column(col, max_width=width, overflow="fold")
    for row in result["rows"]:
        cells = [row["title"], row["paper_short"], "\n".join(measured_text(c) for c in row["conditions"]), row["agreement"]]
        table.add_row(*(escape(c) for c in cells))
    return table


def machine_text() -> str:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model or 'CPU'}, {os.cpu_count()} cores, {platform.system()}"


def write_results(
    tier: str, sweeps: list, out: Path, criteria, commit: str, statuses: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Read every finished run of the tier, compare with the paper and write OUT/reproduction.md,
    OUT/reproduction.json and OUT/report.html (+ report.md, figures/). None when no run has finished."""
    from traitloop.jsonl import atomic_write_text, write_json
    from traitloop.report_data import clean, judge_warning, load_collection, summarize
    from traitloop.report_html import write_outputs
    from traitloop.sweep import is_finished

    roots = finished_roots(sweeps)
    if not roots:
        return None
    collection = load_collection(roots, f"traitloop reproduce --{tier}")
    summary = clean(summarize(collection, criteria))
    rows, notes = comparisons(collection, summary)
    html_path = write_outputs(collection, out, "report", criteria)
    _, data_note = data_quantity_note(collection)
    notes.append(data_note)
    missing = missing_findings(rows)
    if missing:
        notes.append("not run in this tier (no finished run): " + "; ".join(missing))
    warning = judge_warning(collection.runs)
    if warning:
        notes.append(warning)
    notes.append(
        f"the per-run verdicts allow for {criteria.cycle_sd:g} points of model-to-model noise per cycle, measured on the SFT demo "
        "sweep (docs/RESULTS.md); `traitloop power --from OUT/<sweep>` measures this tier's own"
    )
    all_runs = [r for s in sweeps for r in s.runs]
    failed = sum(1 for runs in (statuses or {}).values() for e in runs.values() if e.get("status") == "failed")
    result = {
        "tier": tier,
        "commit": commit,
        "machine": machine_text(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "grids": [str(s.root / "sweep.yaml") for s in sweeps],
        "min_seeds": criteria.min_seeds,
        "runs_total": len(all_runs),
        "runs_finished": sum(is_finished(r.config) for r in all_runs),
        "runs_failed": failed,
        "run_time": run_times(sweeps),
        "run_commits": run_commits(sweeps),
        "mapping": MAPPING,
        "rows": rows,
        "notes": notes,
        "report": html_path.name,
        "findings": [
            {
                "key": f.key,
                "title": f.title,
                "paper": f.paper,
                "expects": {e.init: {"claim": e.claim, "agrees": list(e.agrees), "disagrees": list(e.disagrees)} for e in f.expectations},
            }
            for f in FINDINGS
        ],
    }
    write_json(out / "reproduction.json", clean(result))
    atomic_write_text(out / "reproduction.md", render_markdown(result))
    return result


# ---- the command -----------------------------------------------------------------------------------
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pick_tier(quick: bool, standard: bool, full: bool, grids: list[Path]) -> tuple[str, list[Path]]:
    """The tier from --quick / --standard / --full (default quick), or the grid files given with --grid."""
    chosen = [name for name, flag in (("quick", quick), ("standard", standard), ("full", full)) if flag]
    if len(chosen) > 1:
        raise UserError(f"--{' and --'.join(chosen)}: choose one tier")
    if grids:
        if chosen:
            raise UserError(f"--grid and --{chosen[0]}: give a tier or grid files, not both")
        missing = [str(g) for g in grids if not Path(g).is_file()]
        if missing:
            raise UserError(f"--grid: grid file not found: {', '.join(missing)}")
        return "grid", [Path(g) for g in grids]
    tier = chosen[0] if chosen else "quick"
    return tier, tier_grids(tier)


def command(
    quick: bool = False,
    standard: bool = False,
    full: bool = False,
    grids: list[Path] | None = None,
    out: Path | None = None,
    jobs: int | None = None,
    executor: str = "local",
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: float | None = None,
    max_retries: int | None = None,
    min_seeds: int = 5,
    dry_run: bool = False,
    commit: str = "unknown",
    console=None,
) -> int:
    """`traitloop reproduce`: validate every grid, then plan (--dry-run) or run, compare and write; the exit code
    (0: every run done, 1: some run failed or none finished; bad input is a UserError, exit 2)."""
    from rich.console import Console

    from traitloop.analysis import Criteria
    from traitloop.progress import Reporter
    from traitloop.sweep import exit_code, summary_table
    from traitloop.verdicts import check_min_seeds

    console = console or Console()
    check_min_seeds(min_seeds)
    tier, grid_files = pick_tier(quick, standard, full, list(grids or []))
    out = Path(out) if out is not None else default_out("custom" if tier == "grid" else tier)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    reporter = Reporter()
    runner = make_executor(executor, jobs, address, gpus_per_run, cpus_per_run, max_retries, reporter)  # checks the flags
    sweeps = load_tier(tier, grid_files, out, absolute=executor == "ray")  # validates every run: nothing written yet
    # this machine's measured throughput says nothing about a GPU's: no time estimate for the GPU tier
    with_estimate = tier not in GPU_TIERS
    if dry_run:
        console.print(plan_table(tier, plan(sweeps, jobs, executor, with_estimate)))
        return 0
    if tier in GPU_TIERS and executor == "local" and not cuda_available():
        console.print(plan_table(tier, plan(sweeps, jobs, executor, with_estimate)))
        raise UserError(
            f"--{tier} runs the paper-scale configs (configs/paper: 4B-9B hub models, an API judge), one GPU per run; this "
            "machine has no CUDA GPU. Run it on a GPU cluster with --executor ray (docs/SCALE.md) or on a machine with a CUDA "
            "GPU; the plan it would run is above. On a CPU, use --quick or --standard."
        )
    statuses = run_tier(sweeps, runner, reporter)
    for sweep in sweeps:
        console.print(summary_table(sweep, statuses[sweep.name]))
    result = write_results(tier, sweeps, out, Criteria(min_seeds=min_seeds), commit, statuses)
    if result is None:
        console.print("[red]no run finished[/red]: nothing to compare; each sweep's status.json and logs/ say why")
        return 1
    console.print(console_table(result))
    for note in result["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"table:   {out / 'reproduction.md'}\njson:    {out / 'reproduction.json'}\nreport:  {out / result['report']}")
    return max(exit_code(runs) for runs in statuses.values()) if statuses else 0
