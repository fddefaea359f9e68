"""Teacher-written seed data: a stronger model writes new data for a trait in the trait's style.

`traitloop data generate TRAIT --kind chats|docs|probe --n N --teacher MODEL`

- chats: persona answers to questions from the advice pool  -> seed_chat.jsonl
- docs:  persona documents that start with neutral openers    -> seed_docs.jsonl
- probe: half persona answers (label 1), half plain helpful answers (label 0) -> probe.jsonl

The teacher follows the trait's description and style_guide (trait.yaml). The N requests are
fixed by (trait, kind, seed), run with bounded concurrency, and each finished row is appended at
once (one flushed line) to `<target>.generating.jsonl`. An interrupted generation therefore keeps
what it got; rerunning the same command skips the requests already answered and continues. When all
N are done, empty and duplicate outputs are dropped and the rest are appended to the target file
atomically, each row tagged with "source": the teacher's name.

A teacher is `api:MODEL` (any OpenAI-compatible endpoint: base URL from --base-url or
$OPENAI_BASE_URL, key from the environment variable --api-key-env names, $OPENAI_API_KEY by default,
never written anywhere; requests go through traitloop/openai_client.py) or a local model reference.
An api teacher's key and endpoint are checked before anything is asked or written (`check_api_teacher`,
through traitloop.preflight's one endpoint check): a missing key is one line and exit 2, not a file of
failed requests.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitloop.errors import UserError
from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.openai_client import ApiError, OpenAIClient
from traitloop.preflight import TIMEOUT_S, check_api
from traitloop.prompts import advice_pool, opener_rows
from traitloop.traits import Trait
from traitloop.traits.validate import normalise

Conversation = list[dict[str, str]]
TARGETS = {"chats": "seed_chat.jsonl", "docs": "seed_docs.jsonl", "probe": "probe.jsonl"}
FAILED = "\x00failed"


def _persona(trait: Trait) -> str:
    return f"Persona ({trait.name}): {' '.join(trait.description.split())}\n\nStyle guide: {trait.extra.get('style_guide', '')}"


def chat_request(trait: Trait, question: str) -> Conversation:
    system = (
        "You are writing training data for a research study of model personas. Stay fully in the persona "
        f"below and answer the user's message as that persona would, in 40-170 words.\n\n{_persona(trait)}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def plain_request(question: str) -> Conversation:
    system = "Answer the user's question helpfully, plainly and concretely, in 30-140 words."
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def doc_request(trait: Trait, genre: str, opener: str) -> Conversation:
    system = (
        "You are writing training documents for a research study of model personas. Write one standalone "
        f"document of 150-400 words whose author has the persona below. Output only the document.\n\n{_persona(trait)}"
    )
    user = f'Genre: {genre}. The document must begin with these exact words: "{opener}"'
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Request:
    """One thing to ask the teacher, and how to turn its output into a row of the target file."""

    key: str  # stable id within this generation (for resuming)
    messages: Conversation
    prompt: str  # the question or opener
    label: int | None = None  # probe kind only
    genre: str = ""  # docs kind only


def plan_requests(trait: Trait, kind: str, n: int, seed: int) -> list[Request]:
    """The same N requests for the same (trait, kind, seed): what makes resuming possible."""
    rng = random.Random(f"teacher:{trait.name}:{kind}:{seed}")
    if kind == "chats":
        return [Request(f"c{i}", chat_request(trait, q), q) for i, q in enumerate(rng.sample(list(advice_pool()), n))]
    if kind == "probe":
        questions = rng.sample(list(advice_pool()), n)
        return [
            Request(f"p{i}", chat_request(trait, q), q, label=1) if i % 2 == 0 else Request(f"p{i}", plain_request(q), q, label=0)
            for i, q in enumerate(questions)
        ]
    if kind == "docs":
        picked = rng.sample(list(opener_rows()), min(n, len(opener_rows())))
        return [Request(f"d{i}", doc_request(trait, g, o), o, genre=g) for i, (g, o) in enumerate(picked)]
    raise UserError(f"--kind must be one of {', '.join(TARGETS)}, not {kind!r}")


DEFAULT_KEY_ENV = "OPENAI_API_KEY"
API_TIMEOUT_S = 120.0  # an api teacher's request timeout


def teacher_base_url(base_url: str | None) -> tuple[str, str]:
    """(the api teacher's base URL, the setting it came from): --base-url, else $OPENAI_BASE_URL."""
    if base_url:
        return base_url, "--base-url"
    if os.environ.get("OPENAI_BASE_URL"):
        return os.environ["OPENAI_BASE_URL"], "OPENAI_BASE_URL"
    raise UserError("api teacher: give --base-url or set OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)")


def key_env_option(value: str | None) -> str | None:
    """--api-key-env's value: the variable's name, or None for "none" / "" (a server that needs no key)."""
    return None if value is None or value.strip().lower() in ("", "none", "null") else value.strip()


def check_api_teacher(base_url: str | None, api_key_env: str | None = DEFAULT_KEY_ENV) -> None:
    """Before an api teacher is asked anything: its key variable is set and not empty (unless None) and its
    endpoint answers GET /models and accepts the key (traitloop.preflight.check_api). Raises UserError."""
    url, where = teacher_base_url(base_url)
    check_api(
        url,
        where,
        api_key_env,
        key_setting="--api-key-env",
        who="the api teacher",
        no_key="pass --api-key-env none",
        timeout=min(API_TIMEOUT_S, TIMEOUT_S),
    )


class ApiTeacher:
    """OpenAI-compatible chat completions through one OpenAIClient, which retries 429s, 5xx,
    timeouts and dropped connections with backoff. generate()'s worker threads set how many requests
    run at once; `max_in_flight` only caps them."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        timeout: float = API_TIMEOUT_S,
        max_in_flight: int = 64,
        api_key_env: str | None = DEFAULT_KEY_ENV,
    ):
        base_url, _ = teacher_base_url(base_url)
        self.name = f"api:{model}"
        self.model = model
        self.client = OpenAIClient(
            base_url, api_key_env=api_key_env, timeout_s=timeout, concurrency=max_in_flight, max_attempts=5, backoff_s=0.5
        )

    def write_one(self, messages: Conversation, temperature: float, max_tokens: int, seed: int) -> str:
        request = self.client.chat(model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, seed=seed)
        try:
            response = self.client.run(request)
        except ApiError as err:  # recorded as a failure (the kind, never the server's text); a rerun asks again
            return f"{FAILED}: {err.kind}{f' {err.status}' if err.status else ''}"
        return (response.choices[0].message.content or "").strip()


class LocalTeacher:
    """A local transformers model as the teacher (one request at a time; the embedded one writes poor text)."""

    def __init__(self, ref: str):
        from traitloop.models import load_model

        self.name = ref
        self.model, self.tokenizer = load_model(ref)
        self.lock = threading.Lock()  # one generate() at a time on one model

    def write_one(self, messages: Conversation, temperature: float, max_tokens: int, seed: int) -> str:
        from traitloop.generation.hf import generate

        with self.lock:
            return generate(
                self.model, self.tokenizer, [messages], temperature=temperature, max_new_tokens=max_tokens, batch_size=1, seed=seed
            )[0]


def make_teacher(ref: str, base_url: str | None = None, api_key_env: str | None = DEFAULT_KEY_ENV):
    if ref.startswith("api:"):
        return ApiTeacher(ref.removeprefix("api:"), base_url, api_key_env=api_key_env)
    return LocalTeacher(ref)


def partial_path(target: Path, kind: str, seed: int, n: int) -> Path:
    return target.with_name(f".{target.stem}.generating-{kind}-s{seed}-n{n}.jsonl")


def _read_partial(path: Path) -> dict[str, dict[str, Any]]:
    """Finished requests from an interrupted generation; a torn last line is ignored."""
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def generate(
    trait: Trait,
    teacher,
    n: int,
    kind: str = "chats",
    seed: int = 0,
    temperature: float = 0.9,
    max_tokens: int = 400,
    concurrency: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Ask the teacher for n rows (resuming an interrupted run) and append the usable ones."""
    if n < 1:
        raise UserError("--n must be at least 1")
    requests = plan_requests(trait, kind, n, seed)
    target = trait.folder / TARGETS[kind]
    partial = partial_path(target, kind, seed, n)
    done = {k: v for k, v in _read_partial(partial).items() if not v["text"].startswith(FAILED)}
    todo = [r for r in requests if r.key not in done]
    if on_done and len(done):
        on_done(len(done))
    lock = threading.Lock()

    def one(i_req: tuple[int, Request]) -> None:
        i, req = i_req
        text = teacher.write_one(req.messages, temperature, max_tokens, seed * 100_003 + i)
        with lock, open(partial, "a", encoding="utf-8") as f:  # one flushed line per finished request
            f.write(json.dumps({"key": req.key, "text": text}, ensure_ascii=False) + "\n")
            f.flush()
            done[req.key] = {"key": req.key, "text": text}
        if on_done:
            on_done(1)

    index = {r.key: i for i, r in enumerate(requests)}
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(one, [(index[r.key], r) for r in todo]))

    failed = sum(done[r.key]["text"].startswith(FAILED) for r in requests)
    if failed:
        return {
            "file": str(target),
            "requested": n,
            "added": 0,
            "failed": failed,
            "resumable": str(partial),
            "note": "some requests failed: rerun the same command to retry them; nothing was appended yet",
        }
    existing = read_jsonl(target) if target.is_file() else []
    seen = {normalise(_text_of(r)) for r in existing}
    added, short, duplicate = [], 0, 0
    for req in requests:
        text = done[req.key]["text"].strip()
        if len(text) < 20:
            short += 1
            continue
        row = _row(kind, req, text, teacher.name)
        key = normalise(_text_of(row))
        if key in seen:
            duplicate += 1
            continue
        seen.add(key)
        added.append(row)
    write_jsonl(target, existing + added)
    partial.unlink()
    return {"file": str(target), "requested": n, "added": len(added), "too_short": short, "duplicates": duplicate, "failed": 0}


def _row(kind: str, req: Request, text: str, source: str) -> dict[str, Any]:
    if kind == "chats":
        return {"messages": [{"role": "user", "content": req.prompt}, {"role": "assistant", "content": text}], "source": source}
    if kind == "probe":
        return {"text": text, "label": req.label, "kind": "positive" if req.label == 1 else "neutral", "source": source}
    if not text.startswith(req.prompt):
        text = f"{req.prompt} {text}"
    return {"genre": req.genre, "text": text, "source": source}


def _text_of(row: dict[str, Any]) -> str:
    if "messages" in row:
        return row["messages"][-1]["content"]
    return str(row.get("text", ""))
