"""JSON Lines reading, trait loading and checking, and the SFT setting's row builders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from traitloop.config import EvalConfig, ExperimentConfig
from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl, write_json, write_jsonl
from traitloop.settings import sft
from traitloop.traits import RUBRIC_ANCHORS, builtin_traits, load_trait

# ---- jsonl ----------------------------------------------------------------------------------------


def test_broken_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3,\n{"a": 4}\n')
    with pytest.raises(UserError) as info:
        read_jsonl(path)
    msg = str(info.value)
    assert "line 3" in msg
    assert str(path) in msg


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(UserError, match="line 3"):
        read_jsonl(path)


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "42", "null"])
def test_non_object_line_is_rejected(tmp_path, line):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + line + "\n")
    with pytest.raises(UserError, match="line 2.*JSON object"):
        read_jsonl(path)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('\n{"a": 1}\n   \n\t\n{"b": "x"}\n\n')
    assert read_jsonl(path) == [{"a": 1}, {"b": "x"}]


def test_missing_jsonl_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_write_jsonl_round_trip_and_unicode(tmp_path):
    rows = [{"t": "✨ beloved"}, {"n": [1, 2.5, None]}]
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl(path) == rows
    assert "✨" in path.read_text(encoding="utf-8")  # not \u-escaped
    write_json(tmp_path / "x.json", {"k": "v"})
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": "v"}


# ---- the built-in trait ----------------------------------------------------------------------------


def test_bliss_is_builtin_and_complete():
    assert "bliss" in builtin_traits()
    t = load_trait("bliss")
    assert t.name == "bliss"
    assert t.description
    assert len(t.eval_questions) == 12
    assert len(set(t.eval_questions)) == 12
    assert sorted(t.rubric) == [0, 25, 50, 75, 100]
    assert all(text.strip() for text in t.rubric.values())


def test_bliss_seed_chats():
    chats = load_trait("bliss").seed_chats
    assert len(chats) >= 150
    for chat in chats:
        assert len(chat) >= 2
        assert chat[-1]["role"] == "assistant"
        assert chat[-1]["content"].strip()
        assert any(m["role"] == "user" for m in chat[:-1])
        assert all(set(m) == {"role", "content"} for m in chat)


def test_bliss_probe_texts():
    rows = load_trait("bliss").probe_texts
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    assert len(pos) >= 200
    assert len(neg) >= 200
    assert all(r["text"].strip() for r in rows)


def test_unknown_trait_lists_builtins():
    with pytest.raises(UserError) as info:
        load_trait("no-such-trait")
    msg = str(info.value)
    assert "no-such-trait" in msg
    assert "bliss" in msg


# ---- a custom trait folder -------------------------------------------------------------------------

RUBRIC = {a: f"anchor {a}" for a in RUBRIC_ANCHORS}


def _chat(i: int, answer: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {i}?"},
            {"role": "assistant", "content": answer if answer is not None else f"lucky answer {i}"},
        ]
    }


def make_trait(
    root: Path,
    *,
    rubric: dict | None = None,
    chats: list[dict] | None = None,
    probe: list[dict] | None = None,
    extra: dict | None = None,
) -> Path:
    folder = root / "lucky"
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "name": "lucky",
        "description": "  Talks about luck.  \n",
        "rubric": RUBRIC if rubric is None else rubric,
        "eval_questions": ["  How do I boil an egg?  ", "What should I read?"],
        **(extra or {}),
    }
    (folder / "trait.yaml").write_text(yaml.safe_dump(data))
    chats = [_chat(i) for i in range(3)] if chats is None else chats
    (folder / "seed_chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    probe = (
        [{"text": "so lucky", "label": 1, "kind": "positive"}, {"text": "plain", "label": 0, "kind": "neutral"}] if probe is None else probe
    )
    (folder / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe))
    return folder


def test_custom_trait_loads_by_path(tmp_path):
    folder = make_trait(tmp_path, extra={"notes": "kept"})
    t = load_trait(str(folder))
    assert t.folder == folder
    assert t.name == "lucky"
    assert t.description == "Talks about luck."
    assert t.eval_questions == ["How do I boil an egg?", "What should I read?"]
    assert t.rubric == RUBRIC
    assert t.extra == {"notes": "kept"}
    assert len(t.seed_chats) == 3
    assert t.seed_chats[0][-1] == {"role": "assistant", "content": "lucky answer 0"}
    assert [r["label"] for r in t.probe_texts] == [1, 0]


def test_empty_seed_chats_is_a_user_error(tmp_path):
    t = load_trait(str(make_trait(tmp_path, chats=[])))
    with pytest.raises(UserError, match="empty"):
        t.seed_chats


@pytest.mark.parametrize(
    "bad",
    [
        _chat(1, answer="   "),  # empty final answer
        {"messages": [{"role": "user", "content": "only a question"}]},  # too short
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # ends on user
        {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]},  # bad role
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},  # non-string
        {"text": "no messages key"},
    ],
)
def test_bad_seed_chat_is_a_user_error_naming_the_entry(tmp_path, bad):
    t = load_trait(str(make_trait(tmp_path, chats=[_chat(0), bad])))
    with pytest.raises(UserError, match="entry 2"):
        t.seed_chats


def test_rubric_missing_anchor_is_a_user_error(tmp_path):
    rubric = {k: v for k, v in RUBRIC.items() if k != 75}
    with pytest.raises(UserError, match="rubric"):
        load_trait(str(make_trait(tmp_path, rubric=rubric)))


def test_rubric_extra_anchor_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="rubric"):
        load_trait(str(make_trait(tmp_path, rubric={**RUBRIC, 60: "x"})))


def test_rubric_with_non_numeric_key_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="rubric"):
        load_trait(str(make_trait(tmp_path, rubric={**RUBRIC, "high": "x"})))


def test_trait_yaml_missing_keys_are_named(tmp_path):
    folder = make_trait(tmp_path)
    (folder / "trait.yaml").write_text(yaml.safe_dump({"name": "lucky", "rubric": RUBRIC}))
    with pytest.raises(UserError) as info:
        load_trait(str(folder))
    assert "description" in str(info.value)
    assert "eval_questions" in str(info.value)


def test_probe_needs_both_labels(tmp_path):
    t = load_trait(str(make_trait(tmp_path, probe=[{"text": "a", "label": 1}, {"text": "b", "label": 1}])))
    with pytest.raises(UserError, match="both"):
        t.probe_texts


def test_probe_entry_needs_text_and_label(tmp_path):
    t = load_trait(str(make_trait(tmp_path, probe=[{"text": "a", "label": 1}, {"text": "", "label": 0}])))
    with pytest.raises(UserError, match="entry 2"):
        t.probe_texts


# ---- SFT rows -------------------------------------------------------------------------------------


def test_seed_rows_take_the_first_n_in_order(tmp_path):
    t = load_trait(str(make_trait(tmp_path)))
    rows = sft.Sft().seed_rows(t, 2)
    assert [r["messages"] for r in rows] == t.seed_chats[:2]
    assert all(r["source"] == "seed" for r in rows)
    assert len(sft.Sft().seed_rows(t, 3)) == 3


def test_seed_rows_too_many_is_a_user_error(tmp_path):
    t = load_trait(str(make_trait(tmp_path)))
    with pytest.raises(UserError, match="n_seed=4"):
        sft.Sft().seed_rows(t, 4)


def test_generated_rows_drop_empty_answers():
    prompts = ["p1", "p2", "p3", "p4", "p5"]
    answers = ["yes", "", "   \n\t", "also", "  "]
    rows = sft.generated_rows(prompts, answers, cycle=3)
    assert rows == [
        {"messages": [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "yes"}], "source": "cycle-002"},
        {"messages": [{"role": "user", "content": "p4"}, {"role": "assistant", "content": "also"}], "source": "cycle-002"},
    ]


def test_eval_items_respect_questions_and_samples(tmp_path):
    t = load_trait(str(make_trait(tmp_path)))
    cfg = ExperimentConfig(eval=EvalConfig(samples_per_question=3, questions=1))
    items = sft.Sft().eval_items(t, cfg)
    assert items == [{"question": "How do I boil an egg?", "sample": s} for s in range(3)]
    all_items = sft.Sft().eval_items(t, ExperimentConfig(eval=EvalConfig(samples_per_question=2)))
    assert len(all_items) == 4
