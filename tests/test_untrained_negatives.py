"""The untrained models' own outputs that every probe trains on as level-0 negatives
(src/traitloop/traits/untrained_negatives_{chat,doc}.jsonl, traitloop.judges.negatives): committed with a
header saying what produced them, and never drawn from what measures the judge (eval items, validation
texts, floor answers)."""

from __future__ import annotations

import pytest

from traitloop.jsonl import read_jsonl
from traitloop.judges import negatives
from traitloop.judges.validity import read_floor, read_validation
from traitloop.traits import BUILTIN_DIR, builtin_traits, load_trait


def norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def measured_texts() -> tuple[set[str], set[str]]:
    """(prompts, texts) that measure the judge: every built-in trait's eval questions and prefixes and the
    validation questions; the validation texts and the floor answers."""
    prompts, texts = set(), set()
    for name in builtin_traits():
        trait = load_trait(name)
        prompts |= {norm(q) for q in trait.eval_questions} | {norm(p) for p in trait.extra.get("eval_prefixes") or []}
        for row in read_validation(trait.folder) or []:
            if row.get("question"):
                prompts.add(norm(row["question"]))
            texts.add(norm(row["text"]))
        texts |= {norm(r["answer"]) for r in read_floor(trait.folder)}
    return prompts, texts


@pytest.mark.parametrize("kind", negatives.KINDS)
def test_negatives_file_has_a_header_and_its_questions_are_disjoint_from_every_eval_and_validation_item(kind):
    rows = read_jsonl(negatives.FILES[kind])
    header = rows[0]["header"]
    for key in ("model", "config", "command", "commit", "sampling_seed"):
        assert header.get(key) not in (None, ""), key
    rows = rows[1:]
    assert len(rows) == negatives.COUNTS[kind] and all(r["kind"] == kind for r in rows)
    prompts, texts = measured_texts()
    questions = [norm(r["question"]) for r in rows]
    assert len(set(questions)) == len(questions)
    for q in questions:
        assert q not in prompts and q not in texts
        # not a part of any of them, nor containing one (a document opener inside a validation document)
        assert not any(q in t or t in q for t in prompts | texts), q
    # the selection is the documented one, so the file can be regenerated
    assert [r["question"] for r in rows] == negatives.disjoint_prompts(kind)


def test_probe_negatives_hold_no_validation_text_or_floor_answer():
    _, texts = measured_texts()
    for row in negatives.probe_rows():
        assert row["label"] == 0
        assert norm(row["text"]) not in texts
    for name in builtin_traits():
        assert not {norm(r["text"]) for r in load_trait(name).probe_texts} & texts, name


def test_the_files_sit_beside_the_trait_folders_and_are_not_a_trait():
    assert all(path.parent == BUILTIN_DIR for path in negatives.FILES.values())
    assert not any(name.startswith("untrained_negatives") for name in builtin_traits())
