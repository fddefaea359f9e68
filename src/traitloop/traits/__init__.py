"""Traits are data: a folder with trait.yaml, seed_chat.jsonl and probe.jsonl.

Built-in traits live beside this file (traits/<name>/); a custom trait is any folder with the same
files, passed as `trait: path/to/folder`. This module loads and checks them; it holds no trait text.

trait.yaml keys:
  name, description      what the trait is (and is not)
  rubric                 judge rubric for chat answers: anchors 0, 25, 50, 75, 100
  eval_questions         everyday questions NOT about the trait; a score measures how far it generalises
seed_chat.jsonl          {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} per line
probe.jsonl              {"text": ..., "label": 1|0, "kind": "positive"|"neutral"|"near_miss"} per line
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl

BUILTIN_DIR = Path(__file__).parent
RUBRIC_ANCHORS = (0, 25, 50, 75, 100)
# Files that measure the judge (traitloop.judges.validity), not inputs of a run: a run's identity
# (Experiment.input_hashes) leaves them out, so adding or editing them never blocks a resume.
VALIDITY_FILES = ("validation.jsonl", "floor_answers.jsonl")


def builtin_traits() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "trait.yaml").is_file())


@dataclass
class Trait:
    folder: Path
    name: str
    description: str
    rubric: dict[int, str]
    eval_questions: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def seed_chats(self) -> list[list[dict[str, str]]]:
        """Seed conversations in file order (cycle 0 takes the first n_seed)."""
        path = self.folder / "seed_chat.jsonl"
        if not path.is_file():
            raise UserError(
                f"trait '{self.name}' has no seed_chat.jsonl in {self.folder}: a trait needs seed chats to train cycle 0; "
                'add one {"messages": [user, assistant]} per line (`traitloop traits new NAME` writes an example)'
            )
        rows = read_jsonl(path)
        if not rows:
            raise UserError(f"{path} is empty: a trait needs seed chats to train cycle 0")
        chats = []
        for number, row in enumerate(rows, start=1):
            chats.append(_check_messages(row, path, number))
        return chats

    @cached_property
    def seed_docs(self) -> list[str]:
        """Seed documents in file order (SDF cycle 0 takes the first n_seed)."""
        path = self.folder / "seed_docs.jsonl"
        if not path.is_file():
            raise UserError(
                f"trait '{self.name}' has no seed_docs.jsonl in {self.folder}, which the SDF setting trains cycle 0 on; "
                'add one {"text": ...} document per line, or use setting sft or dpo'
            )
        docs = []
        for number, row in enumerate(read_jsonl(path), start=1):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise UserError(f"{path}, entry {number}: needs a non-empty 'text'")
            docs.append(row["text"])
        if not docs:
            raise UserError(f"{path} is empty: SDF needs seed documents to train cycle 0")
        return docs

    @property
    def eval_prefixes(self) -> list[str]:
        prefixes = self.extra.get("eval_prefixes") or []
        if not isinstance(prefixes, list) or not prefixes or not all(isinstance(p, str) and p.strip() for p in prefixes):
            raise UserError(f"{self.folder / 'trait.yaml'}: the SDF setting needs eval_prefixes (a list of document beginnings)")
        return prefixes

    @property
    def doc_rubric(self) -> dict[int, str]:
        raw = self.extra.get("doc_rubric")
        if not isinstance(raw, dict) or sorted(int(k) for k in raw) != list(RUBRIC_ANCHORS):
            raise UserError(f"{self.folder / 'trait.yaml'}: the SDF setting needs a doc_rubric with anchors {list(RUBRIC_ANCHORS)}")
        return {int(k): str(v) for k, v in raw.items()}

    @cached_property
    def probe_texts(self) -> list[dict[str, Any]]:
        path = self.folder / "probe.jsonl"
        rows = read_jsonl(path)
        for number, row in enumerate(rows, start=1):
            if not isinstance(row.get("text"), str) or not row["text"].strip() or row.get("label") not in (0, 1):
                raise UserError(f"{path}, entry {number}: needs a non-empty 'text' and 'label' 0 or 1")
        labels = {r["label"] for r in rows}
        if labels != {0, 1}:
            raise UserError(f"{path}: needs both positive (label 1) and negative (label 0) texts")
        return rows


def _check_messages(row: dict[str, Any], path: Path, number: int) -> list[dict[str, str]]:
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise UserError(f'{path}, entry {number}: expected {{"messages": [user, assistant, ...]}}')
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise UserError(f"{path}, entry {number}: each message needs a role (system/user/assistant) and string content")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise UserError(f"{path}, entry {number}: the last message must be a non-empty assistant answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def is_builtin_name(name: str) -> bool:
    """A name the library may be searched with: no path separator, no '..', not hidden. Anything else
    is a path, and a path must itself be a trait folder: it never reaches outside BUILTIN_DIR."""
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name)) and ".." not in name


def load_trait(name_or_path: str) -> Trait:
    """A built-in trait by name, or a trait folder by path."""
    folder = Path(name_or_path).expanduser()
    if not (folder / "trait.yaml").is_file():
        if not is_builtin_name(name_or_path.rstrip("/")):
            raise UserError(
                f"trait '{name_or_path}': {folder} is not a trait folder (no trait.yaml there), and a built-in trait "
                f"name has no '/' or '..' ({', '.join(builtin_traits())}); give a built-in name or the path of a folder "
                "containing trait.yaml"
            )
        folder = BUILTIN_DIR / name_or_path.rstrip("/")
    if not (folder / "trait.yaml").is_file():
        if Path(name_or_path).expanduser().is_dir():
            raise UserError(
                f"trait '{name_or_path}': the folder {name_or_path} has no trait.yaml, so it is not a trait folder (and no "
                "built-in trait has that name); add trait.yaml (`traitloop traits new NAME` scaffolds a trait folder)"
            )
        close = difflib.get_close_matches(name_or_path, builtin_traits(), n=1, cutoff=0.75)
        raise UserError(
            f"unknown trait '{name_or_path}': not a built-in trait ({', '.join(builtin_traits())}) "
            "and not a folder containing trait.yaml" + (f"; did you mean '{close[0]}'?" if close else "")
        )
    path = folder / "trait.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        from traitloop.config import yaml_error_text

        raise UserError(f"{path}: {yaml_error_text(err)}") from None
    keys = ("name", "description", "rubric", "eval_questions")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of trait keys ({', '.join(keys)}) at the top level, got a {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(
            f"{path}: missing key(s) {', '.join(missing)}; add them (`traitloop traits new NAME` writes a commented trait.yaml)"
        )
    raw_rubric = data["rubric"]
    if not isinstance(raw_rubric, dict) or not all(str(k).strip().isdigit() for k in raw_rubric):
        raise UserError(f"{path}: rubric must map the scores {list(RUBRIC_ANCHORS)} to descriptions")
    rubric = {int(k): str(v) for k, v in raw_rubric.items()}
    if sorted(rubric) != list(RUBRIC_ANCHORS):
        raise UserError(f"{path}: rubric needs exactly the anchors {list(RUBRIC_ANCHORS)}, got {sorted(rubric)}")
    questions = data["eval_questions"]
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise UserError(f"{path}: eval_questions must be a non-empty list of questions")
    known = {"name", "description", "rubric", "eval_questions"}
    return Trait(
        folder=folder,
        name=str(data["name"]),
        description=str(data["description"]).strip(),
        rubric=rubric,
        eval_questions=[q.strip() for q in questions],
        extra={k: v for k, v in data.items() if k not in known},
    )
