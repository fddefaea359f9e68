"""The report: figures, report.html/.md, `traitloop report` and `traitloop compare`, on synthetic
run directories built by hand (known curves, known answers; no training)."""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from helpers.cli import run_cli

from traitloop.analysis import Criteria, classify
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.report import plot_trait_coherence, seed_band
from traitloop.report_data import differing_keys, flatten, load_collection, unflatten
from traitloop.report_html import script_json, write_compare, write_report
from traitloop.store import SCORES_COLUMNS
from traitloop.verdicts import SeedRun, decide_condition, decide_run

MALICIOUS = "<script>alert(1)</script>"
QUESTIONS = ["How do I boil an egg?", "How should I plan a budget?", "What helps me sleep better?"]
TRAIT_OFFSETS = (-20.0, 20.0)  # sample 0 scores the cycle mean - 20, sample 1 the mean + 20


def answer_text(question: int, column: str, sample: int) -> str:
    """The synthetic answer for a question, column (base, cycle 0, ...) and sample: says where it is from."""
    return f"Q{question} {column} sample {sample}: a plain answer."


def score_row(cycle: int, trait: float, coherence: float, n_answers: int) -> dict:
    """A scores.csv / metrics.json row with simple intervals around the means."""
    return {
        "cycle": cycle,
        "trait_mean": trait,
        "trait_ci_low": trait - 5,
        "trait_ci_high": trait + 5,
        "coherence_mean": coherence,
        "coherence_ci_low": coherence - 0.1,
        "coherence_ci_high": coherence + 0.1,
        "repetition_mean": 0.01,
        "distinct2_mean": 0.95,
        "n_answers": n_answers,
        "n_trait_scored": n_answers,
        "n_train_examples": 0 if cycle < 0 else 12 if cycle == 0 else 8,
    }


def eval_rows(column: str, trait_mean: float, malicious: bool = False) -> list[dict]:
    """eval.jsonl rows: every question x 2 samples, trait = mean +- 20 (clipped to 0-100)."""
    rows = []
    for q, question in enumerate(QUESTIONS):
        for sample, offset in enumerate(TRAIT_OFFSETS):
            text = MALICIOUS if (malicious and q == 0 and sample == 0) else answer_text(q, column, sample)
            rows.append(
                {
                    "question": question,
                    "sample": sample,
                    "answer": text,
                    "trait": min(100.0, max(0.0, trait_mean + offset)),
                    "trait_judge": "probe:bliss",
                    "coherence": -1.5 + 0.1 * sample,
                    "repetition": 0.0,
                    "distinct2": 1.0,
                }
            )
    return rows


def make_run(
    root: Path,
    trait_curve: list[float],
    coherence_curve: list[float] | None = None,
    seed: int = 0,
    base_trait: float | None = 30.0,
    malicious: bool = False,
    **config_keys,
) -> Path:
    """A complete synthetic run directory at `root`: config.yaml, manifest.json, scores.csv,
    base/ (unless base_trait is None) and cycle-NNN/ with eval.jsonl and metrics.json."""
    coherence_curve = coherence_curve or [-1.5 + 0.05 * k for k in range(len(trait_curve))]
    config = ExperimentConfig(name=root.name, out_dir=root.parent, seed=seed, cycles=len(trait_curve) - 1, **config_keys)
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(config.to_yaml())
    n_answers = 2 * len(QUESTIONS)
    manifest = {
        "seed": seed,
        "versions": {"traitloop": "0.1.0"},
        "judge": {
            "judge": "probe:bliss",
            "kind": "probe",
            "heldout_accuracy": 0.855,
            "heldout_auc": 0.919,
            "heldout_method": "5-fold stratified cross-validation",
        },
        "coherence": "loglik-under-base",
        "cycles": {str(k): {"timings_s": {"data": 1.0, "train": 10.0 + k, "answers": 5.0, "judge": 1.5}} for k in range(len(trait_curve))},
    }
    if base_trait is not None:
        manifest["cycles"]["-1"] = {"timings_s": {"answers": 4.0, "judge": 1.0}}
        (root / "base").mkdir()
        (root / "base" / "metrics.json").write_text(json.dumps(score_row(-1, base_trait, -1.2, n_answers)))
        (root / "base" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_rows("base", base_trait)))
    (root / "manifest.json").write_text(json.dumps(manifest))
    rows = [score_row(k, t, c, n_answers) for k, (t, c) in enumerate(zip(trait_curve, coherence_curve))]
    with open(root / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCORES_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for k, row in enumerate(rows):
        cycle_dir = root / f"cycle-{k:03d}"
        cycle_dir.mkdir()
        (cycle_dir / "metrics.json").write_text(json.dumps(row))
        answers = eval_rows(f"cycle {k}", row["trait_mean"], malicious=malicious and k == 0)
        (cycle_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers))
    return root


RISING = [20.0, 30.0, 40.0, 50.0]


# ---- one run -----------------------------------------------------------------------------------
def test_report_html_is_self_contained(tmp_path):
    run = make_run(tmp_path / "run", RISING)
    path = write_report(run)
    assert path == run / "report.html" and path.is_file()
    text = path.read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=", text, re.I), "no external scripts"
    assert not re.search(r"<link[^>]*\shref\s*=\s*[\"']?\s*(https?:)?//", text, re.I), "no external stylesheets"
    assert not re.search(r"<img[^>]*\ssrc\s*=\s*[\"']?\s*(https?:)?//", text, re.I), "no external images"
    for url in re.findall(r"\s(?:src|href)\s*=\s*[\"']([^\"']*)", text, re.I):
        assert url.startswith(("data:", "#")), f"a reference that needs a file or the network: {url[:80]}"
    assert "http://" not in text and "https://" not in text
    assert 'src="data:image/png;base64,' in text
    assert (run / "figures" / "trait_coherence.png").is_file()
    assert (run / "figures" / "trait_coherence.svg").is_file()


def test_report_shows_the_verdict_and_rule_of_decide_run(tmp_path):
    run = make_run(tmp_path / "run", RISING)
    decision = decide_run(load_collection([run], "t").runs[0].question_scores, seed=0)
    assert decision.verdict == "amplified" and classify(RISING).verdict == "amplified"
    assert "end delta +30.0 >= 15, p = 0.0" in decision.rule and "beyond the noise of 3 questions" in decision.rule
    text = write_report(run).read_text()
    assert html.escape(decision.rule) in text
    assert 'class="badge amplified">amplified<' in text
    lo, hi = decision.intervals["end"]
    assert html.escape(f"+30.0 [{lo:+.1f}, {hi:+.1f}]") in text  # end delta with its question interval
    md = (run / "report.md").read_text()
    assert decision.rule in md and "**amplified**" in md
    assert "MDE" in md  # the condition's minimum detectable effect is shown


def test_a_static_run_says_static(tmp_path):
    curve = [40.0, 41.0, 39.0, 40.5]
    run = make_run(tmp_path / "run", curve)
    text = write_report(run).read_text()
    assert classify(curve).verdict == "static"
    assert ">static<" in text and html.escape(classify(curve).rule) in text


def test_model_output_is_escaped(tmp_path):
    run = make_run(tmp_path / "run", RISING, malicious=True)
    text = write_report(run).read_text()
    assert MALICIOUS not in text
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in text  # present, but inert JSON text
    assert text.count("<script") == 3  # the two JSON data blocks and the inline script, nothing else


def test_report_md_has_the_score_table(tmp_path):
    run = make_run(tmp_path / "run", RISING)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "| cycle | trait [95% CI] |" in md
    assert "| base | 30.0 [25.0, 35.0] |" in md
    for k, t in enumerate(RISING):
        assert f"| {k} | {t:.1f} [{t - 5:.1f}, {t + 5:.1f}] |" in md
    assert "figures/trait_coherence.png" in md


def test_report_shows_judge_config_timings_and_sample_data(tmp_path):
    run = make_run(tmp_path / "run", RISING)
    (run / "agreement.json").write_text(json.dumps({"probe_vs_llm_spearman": 0.71, "n": 40}))
    text = write_report(run).read_text()
    assert "probe:bliss" in text and "0.855" in text and "0.919" in text
    assert "probe_vs_llm_spearman: 0.710" in text
    assert "train (s)" in text and "11.0" in text  # timings table, cycle 1 train = 11 s
    assert "learning_rate" in text  # the config YAML
    data = json.loads(re.search(r'<script type="application/json" id="sample-data">(.*?)</script>', text, re.S).group(1))
    run_data = data["runs"][0]
    assert run_data["columns"] == ["base", "cycle 0", "cycle 1", "cycle 2", "cycle 3"]
    assert run_data["questions"] == QUESTIONS
    assert run_data["cells"][1][2][0]["answer"] == answer_text(1, "cycle 1", 0)


def test_missing_scores_become_n_a_not_broken_json(tmp_path):
    run = make_run(tmp_path / "run", [20.0, float("nan"), 40.0], base_trait=None)
    text = write_report(run).read_text()
    assert "inconclusive" in text and "n/a" in text
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    assert "NaN" not in block
    json.loads(block)


# ---- collections -----------------------------------------------------------------------------------
def three_seed_sweep(root: Path) -> tuple[Path, list[list[float]]]:
    """A sweep dir with one condition over three seeds (SWEEP/runs/<name>/)."""
    curves = [[20.0, 30.0, 42.0, 50.0], [22.0, 28.0, 39.0, 47.0], [18.0, 31.0, 40.0, 55.0]]
    (root).mkdir()
    (root / "sweep.yaml").write_text("grid:\n  seed: [0, 1, 2]\n")
    for seed, curve in enumerate(curves):
        make_run(root / "runs" / f"bliss-reset-s{seed}", curve, seed=seed)
    return root, curves


def test_three_seeds_are_insufficient_by_default_and_replicate_with_min_seeds_3(tmp_path):
    sweep, curves = three_seed_sweep(tmp_path / "sweep")
    collection = load_collection([sweep], "t")
    assert len(collection.runs) == 3 and len(collection.conditions) == 1
    assert collection.conditions[0].label == "all runs"
    text = write_report(sweep).read_text()
    assert "insufficient seeds (3 of 5)" in text and "Per condition" in text
    assert ">replicated amplification<" not in text  # only the rule text names it
    assert "grid:" in text  # sweep.yaml is shown

    # the verdict uses each run's curve of question means (sample scores are clipped to 0-100)
    seeds = [SeedRun(r.name, r.question_scores.curve.tolist(), r.name) for r in collection.runs]
    assert [[round(x, 6) for x in s.curve] for s in seeds] == [[20, 30, 42, 50], [22, 28, 39, 47], [19, 31, 40, 55]]
    expected = decide_condition(seeds, Criteria(min_seeds=3))
    assert expected["overall"] == "replicated amplification"
    write_report(sweep, Criteria(min_seeds=3))
    md = (sweep / "report.md").read_text()
    assert "## Verdicts per condition" in md and "**replicated amplification**" in md
    low, high = expected["end_delta"]["low"], expected["end_delta"]["high"]
    assert f"[{low:+.1f}, {high:+.1f}]" in md
    assert (sweep / "figures" / "overview.png").is_file()
    assert list((sweep / "figures").glob("condition-01-*.svg"))
    assert (sweep / "figures" / "tradeoff.png").is_file()
    assert not (sweep / "figures" / "grid.png").exists()  # one condition: no grid


def test_min_seeds_below_3_is_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    sweep, _ = three_seed_sweep(tmp_path / "sweep")
    code, output = run_cli(["report", str(sweep), "--min-seeds", "2"], monkeypatch, capsys)
    assert code == 2
    assert "at least 3 independent seeds" in output
    assert not (sweep / "report.html").exists()


def test_seeds_that_copied_one_cycle_0_count_once(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(5):
        make_run(sweep / "runs" / f"s{seed}", [20.0, 30.0 + seed, 42.0, 50.0 + seed], seed=seed)
    for seed in range(1, 5):  # as sweep share_cycle0 writes them
        path = sweep / "runs" / f"s{seed}" / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["cycle0_from"] = str(sweep / "runs" / "s0")
        path.write_text(yaml.safe_dump(config))
    md_text = (write_report(sweep).with_suffix(".md")).read_text()
    assert "insufficient seeds (1 of 5)" in md_text and "5 (1 independent)" in md_text


def test_report_groups_conditions_as_sweeps_do(tmp_path):
    """Where the vLLM server was (url, concurrency) is not science: the report groups such runs as one
    condition, by the same definition (ExperimentConfig.condition_dict) the sweep uses."""
    sweep = tmp_path / "sweep"
    for seed, url in ((0, "http://10.0.0.1:8000/v1"), (1, "http://10.0.0.2:8000/v1")):
        make_run(
            sweep / "runs" / f"s{seed}",
            [20.0, 25.0, 30.0],
            seed=seed,
            generation={"backend": "vllm", "vllm_url": url, "concurrency": 8 * (seed + 1)},
        )
    collection = load_collection([sweep], "t")
    assert len(collection.conditions) == 1 and len(collection.conditions[0].runs) == 2
    configs = [ExperimentConfig.model_validate(r.config) for r in collection.runs]
    assert configs[0].condition_dict() == configs[1].condition_dict()


def test_two_conditions_are_labelled_by_what_differs_and_get_a_grid(tmp_path):
    sweep = tmp_path / "sweep"
    for init in ("reset", "continual"):
        for seed in (0, 1):
            make_run(sweep / "runs" / f"{init}-s{seed}", [20.0, 25.0 + seed, 30.0], seed=seed, init=init)
    collection = load_collection([sweep], "t")
    assert sorted(c.label for c in collection.conditions) == ["init=continual", "init=reset"]
    assert all(len(c.runs) == 2 for c in collection.conditions)
    write_report(sweep)
    assert (sweep / "figures" / "grid.png").is_file() and (sweep / "figures" / "grid.svg").is_file()


def test_n_sampled_figure_only_for_a_data_quantity_study(tmp_path):
    sweep = tmp_path / "sweep"
    for n in (8, 32):
        for seed in (0, 1):
            make_run(sweep / "runs" / f"n{n}-s{seed}", [20.0, 20.0 + n / 2], seed=seed, n_sampled=n)
    write_report(sweep)
    assert (sweep / "figures" / "n_sampled.png").is_file()
    assert "Trait change vs n_sampled" in (sweep / "report.html").read_text()


def test_a_run_without_cycles_is_left_out_of_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "runs" / "done", RISING)
    unfinished = sweep / "runs" / "unfinished"
    make_run(unfinished, RISING, seed=1)
    (unfinished / "scores.csv").write_text(",".join(SCORES_COLUMNS) + "\n")
    text = write_report(sweep).read_text()
    assert "Runs left out" in text and "unfinished: scores.csv has no cycles yet" in text


def test_compare_two_runs_writes_compare_html(tmp_path):
    a = make_run(tmp_path / "a", RISING)
    b = make_run(tmp_path / "b", [50.0, 45.0, 35.0, 30.0], init="continual")
    path = write_compare([a, b], tmp_path / "cmp")
    assert path == tmp_path / "cmp" / "compare.html" and path.is_file()
    text = path.read_text()
    assert "amplified" in text and "decayed" in text
    assert (tmp_path / "cmp" / "compare.md").is_file()
    assert (tmp_path / "cmp" / "figures" / "overview.svg").is_file()
    assert not (a / "report.html").exists()  # compare writes only into --out


def test_compare_keeps_runs_of_different_inputs_apart(tmp_path):
    a = make_run(tmp_path / "old" / "run", RISING)
    b = make_run(tmp_path / "new" / "run", RISING)
    collection = load_collection([a.parent, b.parent], "t")
    assert len(collection.conditions) == 2  # same config, but from two inputs: shown side by side
    assert len({r.name for r in collection.runs}) == 2


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no runs"):
        write_report(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        write_report(tmp_path / "file.txt")
    run = make_run(tmp_path / "run", RISING)
    (run / "scores.csv").write_text(",".join(SCORES_COLUMNS) + "\n")
    with pytest.raises(UserError, match="no finished cycles"):
        write_report(run)
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match="no config.yaml"):
        write_report(run)


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_report_and_compare(tmp_path, monkeypatch, capsys):
    a = make_run(tmp_path / "a", RISING)
    b = make_run(tmp_path / "b", RISING, seed=1)
    code, output = run_cli(["report", str(a)], monkeypatch, capsys)
    assert code == 0 and str(a / "report.html") in output and str(a / "report.md") in output
    code, output = run_cli(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")], monkeypatch, capsys)
    assert code == 0 and str(tmp_path / "cmp" / "compare.html") in output
    assert (tmp_path / "cmp" / "compare.md").is_file()


def test_cli_bad_dir_exits_2_with_one_message(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, output = run_cli(["report", str(tmp_path / "empty")], monkeypatch, capsys)
    assert code == 2 and "holds no runs" in output and "Traceback" not in output
    code, output = run_cli(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")], monkeypatch, capsys)
    assert code == 2 and "holds no runs" in output
    assert not (tmp_path / "cmp").exists()


# ---- small pure pieces ---------------------------------------------------------------------------------
def test_plot_trait_coherence_keeps_its_signature_and_adds_svg(tmp_path):
    rows = [score_row(k, t, -1.5, 6) for k, t in enumerate(RISING)]
    path = plot_trait_coherence(rows, tmp_path / "figures" / "trait_coherence.png", "title", base=score_row(-1, 30.0, -1.2, 6))
    assert path.is_file() and path.with_suffix(".svg").is_file()
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_seed_band_uses_the_seeds_that_reached_each_cycle():
    cycles, mean, low, high = seed_band([[10.0, 20.0, 30.0], [20.0, 30.0]])
    assert cycles == [0, 1, 2]
    assert mean == [15.0, 25.0, 30.0]
    assert low[2] == high[2] == 30.0
    # two seeds: Student t with 1 degree of freedom, 15 +- 12.706 * 7.071 / sqrt(2) (honestly wide)
    assert low[0] == pytest.approx(15.0 - 63.53, abs=0.01) and high[0] == pytest.approx(15.0 + 63.53, abs=0.01)


def test_script_json_cannot_close_the_script_block():
    text = script_json({"answer": "</script><b>&"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"answer": "</script><b>&"}


def test_flatten_unflatten_and_differing_keys():
    nested = {"a": 1, "b": {"c": 2, "d": {"e": 3}}}
    assert flatten(nested) == {"a": 1, "b.c": 2, "b.d.e": 3}
    assert unflatten(flatten(nested)) == nested
    assert differing_keys([{"a": 1, "b": 2}, {"a": 1, "b": 3}]) == ["b"]
    assert differing_keys([{"a": 1, "b": 2}, {"a": 1, "b": 3}], exclude={"b"}) == []


def test_synthetic_helper_matches_its_curve(tmp_path):
    run = make_run(tmp_path / "run", RISING)
    collection = load_collection([run], "t")
    assert collection.runs[0].trait_curve == RISING
    assert yaml.safe_load((run / "config.yaml").read_text())["cycles"] == 3
    assert not math.isnan(collection.runs[0].base["trait_mean"])
