"""`traitloop export`: every format read back with its own reader and compared with the run directory.

The runs are real (the cycle engine on a tiny random Llama saved to disk, with the stand-in judge of
tests/test_loop_settings.py): a sweep of an SFT run with a base model evaluation and a DPO run, so the
training rows have two shapes (chats; preference pairs) and the runs two conditions. One answer is
made unscored (trait None, as when an LLM judge cannot read a reply), as the real judges can leave it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from test_loop_settings import LengthJudge, config, tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.cli import main
from traitloop.errors import UserError
from traitloop.export import export
from traitloop.loop import Experiment
from traitloop.progress import Reporter
from traitloop.report_data import flatten
from traitloop.store import BASE, RunStore

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def sweep(tiny_dir, tmp_path_factory):
    """SWEEP/runs/{sft,dpo}: cycles 0..1; the SFT run also evaluated its base; one SFT answer unscored."""
    root = tmp_path_factory.mktemp("sweep") / "my-sweep"
    runs = root / "runs"
    for name, setting, base in (("sft", "sft", True), ("dpo", "dpo", False)):
        cfg = config(
            tiny_dir, runs.parent, name=name, setting=setting, cycles=1, seed=3, eval={"include_base": base, "samples_per_question": 2}
        )
        assert cfg.run_dir == runs / name
        Experiment(cfg, reporter=Reporter(enabled=False), judge=LengthJudge()).run()
    store = RunStore(runs / "sft")
    rows = store.eval_rows(1)
    rows[0] = {**rows[0], "trait": None, "trait_missing": "no number in the reply"}
    store.write_rows(1, "eval", rows)
    return root


def run_dirs(sweep: Path) -> dict[str, RunStore]:
    return {name: RunStore(sweep / "runs" / name) for name in ("dpo", "sft")}


def cycles_of(store: RunStore) -> list[int]:
    finished = [int(r["cycle"]) for r in store.scores()]
    return ([BASE] if store.has(BASE, "eval") else []) + finished


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN and an int equal to the same float."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_rows_equal(got: list[dict], expected: list[dict], where: str) -> None:
    assert len(got) == len(expected), where
    for i, (g, e) in enumerate(zip(got, expected)):
        # a column another row has is None here when this row lacks the key
        assert {k for k, v in g.items() if v is not None} == {k for k, v in e.items() if v is not None}, f"{where} row {i}"
        for key, value in e.items():
            assert same(g.get(key), value), f"{where} row {i} {key}: {g.get(key)!r} != {value!r}"


def decode(rows: list[dict], json_columns: list[str]) -> list[dict]:
    return [{k: (json.loads(v) if k in json_columns and v is not None else v) for k, v in row.items()} for row in rows]


def expected_tables(sweep: Path) -> dict[str, list[dict]]:
    """The tables export should write, built straight from the store's readers."""
    tables = {"runs": [], "metrics": [], "eval": [], "data": []}
    for name, store in run_dirs(sweep).items():
        scores = store.scores()
        condition = store.config().condition_dict()
        for row in scores:
            tables["runs"].append({"run": name, "seed": 3, **row, **{f"config.{k}": v for k, v in flatten(condition).items()}})
        base = store.base_metrics()
        if base:
            tables["metrics"].append({"run": name, "cycle": BASE, **{k: base.get(k) for k in scores[0] if k != "cycle"}})
        tables["metrics"] += [{"run": name, **row} for row in scores]
        for k in cycles_of(store):
            tables["eval"] += [{"run": name, "cycle": k, "index": i, **row} for i, row in enumerate(store.eval_rows(k))]
            if k != BASE:
                tables["data"] += [{"run": name, "cycle": k, "index": i, **row} for i, row in enumerate(store.read_rows(k, "data"))]
    return tables


def key(row: dict) -> tuple:
    return (row["run"], row["cycle"], row.get("index", 0))


def check_tables(got: dict[str, list[dict]], json_columns: dict[str, list[str]], sweep: Path) -> None:
    expected = expected_tables(sweep)
    assert set(got) == set(expected)
    for table, rows in expected.items():
        decoded = decode(got[table], json_columns[table])
        if table == "runs":
            labels = {r["run"]: r.pop("condition") for r in decoded}
            assert labels["sft"] != labels["dpo"] and "setting=" in labels["sft"]  # two conditions, named as the report names them
        assert_rows_equal(sorted(decoded, key=key), sorted(rows, key=key), table)
    assert "messages" in json_columns["data"]  # SFT chats: a list of messages, as a JSON string
    assert "config.restart_from_base_at" in json_columns["runs"]  # a list-valued config key


# ---- parquet -------------------------------------------------------------------------------------------
def test_parquet_tables_match_the_run_directories(sweep, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    result = export(sweep, "parquet", tmp_path / "pq")
    assert sorted(p.name for p in result.files) == ["data.parquet", "eval.parquet", "metrics.parquet", "runs.parquet"]
    assert sorted(result.runs) == ["dpo", "sft"]
    got, json_columns = {}, {}
    for path in result.files:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"traitloop"])
        got[path.stem], json_columns[path.stem] = table.to_pylist(), meta["json_columns"]
    check_tables(got, json_columns, sweep)
    # pandas-ready: one typed column per field
    answers = pd.read_parquet(tmp_path / "pq" / "eval.parquet")
    assert answers["trait"].dtype == "float64" and answers["trait"].isna().sum() == 1
    assert answers.groupby(["run", "cycle"]).size().to_dict() == {
        ("dpo", 0): 4,
        ("dpo", 1): 4,
        ("sft", -1): 4,
        ("sft", 0): 4,
        ("sft", 1): 4,
    }
    runs = pd.read_parquet(tmp_path / "pq" / "runs.parquet")
    assert runs["config.train.learning_rate"].dtype == "float64" and set(runs["config.setting"]) == {"sft", "dpo"}


def test_default_output_is_inside_the_source_and_a_rerun_overwrites(sweep):
    first = export(sweep / "runs" / "sft", "parquet")
    assert first.out == sweep / "runs" / "sft" / "export" / "parquet" and first.runs == ["sft"]
    again = export(sweep / "runs" / "sft", "parquet")
    assert again.files == first.files
    # the export directory inside a run is not taken for a run by later tools
    assert [r for r in export(sweep, "parquet", sweep.parent / "again").runs] == ["dpo", "sft"]


# ---- Hugging Face datasets -----------------------------------------------------------------------------
def test_hf_dataset_dict_saved_to_disk_matches(sweep, tmp_path):
    from datasets import load_from_disk

    result = export(sweep, "hf", tmp_path / "hf")
    assert result.files == [tmp_path / "hf"] and result.pushed is None
    loaded = load_from_disk(str(tmp_path / "hf"))
    assert sorted(loaded) == ["data", "eval", "metrics", "runs"]
    json_columns = {name: json.loads(loaded[name].info.description)["json_columns"] for name in loaded}
    check_tables({name: loaded[name].to_list() for name in loaded}, json_columns, sweep)


def test_push_failure_is_one_clear_user_error(sweep, tmp_path, monkeypatch):
    """No Hub in the tests: the push itself is faked to fail as it does without a token."""
    from datasets import DatasetDict

    def refuse(self, repo, **kwargs):
        assert kwargs.get("private") is True
        raise RuntimeError("401 Client Error: Unauthorized\nmore detail")

    monkeypatch.setattr(DatasetDict, "push_to_hub", refuse)
    with pytest.raises(UserError, match=r"--push me/traitloop-runs: .*401 Client Error: Unauthorized\).*hf auth login"):
        export(sweep, "hf", tmp_path / "hf", push="me/traitloop-runs")
    assert (tmp_path / "hf" / "dataset_dict.json").is_file()  # saved locally before the push


# ---- inspect_ai eval logs ------------------------------------------------------------------------------
def test_inspect_logs_hold_every_answer_and_score(sweep, tmp_path):
    pytest.importorskip("inspect_ai")
    from inspect_ai.log import list_eval_logs, read_eval_log

    out = tmp_path / "inspect"
    result = export(sweep, "inspect", out)
    stores = run_dirs(sweep)
    expected_files = sorted(
        out / name / ("base.eval" if k == BASE else f"cycle-{k:03d}.eval") for name, s in stores.items() for k in cycles_of(s)
    )
    assert sorted(result.files) == expected_files and len(expected_files) == 5
    assert (
        sorted(Path(info.name.removeprefix("file://")) for info in list_eval_logs(str(out))) == expected_files
    )  # what `inspect view` lists
    n_unscored = 0
    for name, store in stores.items():
        questions = list(dict.fromkeys(r["question"] for k in cycles_of(store) for r in store.eval_rows(k)))
        for k in cycles_of(store):
            rows = store.eval_rows(k)
            log = read_eval_log(str(out / name / ("base.eval" if k == BASE else f"cycle-{k:03d}.eval")))
            assert log.status == "success" and log.stats.started_at and log.stats.completed_at
            assert log.eval.task == name and log.eval.task_args == store.config_data()  # the run config as the task's
            meta = log.eval.metadata["traitloop"]
            assert meta["judge"] == store.manifest()["judge"] and meta["judge"]["judge"] == "length"  # the judge's identity
            assert meta["cycle"] == k
            assert log.eval.config.epochs == 2 and log.eval.dataset.samples == len(questions)
            assert len(log.samples) == len(rows)
            by_id = {(questions.index(r["question"]) + 1, r["sample"] + 1): r for r in rows}  # (sample id, epoch) -> row
            assert sorted((s.id, s.epoch) for s in log.samples) == sorted(by_id)  # inspect orders samples its own way
            for sample in log.samples:
                row = by_id[(sample.id, sample.epoch)]
                assert sample.input == row["question"]
                assert sample.output.completion == row["answer"] and sample.messages[-1].text == row["answer"]
                assert sample.messages[0].text == row["question"]
                for score in ("trait", "coherence", "coherence_score", "coherence_judge", "repetition", "distinct2"):
                    if row.get(score) is None:
                        assert score not in sample.scores
                    else:
                        assert same(sample.scores[score].value, row[score]), (name, k, score)
                        assert sample.scores[score].answer == row["answer"]  # the viewer's answer column
                assert sample.metadata == {
                    f: v
                    for f, v in row.items()
                    if f not in ("question", "answer", "trait", "coherence", "coherence_score", "repetition", "distinct2")
                }
                if row.get("trait") is None:
                    n_unscored += 1
                    assert sample.metadata["trait_missing"] == "no number in the reply"  # the judge's reading
                else:
                    assert sample.scores["trait"].metadata == {"judge": row["trait_judge"]}
            # headline numbers: traitloop's own question-mean values with their intervals
            metrics = store.base_metrics() if k == BASE else store.metrics(k)
            trait = next(s for s in log.results.scores if s.name == "trait")
            assert trait.metrics["mean"].value == pytest.approx(metrics["trait_mean"])
            assert trait.metrics["ci_low"].value == pytest.approx(metrics["trait_ci_low"])
            assert trait.scored_samples == sum(r.get("trait") is not None for r in rows)
    assert n_unscored == 1


# ---- the command line and bad input ----------------------------------------------------------------------
def cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["traitloop", "export", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_exports_and_says_where(sweep, tmp_path, monkeypatch, capsys):
    code, text = cli([sweep, "--format", "parquet", "--out", tmp_path / "x"], monkeypatch, capsys)
    assert code == 0, text
    assert "exported 2 run(s) as parquet" in text and str(tmp_path / "x") in " ".join(text.split())
    assert (tmp_path / "x" / "eval.parquet").is_file()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["{empty}", "--format", "parquet"], "holds no runs"),
        (["{missing}", "--format", "parquet"], "does not exist"),
        (["{sweep}", "--format", "csv"], "--format 'csv': choose inspect, parquet or hf"),
        (["{sweep}", "--format", "parquet", "--out", "{file}"], "is a file; give a directory"),
        (["{sweep}", "--format", "inspect", "--push", "me/x"], "--push needs --format hf"),
        (["{sweep}"], "Missing option '--format'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(sweep, tmp_path, monkeypatch, capsys, args, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a directory")
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "sweep": sweep, "file": tmp_path / "file.txt"}
    before = sorted(p for p in sweep.rglob("*"))
    code, text = cli([a.format(**paths) for a in args], monkeypatch, capsys)
    assert code == 2 and expected in text, text
    assert "Traceback" not in text
    if "Missing option" not in text:
        assert len(text.strip().splitlines()) == 1, text
    assert sorted(p for p in sweep.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt"]


def test_missing_inspect_ai_says_how_to_install(sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "inspect_ai", None)  # import inspect_ai now fails as if not installed
    with pytest.raises(UserError, match=r"--format inspect needs inspect_ai, which is not installed: pip install 'traitloop\[export\]'"):
        export(sweep, "inspect", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_directory_without_config_is_refused(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "scores.csv").write_text("cycle,trait_mean,coherence_mean\n0,1,2\n")
    with pytest.raises(UserError, match="no config.yaml"):
        export(tmp_path / "broken", "parquet", tmp_path / "out")
