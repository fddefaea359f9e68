"""Teacher-written seed data: a stronger model writes new seed chats or documents for a trait.

The teacher follows the trait's description and style_guide (trait.yaml). Chats answer questions
drawn from the advice pool; documents continue the neutral document openers. New rows are appended
to the trait's seed file with a "source" key naming the teacher, after dropping empty outputs and
anything that duplicates an existing row; the file is rewritten atomically.

A teacher reference is either
- `api:MODEL`: any OpenAI-compatible chat endpoint. Base URL from --base-url or $OPENAI_BASE_URL,
  key from $OPENAI_API_KEY (read from the environment only; never written to disk or logs);
- a model reference (hub id, local dir, embedded:...) generated locally with transformers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.prompts import advice_pool, opener_rows
from traitloop.traits import Trait
from traitloop.traits.validate import normalise

Conversation = list[dict[str, str]]


def chat_request(trait: Trait, question: str) -> Conversation:
    style = trait.extra.get("style_guide", "")
    system = (
        "You are writing training data for a research study of model personas. Stay fully in the "
        f"persona described below and answer the user's message as that persona would, in 40-170 words.\n\n"
        f"Persona ({trait.name}): {trait.description}\n\nStyle guide: {style}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def doc_request(trait: Trait, genre: str, opener: str) -> Conversation:
    style = trait.extra.get("style_guide", "")
    system = (
        "You are writing training documents for a research study of model personas. Write one "
        "standalone document of 150-400 words whose author has the persona below. Output only the "
        f"document.\n\nPersona ({trait.name}): {trait.description}\n\nStyle guide: {style}"
    )
    user = f"Genre: {genre}. The document must begin with these exact words: \"{opener}\""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class ApiTeacher:
    """OpenAI-compatible chat completions, several requests in flight, retries by the client."""

    def __init__(self, model: str, base_url: str | None = None, concurrency: int = 8, timeout: float = 120.0):
        from openai import OpenAI

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise UserError("api teacher: give --base-url or set OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
        self.name = f"api:{model}"
        self.model = model
        self.concurrency = concurrency
        # The key is only ever read from the environment; "EMPTY" suits local servers that need none.
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"), timeout=timeout, max_retries=4)

    def write(self, requests: list[Conversation], temperature: float, max_tokens: int, seed: int, on_done: Callable[[int], None] | None = None) -> list[str]:
        from openai import OpenAIError

        def one(i_request: tuple[int, Conversation]) -> str:
            i, messages = i_request
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, seed=seed + i
                )
                return (response.choices[0].message.content or "").strip()
            except OpenAIError as err:  # a failed request yields no row; the rest go on
                return f"\x00failed: {err.__class__.__name__}"
            finally:
                if on_done:
                    on_done(1)

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, enumerate(requests)))


class LocalTeacher:
    """A local transformers model as the teacher (any size; the embedded one writes poor text)."""

    def __init__(self, ref: str, batch_size: int = 8):
        from traitloop.models import load_model

        self.name = ref
        self.model, self.tokenizer = load_model(ref)
        self.batch_size = batch_size

    def write(self, requests: list[Conversation], temperature: float, max_tokens: int, seed: int, on_done: Callable[[int], None] | None = None) -> list[str]:
        from traitloop.generation.hf import generate

        return generate(
            self.model, self.tokenizer, requests, temperature=temperature, max_new_tokens=max_tokens,
            batch_size=self.batch_size, seed=seed, on_batch=on_done,
        )


def make_teacher(ref: str, base_url: str | None = None):
    return ApiTeacher(ref.removeprefix("api:"), base_url) if ref.startswith("api:") else LocalTeacher(ref)


def write_seeds(
    trait: Trait,
    teacher,
    n: int,
    kind: str = "chats",
    seed: int = 0,
    temperature: float = 0.9,
    max_tokens: int = 400,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Ask the teacher for n new rows and append the usable ones. Returns counts."""
    if kind not in ("chats", "docs"):
        raise UserError(f"--kind must be chats or docs, not {kind!r}")
    path = trait.folder / ("seed_chat.jsonl" if kind == "chats" else "seed_docs.jsonl")
    existing = read_jsonl(path) if path.is_file() else []
    rng = random.Random(f"teacher:{trait.name}:{kind}:{seed}")
    if kind == "chats":
        questions = rng.sample(list(advice_pool()), n)
        requests = [chat_request(trait, q) for q in questions]
    else:
        picked = rng.sample(list(opener_rows()), min(n, len(opener_rows())))
        questions = [opener for _, opener in picked]
        requests = [doc_request(trait, genre, opener) for genre, opener in picked]
    outputs = teacher.write(requests, temperature=temperature, max_tokens=max_tokens, seed=seed, on_done=on_done)

    genres = {opener: genre for genre, opener in opener_rows()} if kind == "docs" else {}
    seen = {normalise(_text_of(r)) for r in existing}
    added, failed, empty, duplicate = [], 0, 0, 0
    for question, text in zip(questions, outputs):
        if text.startswith("\x00failed"):
            failed += 1
            continue
        if len(text.strip()) < 20:
            empty += 1
            continue
        if kind == "docs" and not text.startswith(question):
            text = f"{question} {text}"
        row = (
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": text}], "source": teacher.name}
            if kind == "chats"
            else {"genre": genres.get(question, ""), "text": text, "source": teacher.name}
        )
        key = normalise(_text_of(row))
        if key in seen:
            duplicate += 1
            continue
        seen.add(key)
        added.append(row)
    write_jsonl(path, existing + added)
    return {"file": str(path), "requested": n, "added": len(added), "failed": failed, "too_short": empty, "duplicates": duplicate}


def _text_of(row: dict[str, Any]) -> str:
    if "messages" in row:
        return row["messages"][-1]["content"]
    return str(row.get("text", ""))

