"""`traitloop reproduce`: the tiers' grid files, the agree / disagree / inconclusive mapping, and the command
end to end on a tiny random Llama (real `traitloop run` subprocesses with the probe judge; about a minute or
two on 2 idle cores).

(a) every tier expands to the findings' conditions with >= 5 independent seeds each, passes the sweep's input
    checks (trait data, prompt-pool size for the last cycle, model vs setting) without preparing or loading a
    model, and its `traitloop power` comment names the design the file runs;
(b) the findings table's agreement column is exactly what the mapping says, for synthetic condition
    summaries and for summaries from traitloop.verdicts.decide_condition;
(c) `traitloop reproduce --grid` runs, writes reproduction.md/.json and report.html with one row per finding
    present, and a rerun resumes without re-running finished runs.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop import models, reproduce
from traitloop.cli import main
from traitloop.prompts import cycle_prompts, pool_file
from traitloop.reproduce import (
    AGREES,
    AMPLIFIES,
    DISAGREES,
    FINDING_OF,
    FINDINGS,
    HOLDS,
    INCONCLUSIVE,
    compare_finding,
    condition_agreement,
    duration,
    finding_agreement,
    load_tier,
    tier_grids,
)
from traitloop.settings import get_setting
from traitloop.store import git_commit
from traitloop.sweep import read_status
from traitloop.traits import load_trait

FINDING_CONDITIONS = {
    ("sft", "reset"),
    ("sft", "continual"),
    ("sdf", "reset"),
    ("sdf", "continual"),
    ("dpo", "continual"),
    ("dpo", "reset"),
}


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `traitloop ARGS` in this process: (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["traitloop", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    output = capsys.readouterr()
    return code, output.out + output.err


# ---- (a) the tiers -------------------------------------------------------------------------------------
@pytest.fixture
def no_model_prepared(monkeypatch):
    """Embedded models are checked by name and kind only: nothing is dequantized, cached or loaded."""
    monkeypatch.setattr(models, "prepare_embedded", lambda name, force=False: Path("/nonexistent-model-dir") / name)


def power_design(grid: Path) -> dict[str, int]:
    """The design in the grid file's sizing comment: `traitloop power --cycles C --questions Q --samples S --seeds N`."""
    match = re.search(r"traitloop power --cycles (\d+) --questions (\d+) --samples (\d+) --seeds (\d+)", grid.read_text())
    assert match, f"{grid.name}: no `traitloop power` sizing comment"
    return dict(zip(["cycles", "questions", "samples", "seeds"], map(int, match.groups())))


@pytest.mark.parametrize("tier", ["quick", "standard", "full"])
def test_every_tier_runs_the_findings_with_five_or_more_independent_seeds_and_valid_inputs(tier, tmp_path, no_model_prepared):
    sweeps = load_tier(tier, tier_grids(tier), tmp_path / "out")  # the sweep's own validation, input checks included
    assert not (tmp_path / "out").exists()  # nothing written
    seen = set()
    for sweep, grid in zip(sweeps, tier_grids(tier)):
        assert sweep.root == tmp_path / "out" / sweep.name
        design = power_design(grid)
        conditions: dict[str, list] = {}
        for run in sweep.runs:
            conditions.setdefault(json.dumps(run.config.condition_dict(), sort_keys=True), []).append(run.config)
        for configs in conditions.values():
            cfg = configs[0]
            seen.add((cfg.setting, cfg.init))
            seeds = [c.seed for c in configs]
            assert len(set(seeds)) == len(seeds) >= 5, f"{grid.name}: {cfg.setting}/{cfg.init} has seeds {seeds}"
            assert all(c.cycle0_from is None for c in configs), "every seed must train its own cycle 0"
            setting = get_setting(cfg.setting)
            # the prompt pool holds the last cycle's slice (what loop.Experiment.check_inputs checks)
            assert len(cycle_prompts(setting.pool(pool_file(cfg, setting)), cfg.cycles, cfg.n_sampled, cfg.seed)) == cfg.n_sampled
            questions = {row["question"] for row in setting.eval_items(load_trait(cfg.trait), cfg)}
            # the grid's sizing comment describes what it runs
            assert design == {
                "cycles": cfg.cycles + 1,
                "questions": len(questions),
                "samples": cfg.eval.samples_per_question,
                "seeds": len(seeds),
            }, grid.name
            if tier != "full":
                expected_model = "embedded:gemma3-270m" if cfg.setting == "sdf" else "embedded:smollm2-135m-instruct"
                assert cfg.model.ref == expected_model and cfg.judge.kind == "probe"
        assert not sweep.grid_text.count("share_cycle0: true")
    assert seen == FINDING_CONDITIONS
    sft_n_sampled = {r.config.n_sampled for s in sweeps for r in s.runs if r.config.setting == "sft"}
    if tier == "standard":  # the data-quantity study: SFT at three n_sampled, both inits each
        assert len(sft_n_sampled) == 3
        for n in sft_n_sampled:
            assert {r.config.init for s in sweeps for r in s.runs if r.config.setting == "sft" and r.config.n_sampled == n} == {
                "reset",
                "continual",
            }
    else:
        assert len(sft_n_sampled) == 1


def test_the_tier_files_are_package_data():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"configs/reproduce/*.yaml"' in text
    for tier in reproduce.TIERS:
        assert all(path.is_file() for path in tier_grids(tier))


# ---- (b) the mapping -------------------------------------------------------------------------------------
VERDICTS = ["replicated amplification", "replicated decay", "static", "not replicated", "inconclusive", "insufficient seeds (3 of 5)", None]


def summary(overall: str, n: int = 5, mean: float = 0.0, half: float = 10.0) -> dict:
    """A condition summary as report_data.condition_summary gives it (the keys the table reads)."""
    return {
        "overall": overall,
        "reason": "synthetic",
        "n_seeds": n,
        "n_independent": n,
        "min_seeds": 5,
        "end_delta": {"mean": mean, "low": mean - half, "high": mean + half},
        "verdicts": {"amplified": 1, "static": 2, "decayed": 2, "inconclusive": 0},
        "delta_coherence": -0.1,
    }


@pytest.mark.parametrize("verdict", VERDICTS)
def test_a_condition_agrees_disagrees_or_is_inconclusive_exactly_as_the_mapping_says(verdict):
    holds = FINDING_OF["sft"].expectations[0]  # decays or stays level
    amplifies = FINDING_OF["dpo"].expectations[0]  # continual DPO amplifies
    assert (holds.init, amplifies.init) == ("reset", "continual")
    expected_holds = {"replicated decay": AGREES, "static": AGREES, "replicated amplification": DISAGREES}.get(verdict, INCONCLUSIVE)
    expected_amplifies = {"replicated amplification": AGREES, "replicated decay": DISAGREES, "static": DISAGREES}.get(verdict, INCONCLUSIVE)
    assert condition_agreement(holds, verdict) == expected_holds
    assert condition_agreement(amplifies, verdict) == expected_amplifies


def test_the_findings_say_what_the_paper_reports():
    assert [f.key for f in FINDINGS] == ["sft", "sdf", "dpo"]
    for key in ("sft", "sdf"):
        assert {e.init: (e.agrees, e.disagrees) for e in FINDING_OF[key].expectations} == {
            "reset": (HOLDS, AMPLIFIES),
            "continual": (HOLDS, AMPLIFIES),
        }
    assert {e.init: (e.agrees, e.disagrees) for e in FINDING_OF["dpo"].expectations} == {
        "continual": (AMPLIFIES, HOLDS),
        "reset": (HOLDS, AMPLIFIES),
    }
    assert finding_agreement([]) == INCONCLUSIVE


@pytest.mark.parametrize(
    ("key", "first", "second", "expected"),
    [
        # SFT / SDF: reset, continual; both must decay or hold
        ("sft", "replicated decay", "static", AGREES),
        ("sft", "replicated decay", "replicated decay", AGREES),
        ("sft", "replicated decay", "replicated amplification", DISAGREES),
        ("sft", "inconclusive", "replicated amplification", DISAGREES),
        ("sft", "replicated decay", "not replicated", INCONCLUSIVE),
        ("sft", "replicated decay", "insufficient seeds (3 of 5)", INCONCLUSIVE),
        ("sdf", "static", None, INCONCLUSIVE),  # continual not run
        ("sdf", "static", "static", AGREES),
        ("sdf", "replicated amplification", "insufficient seeds (4 of 5)", DISAGREES),
        # DPO: continual must amplify, reset must not
        ("dpo", "replicated amplification", "replicated decay", AGREES),
        ("dpo", "replicated amplification", "static", AGREES),
        ("dpo", "replicated amplification", "replicated amplification", DISAGREES),
        ("dpo", "static", "replicated decay", DISAGREES),
        ("dpo", "replicated decay", "static", DISAGREES),
        ("dpo", "replicated amplification", "not replicated", INCONCLUSIVE),
        ("dpo", "not replicated", "static", INCONCLUSIVE),
        ("dpo", "insufficient seeds (2 of 5)", "insufficient seeds (2 of 5)", INCONCLUSIVE),
        ("dpo", None, None, INCONCLUSIVE),
    ],
)
def test_a_findings_row_agrees_only_when_every_condition_agrees_and_disagrees_when_any_does(key, first, second, expected):
    finding = FINDING_OF[key]
    inits = [e.init for e in finding.expectations]
    measured = {init: summary(v) if v else None for init, v in zip(inits, [first, second])}
    row = compare_finding(finding, measured)
    assert row["agreement"] == expected
    assert [c["init"] for c in row["conditions"]] == inits
    for condition, verdict in zip(row["conditions"], [first, second]):
        assert condition["verdict"] == (verdict or "not run")
        if verdict:
            assert condition["end_delta_text"] == "+0.0 [-10.0, +10.0]" and condition["seeds"] == "5"
        else:
            assert condition["agreement"] == INCONCLUSIVE and "end_delta" not in condition
    assert row["paper"] == finding.paper and row["why"]


def test_the_mapping_covers_every_verdict_decide_condition_gives():
    """Replicated verdicts from the real decision code on synthetic seeds, through the table."""
    from traitloop.analysis import Criteria
    from traitloop.verdicts import SeedRun, decide_condition

    def seeds(ends: list[float]) -> list[SeedRun]:
        return [SeedRun(f"s{i}", [50.0, 50 + e / 3, 50 + 2 * e / 3, 50 + e], f"s{i}") for i, e in enumerate(ends)]

    cases = {
        "rise": seeds([30, 28, 33, 31, 29]),
        "fall": seeds([-30, -28, -33, -31, -29]),
        "flat": seeds([1, -1, 0.5, -0.5, 0]),
        "three": seeds([30, 28, 33]),
        "mixed": seeds([40, -35, 30, -25, 20]),
    }
    verdicts = {name: decide_condition(runs, Criteria())["overall"] for name, runs in cases.items()}
    assert verdicts == {
        "rise": "replicated amplification",
        "fall": "replicated decay",
        "flat": "static",
        "three": "insufficient seeds (3 of 5)",
        "mixed": verdicts["mixed"],
    }
    assert verdicts["mixed"] in ("not replicated", "inconclusive")
    dpo, sft = FINDING_OF["dpo"], FINDING_OF["sft"]

    def row(finding, first, second):
        inits = [e.init for e in finding.expectations]
        return compare_finding(finding, {inits[0]: decide_condition(cases[first]), inits[1]: decide_condition(cases[second])})

    assert row(dpo, "rise", "flat")["agreement"] == AGREES
    assert row(dpo, "rise", "fall")["agreement"] == AGREES
    assert row(dpo, "flat", "flat")["agreement"] == DISAGREES
    assert row(dpo, "rise", "mixed")["agreement"] == INCONCLUSIVE
    assert row(sft, "fall", "flat")["agreement"] == AGREES
    assert row(sft, "fall", "rise")["agreement"] == DISAGREES
    assert row(sft, "fall", "three")["agreement"] == INCONCLUSIVE


# ---- the command's input errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quick", "--standard"], "choose one tier"),
        (["--quick", "--min-seeds", "2"], "at least 3 independent seeds"),
        (["--quick", "--jobs", "2", "--executor", "ray"], "--jobs: only with --executor local"),
        (["--quick", "--address", "auto"], "only with --executor ray"),
        (["--grid", "no/such/grid.yaml"], "grid file not found"),
    ],
)
def test_bad_options_exit_2_with_one_message_and_write_nothing(args, message, tmp_path, monkeypatch, capsys, no_model_prepared):
    code, output = cli(monkeypatch, capsys, "reproduce", *args, "--out", str(tmp_path / "out"))
    assert code == 2 and message in output, output
    assert not (tmp_path / "out").exists()


def test_full_without_a_gpu_prints_its_plan_and_exits_2(tmp_path, monkeypatch, capsys, no_model_prepared):
    monkeypatch.setattr(reproduce, "cuda_available", lambda: False)
    code, output = cli(monkeypatch, capsys, "reproduce", "--full", "--out", str(tmp_path / "out"))
    assert code == 2, output
    assert "no CUDA GPU" in output and "--executor ray" in output
    assert "full-dpo" in output and "dpo init=continual" in output  # the plan it would run
    assert not (tmp_path / "out").exists()


# ---- (c) end to end on a tiny model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    model = make_model(tokenizer, seed=3)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def smoke_grid(path: Path, tiny_dir: Path) -> Path:
    """Finding 1 in miniature: SFT reset vs continual, 3 independent seeds, cycles 0..1, probe judge."""
    base = {
        "setting": "sft",
        "trait": "bliss",
        "n_seed": 4,
        "n_sampled": 4,
        "cycles": 1,
        "model": {"ref": str(tiny_dir)},
        "sampling": {"max_new_tokens": 16, "batch_size": 4},
        "train": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-3},
        "eval": {"questions": 2, "samples_per_question": 2, "max_new_tokens": 12, "batch_size": 4, "include_base": False},
    }
    path.write_text(yaml.safe_dump({"name": "smoke-sft", "base": base, "grid": {"init": ["reset", "continual"], "seed": [0, 1, 2]}}))
    return path


def test_reproduce_runs_writes_the_table_and_resumes(tiny_dir, tmp_path, monkeypatch, capsys):
    grid = smoke_grid(tmp_path / "smoke.yaml", tiny_dir)
    out = tmp_path / "out"
    args = ["reproduce", "--grid", str(grid), "--out", str(out), "--jobs", "2", "--min-seeds", "3"]

    code, output = cli(monkeypatch, capsys, *args, "--dry-run")
    assert code == 0, output
    assert "sft init=reset" in output and "sft init=continual" in output and "6 runs, 6 to run" in output
    assert not out.exists()  # a dry run writes nothing

    code, output = cli(monkeypatch, capsys, *args)
    assert code == 0, output
    sweep = out / "smoke-sft"
    status = read_status(sweep / "status.json")["runs"]
    assert len(status) == 6 and all(e["status"] == "done" and not e["skipped"] for e in status.values()), status
    result = json.loads((out / "reproduction.json").read_text())
    assert [row["finding"] for row in result["rows"]] == ["sft"]  # one row per finding present
    row = result["rows"][0]
    assert [c["init"] for c in row["conditions"]] == ["reset", "continual"]
    for condition in row["conditions"]:
        assert condition["n_seeds"] == condition["n_independent"] == 3 and condition["min_seeds"] == 3
        assert not condition["verdict"].startswith("insufficient seeds")  # --min-seeds 3 is honoured
        assert condition["agreement"] == condition_agreement(FINDING_OF["sft"].expectations[0], condition["verdict"])
    assert row["agreement"] == finding_agreement([c["agreement"] for c in row["conditions"]])
    assert result["runs_total"] == result["runs_finished"] == 6 and result["runs_failed"] == 0
    from traitloop.estimate import measured_cycle_seconds

    per_run = [sum(measured_cycle_seconds(r).values()) for r in (sweep / "runs").glob("init-*")]
    (run_time,) = result["run_time"]
    assert {k: run_time[k] for k in ("grid", "runs", "min_s", "max_s")} == {
        "grid": "smoke-sft",
        "runs": 6,
        "min_s": pytest.approx(min(per_run)),
        "max_s": pytest.approx(max(per_run)),
    }
    assert run_time["seconds"] == pytest.approx(sum(per_run)) == pytest.approx(sum(run_time["stages"].values()))
    assert {"train", "data", "answers", "judge", "heldout"} <= set(run_time["stages"])
    assert f"- smoke-sft: {duration(sum(per_run))} over 6 run(s)" in (out / "reproduction.md").read_text()
    assert result["run_commits"] == {git_commit(): 6}
    assert any("n_sampled does not vary" in n for n in result["notes"])  # no data-quantity figure, said so
    assert any("not run in this tier" in n and "SDF" in n and "DPO" in n for n in result["notes"])
    table = (out / "reproduction.md").read_text()
    assert table.count("| 1. SFT") == 1 and "| finding | what the paper reports | what traitloop measured | agreement |" in table
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert "1. SFT" in output and row["agreement"] in output

    logs = {p.name: p.stat().st_mtime_ns for p in (sweep / "logs").glob("*.log")}
    started = time.time()
    code, output = cli(monkeypatch, capsys, *args)
    assert code == 0, output
    status = read_status(sweep / "status.json")["runs"]
    assert all(e["status"] == "done" and e["skipped"] for e in status.values()), status
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "logs").glob("*.log")} == logs  # no run started again
    assert json.loads((out / "reproduction.json").read_text())["rows"] == result["rows"]
    assert time.time() - started < 90

    # A run left unfinished is timed, in the dry run, from the finished runs' own stage timings rather than
    # the throughput file: here its cycle 1, the median of the five others'.
    todo = sweep / "runs" / "init-continual_seed-2"
    (todo / "cycle-001" / "DONE").unlink()
    (todo / "scores.csv").unlink()
    code, output = cli(monkeypatch, capsys, *args, "--dry-run")
    assert code == 0, output
    words = " ".join(output.split())  # the table's captions wrap at the terminal's width
    assert "6 runs, 1 to run" in words and "estimated from the stage timings of its 5 finished run(s)" in words, output
    others = sorted(measured_cycle_seconds(r)[1] for r in (sweep / "runs").glob("init-*") if r != todo)
    assert f"estimated: {duration(others[2])} of run time" in words, output


def test_the_seeding_lift_is_cycle_0_over_the_base_model_averaged_over_runs():
    """How much the seeding instilled: the mean of cycle 0 minus base; runs without a base evaluation are
    left out, and None when no run has one (the table then says nothing about it)."""
    from types import SimpleNamespace

    def run(base, curve):
        rows = [{"trait_mean": v} for v in curve]
        return SimpleNamespace(base=None if base is None else {"trait_mean": base}, rows=rows, trait_curve=curve)

    assert reproduce.seeding_lift([run(4.0, [10.0, 30.0]), run(6.0, [13.0, 2.0]), run(None, [90.0])]) == pytest.approx(6.5)
    assert reproduce.seeding_lift([run(None, [40.0])]) is None
    measured = {"init": "reset", "verdict": "static", "end_delta_text": "+1.0 [-3.0, +5.0]", "seeds": "5", "seeding_lift": 6.5}
    assert reproduce.measured_text(measured) == "reset: static; s_N - s_0 +1.0 [-3.0, +5.0]; 5 seeds; cycle 0 +6.5 over the base model"
    assert reproduce.seeding_note("sdf init=reset", 6.5).startswith("sdf init=reset: cycle 0 scores only +6.5 above the base model")
    assert reproduce.seeding_note("sdf init=reset", 15.0) is None and reproduce.seeding_note("sdf init=reset", None) is None


@pytest.mark.parametrize("verdict", ["replicated amplification", "replicated decay", "static", "not replicated"])
def test_a_condition_whose_seeding_did_not_take_is_inconclusive_whatever_its_verdict(verdict):
    """The paper's claims are about a seeded trait: under SEEDING_LIFT_MIN points of lift the row cannot
    agree or disagree; at or above it (or with no base evaluation) the verdict decides as before."""
    for finding in FINDINGS:
        for expectation in finding.expectations:
            assert reproduce.condition_agreement(expectation, verdict, seeding_lift=14.9) == "inconclusive"
            decided = reproduce.condition_agreement(expectation, verdict)
            assert reproduce.condition_agreement(expectation, verdict, seeding_lift=15.0) == decided
    row = reproduce.compare_finding(
        FINDING_OF["dpo"], {init: {**summary("static"), "seeding_lift": 0.5} for init in ("continual", "reset")}
    )
    assert row["agreement"] == "inconclusive"
    assert "continual static (paper: amplifies, but not seeded: cycle 0 +0.5 over the base model)" in row["why"]


PUBLISHED = Path(__file__).parents[1] / "docs" / "reproduction" / "quick"


def test_the_published_quick_table_follows_from_the_published_runs():
    """docs/REPRODUCTION.md's quick-tier table (docs/reproduction/quick/reproduction.json, written by a real
    `traitloop reproduce --quick`) is recomputed here from the scored answers committed beside it
    (scripts/publish_reproduction.sh): every verdict, interval, seed count and agreement."""
    from traitloop.analysis import Criteria
    from traitloop.report_data import clean, load_collection, summarize

    published = json.loads((PUBLISHED / "reproduction.json").read_text())
    grids = sorted(p.parent for p in PUBLISHED.glob("*/sweep.yaml"))
    assert [g.name for g in grids] == ["quick-dpo", "quick-sdf", "quick-sft"]
    collection = load_collection(grids, "traitloop reproduce --quick")
    rows, _ = reproduce.comparisons(collection, clean(summarize(collection, Criteria(min_seeds=published["min_seeds"]))))
    assert clean(rows) == published["rows"]
    assert [row["finding"] for row in rows] == ["sft", "sdf", "dpo"]
