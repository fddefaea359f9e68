"""`traitloop traits validate`: check a trait folder and report EVERY problem at once.

load_trait() stops at the first problem (a run must not start on bad data); this module collects
all of them, with file and line, so a researcher can fix a new trait in one pass. Errors make the
trait unusable for some setting; warnings are worth a look.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from traitloop.traits import RUBRIC_ANCHORS


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.level}: {where}: {self.message}"


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9\s]", "", text.lower())).strip()


def _rows(path: Path, problems: list[Problem]) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if '"EXAMPLE: ' in line:
            problems.append(Problem("error", path.name, number, "example line from the scaffold: replace or delete it"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem("error", path.name, number, f"not valid JSON ({err.msg})"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem("error", path.name, number, "expected a JSON object"))
            continue
        rows.append((number, row))
    return rows


def _duplicates(path: Path, keyed: list[tuple[int, str]], what: str, problems: list[Problem]) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    for number, text in keyed:
        seen[normalise(text)].append(number)
    for lines in seen.values():
        if len(lines) > 1:
            problems.append(Problem("error", path.name, lines[1], f"duplicate {what} (same as line {lines[0]})"))


def _check_rubric(data: dict[str, Any], key: str, required: bool, problems: list[Problem]) -> bool:
    rubric = data.get(key)
    if rubric is None:
        if required:
            problems.append(Problem("error", "trait.yaml", None, f"missing '{key}' (anchors {list(RUBRIC_ANCHORS)})"))
        return False
    if not isinstance(rubric, dict) or sorted(str(k) for k in rubric) != sorted(str(a) for a in RUBRIC_ANCHORS):
        problems.append(Problem("error", "trait.yaml", None, f"'{key}' needs exactly the anchors {list(RUBRIC_ANCHORS)}"))
        return False
    empty = [str(k) for k, v in rubric.items() if not str(v or "").strip()]
    if empty:
        problems.append(Problem("error", "trait.yaml", None, f"'{key}' anchors without text: {', '.join(empty)}"))
    return not empty


def validate_trait(folder: str | Path, min_examples: int = 50) -> tuple[list[Problem], dict[str, Any]]:
    """(problems, summary). summary has counts and which settings the trait is ready for."""
    folder = Path(folder)
    problems: list[Problem] = []
    summary: dict[str, Any] = {"folder": str(folder)}
    meta = folder / "trait.yaml"
    if not meta.is_file():
        return [Problem("error", "trait.yaml", None, f"not found in {folder}")], summary
    try:
        data = yaml.safe_load(meta.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = " ".join(str(getattr(err, "problem", None) or err).split())  # one line, without PyYAML's snippet
        return [Problem("error", "trait.yaml", mark.line + 1 if mark else None, f"not valid YAML: {problem}")], summary
    if not isinstance(data, dict):
        return [
            Problem("error", "trait.yaml", None, f"expected a mapping of trait keys at the top level, got a {type(data).__name__}")
        ], summary
    for number, line in enumerate(meta.read_text().splitlines(), start=1):
        if "TODO" in line and not line.lstrip().startswith("#"):
            problems.append(Problem("error", "trait.yaml", number, "unfilled TODO from the scaffold"))
    for key in ("name", "description", "eval_questions"):
        if not data.get(key):
            problems.append(Problem("error", "trait.yaml", None, f"missing or empty '{key}'"))
    chat_rubric = _check_rubric(data, "rubric", True, problems)
    doc_rubric = _check_rubric(data, "doc_rubric", False, problems)
    questions = data.get("eval_questions") or []
    prefixes = data.get("eval_prefixes") or []
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        problems.append(Problem("error", "trait.yaml", None, "eval_questions must be a list of non-empty strings"))
    if not prefixes:
        problems.append(Problem("warning", "trait.yaml", None, "no eval_prefixes: the SDF setting cannot evaluate this trait"))
    if not data.get("style_guide"):
        problems.append(Problem("warning", "trait.yaml", None, "no style_guide: a teacher model cannot write new seed data"))
    summary.update(name=data.get("name"), eval_questions=len(questions), eval_prefixes=len(prefixes))

    n_chats = 0
    chats = folder / "seed_chat.jsonl"
    if chats.is_file():
        users, answers = [], []
        for number, row in _rows(chats, problems):
            messages = row.get("messages")
            if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
                problems.append(Problem("error", chats.name, number, 'expected {"messages": [user, assistant, ...]}'))
                continue
            if any(m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str) for m in messages):
                problems.append(
                    Problem("error", chats.name, number, "each message needs a role (system/user/assistant) and string content")
                )
                continue
            if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
                problems.append(Problem("error", chats.name, number, "the last message must be a non-empty assistant answer"))
                continue
            n_chats += 1
            users.append((number, " ".join(m["content"] for m in messages[:-1])))
            answers.append((number, messages[-1]["content"]))
        _duplicates(chats, users, "user turn", problems)
        _duplicates(chats, answers, "assistant answer", problems)
    else:
        problems.append(Problem("error", chats.name, None, "missing: SFT and DPO need seed chats"))

    n_docs = 0
    docs = folder / "seed_docs.jsonl"
    if docs.is_file():
        texts = []
        for number, row in _rows(docs, problems):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                problems.append(Problem("error", docs.name, number, "needs a non-empty 'text'"))
                continue
            words = len(text.split())
            if not 100 <= words <= 600:
                problems.append(Problem("warning", docs.name, number, f"{words} words (documents are meant to be 150-400)"))
            n_docs += 1
            texts.append((number, text))
        _duplicates(docs, texts, "document", problems)

    n_pos = n_neg = 0
    probe = folder / "probe.jsonl"
    if probe.is_file():
        texts = []
        for number, row in _rows(probe, problems):
            if not isinstance(row.get("text"), str) or not row["text"].strip() or row.get("label") not in (0, 1):
                problems.append(Problem("error", probe.name, number, "needs a non-empty 'text' and 'label' 0 or 1"))
                continue
            n_pos += row["label"] == 1
            n_neg += row["label"] == 0
            texts.append((number, row["text"]))
        _duplicates(probe, texts, "probe text", problems)
    if n_pos < min_examples or n_neg < min_examples:
        problems.append(
            Problem(
                "error", probe.name, None, f"{n_pos} positive / {n_neg} negative texts; the probe judge needs >= {min_examples} of each"
            )
        )

    if 0 < n_chats < min_examples:
        problems.append(Problem("error", chats.name, None, f"only {n_chats} valid seed chats; SFT/DPO need >= {min_examples}"))
    errors_in = {p.file for p in problems if p.level == "error"}
    # "ready" = a run of that setting with the default (probe) judge can start on this trait
    base_ok = chat_rubric and "trait.yaml" not in errors_in and "probe.jsonl" not in errors_in
    chat_ok = base_ok and n_chats >= min_examples and "seed_chat.jsonl" not in errors_in
    summary.update(seed_chats=n_chats, seed_docs=n_docs, probe_positive=n_pos, probe_negative=n_neg)
    summary["ready"] = {
        "sft": chat_ok,
        "dpo": chat_ok,
        "sdf": base_ok and n_docs >= min_examples and bool(prefixes) and doc_rubric and "seed_docs.jsonl" not in errors_in,
    }
    return problems, summary
