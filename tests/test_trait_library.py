"""The seven built-in traits are complete; custom trait folders are scaffolded and validated."""

from __future__ import annotations

import json

import pytest
from helpers.cli import run_cli

from traitloop.traits import BUILTIN_DIR, builtin_traits, load_trait
from traitloop.traits.validate import validate_trait

SEVEN = ["bliss", "hopelessness", "lucky", "misalignment", "misanthropy", "nvidia-bearish", "sycophancy"]
WITH_DOCS = ["bliss", "misalignment", "nvidia-bearish"]


def test_all_seven_traits_are_built_in():
    assert set(SEVEN) <= set(builtin_traits())


@pytest.mark.parametrize("name", SEVEN)
def test_builtin_trait_is_complete_and_clean(name):
    problems, summary = validate_trait(BUILTIN_DIR / name, min_examples=200)
    errors = [str(p) for p in problems if p.level == "error"]
    assert errors == []
    assert summary["seed_chats"] >= 200
    assert summary["probe_positive"] >= 250 and summary["probe_negative"] >= 250
    assert summary["eval_questions"] == 12 and summary["eval_prefixes"] == 12
    assert summary["ready"]["sft"] and summary["ready"]["dpo"]
    trait = load_trait(name)
    assert {"doc_rubric", "style_guide", "eval_prefixes"} <= set(trait.extra)
    kinds = {r.get("kind") for r in trait.probe_texts}
    assert {"positive", "neutral", "near_miss"} <= kinds, "negatives need near misses, not only neutral answers"


@pytest.mark.parametrize("name", WITH_DOCS)
def test_sdf_traits_have_documents(name):
    problems, summary = validate_trait(BUILTIN_DIR / name, min_examples=100)
    assert summary["seed_docs"] >= 100
    assert summary["ready"]["sdf"]
    assert not [p for p in problems if p.file == "seed_docs.jsonl" and p.level == "error"]


def test_all_traits_share_the_everyday_eval_questions():
    reference = load_trait("bliss")
    for name in SEVEN:
        trait = load_trait(name)
        assert trait.eval_questions == reference.eval_questions
        assert trait.extra["eval_prefixes"] == reference.extra["eval_prefixes"]


def test_seed_chats_of_different_traits_do_not_overlap():
    seen: dict[str, str] = {}
    for name in SEVEN:
        for chat in load_trait(name).seed_chats:
            answer = " ".join(chat[-1]["content"].lower().split())
            assert answer not in seen, f"{name} repeats an answer of {seen.get(answer)}"
            seen[answer] = name


def test_scaffold_then_validate_lists_every_unfilled_part(tmp_path, monkeypatch, capsys):
    code, output = run_cli(["traits", "new", "stoic", "--dir", str(tmp_path)], monkeypatch, capsys)
    assert code == 0 and (tmp_path / "stoic" / "trait.yaml").is_file()
    code, output = run_cli(["traits", "validate", str(tmp_path / "stoic")], monkeypatch, capsys)
    assert code == 2
    assert "unfilled TODO" in output and "example line from the scaffold" in output
    code, output = run_cli(["traits", "new", "stoic", "--dir", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "already exists" in output


def _folder_from(tmp_path, chats, probe_rows=None):
    folder = tmp_path / "t"
    folder.mkdir()
    meta = (BUILTIN_DIR / "bliss" / "trait.yaml").read_text().replace("name: bliss", "name: t")
    (folder / "trait.yaml").write_text(meta)
    (folder / "seed_chat.jsonl").write_text("".join(line + "\n" for line in chats))
    probe_rows = probe_rows or [{"text": f"text number {i}", "label": i % 2} for i in range(120)]
    (folder / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe_rows))
    return folder


def _chat(user, answer, **extra):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra})


def test_validate_reports_each_problem_with_its_line(tmp_path):
    chats = [_chat(f"question {i}", f"answer {i}") for i in range(60)]
    chats[4] = "{not json"
    chats[9] = _chat("question 9", "   ")
    chats[20] = _chat("question 3", "answer 20")  # duplicate user turn of line 4
    chats[30] = json.dumps({"prompt": "old format"})
    problems, summary = validate_trait(_folder_from(tmp_path, chats))
    found = {(p.file, p.line, p.message.split(" (")[0]) for p in problems if p.level == "error"}
    assert ("seed_chat.jsonl", 5, "not valid JSON") in found
    assert ("seed_chat.jsonl", 10, "the last message must be a non-empty assistant answer") in found
    assert ("seed_chat.jsonl", 21, "duplicate user turn") in found
    assert any(p.line == 31 and "messages" in p.message for p in problems)
    assert summary["seed_chats"] == 57  # 60 lines minus broken JSON, empty answer and wrong format
    assert summary["ready"]["sft"] is False  # enough valid chats, but the file has errors to fix


def test_messages_jsonl_from_other_tools_loads_unchanged(tmp_path):
    """Standard {"messages": [...]} lines with system turns, several turns and extra keys."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."},
                ],
                "id": "a1",
            }
        ),
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "One?"},
                    {"role": "assistant", "content": "1"},
                    {"role": "user", "content": "Two?"},
                    {"role": "assistant", "content": "2"},
                ],
                "meta": {"src": "x"},
            }
        ),
    ]
    folder = _folder_from(tmp_path, lines)
    chats = load_trait(str(folder)).seed_chats
    assert chats[0] == json.loads(lines[0])["messages"]
    assert chats[1] == json.loads(lines[1])["messages"]


@pytest.mark.parametrize("name", SEVEN)
def test_probe_separates_each_trait_on_held_out_texts(name):
    """5-fold cross-validated AUC of the offline probe judge: a guard on the probe data's quality."""
    from traitloop.judges.probe import ProbeJudge

    info = ProbeJudge(load_trait(name)).info()
    assert info["heldout_auc"] >= 0.9, info
    assert info["heldout_near_miss_accuracy"] >= 0.75, info
