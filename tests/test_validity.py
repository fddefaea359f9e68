"""Judge validity (traitloop.judges.validity): the statistics on hand-made examples with known values, what a
run records, what the report and `traits validate` show. Stand-in judges; the real probe only in the CLI test."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers.cli import run_cli
from test_report import RISING, make_run

from traitloop.judges.base import Score
from traitloop.judges.validity import (
    auc,
    measure,
    read_floor,
    run_validity,
    spearman,
    trait_validity,
    validity_rows,
)
from traitloop.report_html import write_report
from traitloop.settings import get_setting
from traitloop.traits import BUILTIN_DIR, load_trait


class TableJudge:
    """Scores each text by a lookup table (default 0): a stand-in whose right answers we know."""

    def __init__(self, table: dict[str, float], kind: str = "probe", default: float = 0.0):
        self.name, self.table, self.kind, self.default = "table", table, kind, default

    def info(self):
        return {"judge": self.name, "kind": self.kind}

    def score(self, questions, answers):
        return [Score(self.table.get(a, self.default), self.name) if a.strip() else Score(None, self.name, "empty answer") for a in answers]


def row(kind: str, level: int, text: str) -> dict:
    return {"kind": kind, "level": level, "question": "q" if kind == "chat" else None, "text": text, "note": ""}


LEVELS = (0, 25, 50, 75, 100)
OWN = [row(kind, level, f"{kind} {level} {i}") for kind in ("chat", "doc") for level in LEVELS for i in range(2)]
OTHERS = [row(kind, level, f"other {kind} {level} {i}") for kind in ("chat", "doc") for level in LEVELS for i in range(3)]
FLOOR = [{"kind": kind, "question": "q", "sample": i, "answer": f"untrained {kind} {i}"} for kind in ("chat", "doc") for i in range(4)]


def perfect_scores() -> dict[str, float]:
    """Score = rubric level for this trait's texts; the other traits' texts and the floor answers get 0."""
    return {r["text"]: float(r["level"]) for r in OWN}


# ---- the statistics --------------------------------------------------------------------------------------
def test_statistics_on_known_values():
    assert spearman([0, 25, 50, 75, 100], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert spearman([0, 25, 50, 75, 100], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0, 25, 50], [7, 7, 7]) is None  # a constant scorer has no rank correlation
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([5, 5], [5, 5, 5]) == 0.5  # a constant scorer cannot separate anything
    assert auc([3, 1], [2, 0]) == 0.75  # 3 of the 4 pairs ordered right
    assert auc([2], [2, 1]) == 0.75  # a tie counts one half
    assert auc([], [1]) is None


def test_a_perfect_judge_meets_every_goal():
    result = measure(TableJudge(perfect_scores()), OWN, OTHERS, FLOOR)
    for kind in ("chat", "doc"):
        v = result[kind]
        assert v["spearman"] == pytest.approx(1.0) and v["auc_vs_plain"] == 1.0 and v["cross_trait_auc"] == 1.0
        assert v["floor"] == 0.0 and v["n_floor"] == 4
        assert v["n_texts"] == 10 and v["n_cross_negatives"] == 6  # other traits' level 75 and 100 texts of that kind
        assert v["valid"] is True and v["unmet"] == []


def test_a_constant_judge_meets_no_goal():
    v = measure(TableJudge({}, default=50.0), OWN, OTHERS, FLOOR)["chat"]
    assert v["auc_vs_plain"] == 0.5 and v["cross_trait_auc"] == 0.5 and v["spearman"] is None and v["floor"] == 50.0
    assert v["valid"] is False
    assert v["unmet"] == ["floor 50.0 > 10", "Spearman unmeasured (no graded texts, or constant scores)", "cross-trait AUC 0.500 < 0.9"]


def test_cross_trait_auc_falls_when_other_personas_score_high():
    """A judge that scores every persona like this trait separates the trait from plain text, not from them."""
    scores = {**perfect_scores(), **{r["text"]: 90.0 for r in OTHERS if r["level"] >= 75}}
    v = measure(TableJudge(scores), OWN, OTHERS, FLOOR)["chat"]
    assert v["auc_vs_plain"] == 1.0 and v["spearman"] == pytest.approx(1.0)
    # this trait's level-75 texts (75) lose to all 90s, its level-100 texts (100) beat them
    assert v["cross_trait_auc"] == 0.5 and not v["valid"]


def test_kinds_are_measured_apart_and_unscored_answers_are_left_out():
    floor = FLOOR + [{"kind": "chat", "question": "q", "sample": 9, "answer": "  "}]  # empty: the judge cannot score it
    scores = {**perfect_scores(), "untrained chat 0": 40.0}
    result = measure(TableJudge(scores), OWN, OTHERS, floor)
    assert result["chat"]["floor"] == 10.0 and result["chat"]["n_floor"] == 4  # (40 + 0 + 0 + 0) / 4, the empty one left out
    assert result["doc"]["floor"] == 0.0
    assert measure(TableJudge(scores), OWN, OTHERS, floor, kinds=("doc",)).keys() == {"doc"}


# ---- a trait folder, and what a run records ------------------------------------------------------------------
@pytest.fixture
def trait_folder(tmp_path):
    folder = tmp_path / "t"
    shutil.copytree(BUILTIN_DIR / "bliss", folder, ignore=shutil.ignore_patterns("validation.jsonl", "floor_answers.jsonl"))
    (folder / "trait.yaml").write_text((folder / "trait.yaml").read_text().replace("name: bliss", "name: t"))
    return folder


def write_validity_files(folder) -> None:
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OWN))
    header = {"header": {"command": "hand-made for a test"}}
    (folder / "floor_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [header] + FLOOR))


def test_floor_file_header_row_is_not_an_answer(trait_folder):
    write_validity_files(trait_folder)
    assert read_floor(trait_folder) == FLOOR


def test_run_records_its_kind_of_text(trait_folder):
    write_validity_files(trait_folder)
    trait = load_trait(str(trait_folder))
    judge = TableJudge(perfect_scores())
    chat = run_validity(judge, trait, documents=False)
    assert chat["kind"] == "chat" and chat["valid"] is True and chat["spearman"] == pytest.approx(1.0)
    assert chat["goals"] == {"floor_max": 10.0, "spearman_min": 0.8, "cross_trait_auc_min": 0.9} and chat["data"]
    assert get_setting("dpo").chats and run_validity(judge, trait, documents=False)["kind"] == "chat"
    assert not get_setting("sdf").chats and run_validity(judge, trait, documents=True)["kind"] == "doc"
    assert run_validity(TableJudge({}, kind="api"), trait, documents=False) == {
        "kind": "chat",
        "valid": None,
        "unmeasured": "validity is measured for the probe judge only (docs/JUDGES.md)",
    }


def test_a_trait_without_validation_texts_is_unmeasured(trait_folder):
    trait = load_trait(str(trait_folder))
    assert trait_validity(TableJudge({}), trait) is None
    record = run_validity(TableJudge({}), trait, documents=False)
    assert record["valid"] is None and "validity unmeasured" in record["unmeasured"]


def test_builtin_validation_sets_have_every_level_of_both_kinds():
    from traitloop.judges.validity import read_validation
    from traitloop.traits import builtin_traits

    for name in builtin_traits():
        rows = read_validation(BUILTIN_DIR / name)
        assert {(r["kind"], r["level"]) for r in rows} == {(k, level) for k in ("chat", "doc") for level in LEVELS}, name
        assert len(read_floor(BUILTIN_DIR / name)) > 0, f"{name}: no floor_answers.jsonl (traitloop traits floor {name})"


# ---- the report -------------------------------------------------------------------------------------------
def with_validity(run, validity: dict):
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["judge"]["validity"] = validity
    path.write_text(json.dumps(manifest))
    return run


def test_report_marks_the_verdict_exploratory_when_the_judge_is_not_valid(tmp_path):
    measured = measure(TableJudge({}, default=50.0), OWN, OTHERS, FLOOR)["chat"]
    run = with_validity(make_run(tmp_path / "run", RISING), {"kind": "chat", **measured})
    text = write_report(run).read_text()
    assert '<p class="warning">Exploratory: the trait judge is not valid for bliss chats (floor 50.0 &gt; 10;' in text
    assert "so the verdict of run is exploratory" in text
    assert text.index('class="warning"') < text.index("<h2>Verdicts</h2>")
    assert (
        "no (floor 50.0 &gt; 10; Spearman unmeasured (no graded texts, or constant scores); cross-trait AUC 0.500 &lt; 0.9): verdict exploratory"
        in text
    )
    assert "Exploratory: the trait judge is not valid for bliss chats" in (run / "report.md").read_text()


def test_report_shows_the_numbers_of_a_valid_judge_without_a_warning(tmp_path):
    measured = measure(TableJudge(perfect_scores()), OWN, OTHERS, FLOOR)["chat"]
    run = with_validity(make_run(tmp_path / "run", RISING), {"kind": "chat", **measured})
    text = write_report(run).read_text()
    assert 'class="warning"' not in text
    assert "<th>cross-trait AUC</th>" in text and "<td>yes</td>" in text and "<td>1.00</td>" in text


def test_report_of_a_run_without_a_validity_record_says_so(tmp_path):
    text = write_report(make_run(tmp_path / "run", RISING)).read_text()
    assert "not recorded (run made before validity was measured)" in text
    assert '<p class="warning">Judge validity unmeasured or not recorded for run: read their verdicts as exploratory' in text


# ---- the command --------------------------------------------------------------------------------------------
def test_validity_rows_say_what_is_unmet():
    result = {"trait": "t", **measure(TableJudge({}, default=50.0), OWN, OTHERS, FLOOR)}
    chat, doc = validity_rows([result])
    assert chat[:6] == ["t", "chat", "50.0", "n/a", "0.50", "0.50"] and chat[6] == "10 / 6 / 4"
    assert chat[7].startswith("no: floor 50.0 > 10") and doc[1] == "doc"
    assert not any(isinstance(x, float) and math.isnan(x) for x in chat)


def test_traits_validate_prints_the_validity_table_or_says_it_is_unmeasured(trait_folder, monkeypatch, capsys):
    """The real probe (MiniLM) on the copied bliss folder: first without validation.jsonl, then with one."""
    code, output = run_cli(["traits", "validate", str(trait_folder)], monkeypatch, capsys)
    assert code == 0 and "validity unmeasured" in output and "has no validation.jsonl" in output
    write_validity_files(trait_folder)
    code, output = run_cli(["traits", "validate", str(trait_folder)], monkeypatch, capsys)
    assert code == 0 and "validity unmeasured" not in output
    assert "cross-trait AUC (>= 0.9)" in output and "floor (<= 10)" in output
    assert "│ t " in output and "chat" in output and "doc" in output
    assert "10 / 112 / 4" in output and "10 / 56 / 4" in output  # cross: all seven built-in traits' level >= 75 texts
