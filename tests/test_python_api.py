"""The Python API (traitloop.run, load_run, load_sweep) and docs/python-api.md, whose code blocks are
executed here as written, so the page cannot rot.

The doc's experiment.yaml names the embedded SmolLM2; here it runs on the tiny random Llama of
tests/test_loop_settings.py with a few answers, and the trait judge is the stand-in LengthJudge (the
probe's fit would be most of the time). Everything else in the doc runs as a user would type it.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_loop_settings import LengthJudge, tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)

import traitloop
from traitloop.api import make_config, overrides_dict
from traitloop.errors import UserError
from traitloop.store import RunStore

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"
TINY = {  # what the doc's experiment.yaml becomes in the test: the tiny model, few and short answers
    "n_seed": 4,
    "n_sampled": 4,
    "sampling": {"max_new_tokens": 40, "batch_size": 4},
    "train": {"batch_size": 2, "max_length": 96},
    "eval": {"questions": 2, "samples_per_question": 2, "max_new_tokens": 12, "batch_size": 4},
}


def nan_equal(a, b) -> bool:
    """Equal, NaN included (a NaN is never == another)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def doc(tiny_dir, tmp_path_factory):
    """Executes docs/python-api.md's Python blocks in order, in a fresh directory holding the doc's
    experiment.yaml (made tiny); returns the directory, the blocks' namespace and what they printed."""
    import contextlib

    import traitloop.loop

    (config_text,) = [b for b in blocks("yaml") if b.startswith("# experiment.yaml")]
    data = yaml.safe_load(config_text)
    make_config(data)  # the doc's config is valid as it stands
    for key, value in TINY.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    data["model"] = {"ref": str(tiny_dir)}
    folder = tmp_path_factory.mktemp("doc")
    (folder / "experiment.yaml").write_text(yaml.safe_dump(data))
    namespace: dict = {}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(traitloop.loop, "make_judge", lambda *args, **kwargs: LengthJudge())
        mp.chdir(folder)
        for block in blocks("python"):
            exec(compile(block, str(DOC), "exec"), namespace)
    return folder, namespace, printed.getvalue()


def test_the_docs_examples_run_as_written(doc):
    folder, namespace, printed = doc
    assert len(blocks("python")) == 4
    result = namespace["result"]
    assert isinstance(result, traitloop.RunResult)
    assert result.run_dir == (folder / "runs" / "bliss-sft").resolve() and result.scores_csv.is_file()
    assert result.figure == result.run_dir / "figures" / "trait_coherence.png" and result.figure.is_file()
    assert result.config["cycles"] == 1 and result.config["train"]["learning_rate"] == 1e-4  # the overrides reached the config
    assert [r["cycle"] for r in result.scores] == [0, 1]
    assert result.verdict in {"amplified", "decayed", "static", "inconclusive"}
    sweep = namespace["sweep"]
    assert sorted(r.name for r in sweep.runs) == ["bliss-sft", "bliss-sft-seed1"]
    (condition,) = sweep.conditions  # the seeds of one condition
    assert condition.runs == ["bliss-sft", "bliss-sft-seed1"] and condition.verdict.startswith("insufficient seeds")
    assert len(namespace["df"]) == 4
    assert (folder / "exports/parquet/eval.parquet").is_file() and (folder / "exports/inspect/bliss-sft/cycle-001.eval").is_file()
    assert f"{result.verdict} - {result.rule}" in printed and "insufficient seeds" in printed


@pytest.fixture(scope="module")
def two_runs(doc):
    """The doc's two runs (two seeds of one condition, cycles 0..1, the base evaluated): ROOT/runs."""
    return doc[0] / "runs"


def test_load_run_reads_the_store_and_gives_the_clis_verdict(two_runs, monkeypatch):
    from rich.console import Console

    import traitloop.cli

    result = traitloop.load_run(two_runs / "bliss-sft")
    store = RunStore(two_runs / "bliss-sft")
    assert result.name == "bliss-sft" and result.run_dir == (two_runs / "bliss-sft").resolve()
    assert (
        nan_equal(result.scores, store.scores()) and nan_equal(result.base, store.base_metrics()) and result.config == store.config_data()
    )
    assert result.trait == [r["trait_mean"] for r in store.scores()]
    assert result.eval_rows(1) == store.eval_rows(1) and result.eval_rows(-1) == store.eval_rows(-1)
    assert result.figure == store.figure_path().resolve() and result.figure.is_file()  # drawn by traitloop.run
    frame = result.frame()
    assert list(frame["cycle"]) == [0, 1] and list(frame.columns) == list(store.scores()[0])
    # the verdict the CLI prints after a run
    console = Console(file=io.StringIO(), width=400)
    monkeypatch.setattr(traitloop.cli, "out", console)
    traitloop.cli.print_verdict(two_runs / "bliss-sft")
    assert f"verdict: {result.verdict} ({result.rule})" in console.file.getvalue()
    assert "unmeasured" in result.judge_warning  # the stand-in judge's validity is not measured


def test_load_sweep_groups_seeds_into_a_condition(two_runs):
    from traitloop.report_data import load_collection, summarize

    sweep = traitloop.load_sweep(two_runs.parent)
    assert [r.name for r in sweep.runs] == ["bliss-sft", "bliss-sft-seed1"] and sweep.skipped == []
    summary = summarize(load_collection([two_runs.parent], two_runs.parent.name))
    assert [(c.label, c.verdict, c.reason, c.runs) for c in sweep.conditions] == [
        (c["label"], c["overall"], c["reason"], c["runs"]) for c in summary["conditions"]
    ]
    assert [r.verdict for r in sweep.runs] == [s["verdict"]["verdict"] for s in summary["runs"]]
    assert nan_equal(sweep.run("bliss-sft-seed1").scores, RunStore(two_runs / "bliss-sft-seed1").scores())
    frame = sweep.frame()
    assert len(frame) == 4 and set(frame["condition"]) == {"all runs"} and list(frame["seed"]) == [0, 0, 1, 1]
    with pytest.raises(KeyError, match="no run 'nope'"):
        sweep.run("nope")


def test_load_errors_are_user_errors(two_runs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        traitloop.load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="use traitloop.load_sweep"):
        traitloop.load_run(two_runs.parent)
    with pytest.raises(UserError, match="holds no runs"):
        traitloop.load_sweep(tmp_path)


def test_overrides_use_double_underscores_or_dotted_keys(tmp_path):
    assert overrides_dict({"cycles": 2, "train__learning_rate": 1e-4, "eval.samples_per_question": 3}) == {
        "cycles": 2,
        "train": {"learning_rate": 1e-4},
        "eval": {"samples_per_question": 3},
    }
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  batch_size: 2\n")
    a = make_config(path, train__learning_rate=1e-4, cycles=2)
    b = make_config(path, **{"train.learning_rate": 1e-4, "cycles": 2})
    c = make_config(make_config(path), train__learning_rate=1e-4, cycles=2)  # an ExperimentConfig
    assert a == b == c and a.train.learning_rate == 1e-4 and a.train.batch_size == 2 and a.cycles == 2
    assert make_config({"name": "y"}, restart_from_base_at=[1], init="continual").restart_from_base_at == [1]  # Python values as they are
    with pytest.raises(UserError, match="unknown key 'train.learnin_rate'"):
        make_config(path, train__learnin_rate=1e-4)
    with pytest.raises(UserError, match="'train' is also set as a value"):
        make_config(path, train=1, train__learning_rate=1e-4)
    with pytest.raises(UserError, match="a config path, a mapping or an ExperimentConfig"):
        make_config(42)


def test_import_traitloop_stays_light():
    code = (
        "import sys, traitloop\n"
        "assert 'torch' not in sys.modules and 'traitloop.api' not in sys.modules\n"
        "assert callable(traitloop.run) and callable(traitloop.load_sweep)\n"
        "assert 'traitloop.api' in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
