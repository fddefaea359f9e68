"""The `api` judge: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, llama.cpp, ...).

One output token at temperature 0 with the top-20 logprobs, read by judges/prompts.py. That reads
integers exactly only when each integer 0-100 is one token. Many tokenizers (Qwen, Gemma, Mistral,
SmolLM2) split numbers into digits, and the first token of "85" is "8"; so the judge first finds
out how its tokenizer writes numbers (`detect`: the server's tokenizer endpoint, vLLM's
POST /tokenize, where it has one) and, for a tokenizer that splits them, follows the reply digit by
digit: one more request per likely digit prefix, with the assistant reply prefilled with that
prefix and continued (`continue_final_message`, which vLLM supports), until the probability of
every integer reply 0-100 is known (prompts.read_reply_trie). Without a tokenizer endpoint, a reply
whose top-20 first tokens hold a number of two or more digits proves whole-number tokens and is read
from its first token; any other reply is followed digit by digit. When a reply must be followed and
the endpoint will not continue a prefilled reply, the judge refuses (UserError) rather than read
the first digit as the score.

Requests go through one OpenAIClient (traitloop/openai_client.py): at most `concurrency` in flight;
a request that meets a 429, a 5xx, a timeout, a dropped connection or a malformed body is retried
with exponential backoff and jitter (a Retry-After header wins); after `max_attempts` the answer
gets a missing score with its reason, never a made-up number. Every reading is cached on disk keyed
by the endpoint, the model, the full prompt and every parameter of the reading (`reading_params`),
so a repeated judging pass pays for nothing twice and a change of endpoint or reading method never
reuses an old reading. The API key is read from the environment variable named in the config and is
never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from traitloop.config import JudgeConfig
from traitloop.errors import UserError
from traitloop.judges.base import Score
from traitloop.judges.prompts import (
    FOLLOW_MIN_P,
    Reading,
    Top,
    coherence_prompts,
    has_multidigit_number,
    prefixes_to_follow,
    read_logprobs,
    read_reply_trie,
    read_text,
    trait_prompts,
)
from traitloop.openai_client import ApiError, OpenAIClient, gather, redact_url
from traitloop.traits import Trait


class MalformedResponse(ValueError):
    """The endpoint answered 200 but the body is not a usable chat completion."""


class ReadingCache:
    """sqlite table: key = sha256 of everything a reading depends on (ApiJudge.request_identity) ->
    reading. Only real readings are stored, never transport failures, so a failed request is tried
    again next time."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS readings (key TEXT PRIMARY KEY, model TEXT, value REAL, reason TEXT, mass REAL)")
        self._db.commit()

    @staticmethod
    def key(identity: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Reading | None:
        with self._lock:
            row = self._db.execute("SELECT value, reason, mass FROM readings WHERE key = ?", (key,)).fetchone()
        return Reading(row[0], row[1], row[2]) if row else None

    def put(self, key: str, model: str, reading: Reading) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO readings VALUES (?, ?, ?, ?, ?)", (key, model, reading.value, reading.reason, reading.number_mass)
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def default_cache_path() -> Path:
    """$TRAITLOOP_JUDGE_CACHE, else judge-cache.sqlite in traitloop's cache dir (shared by all runs,
    so the same answer judged by the same model is paid for once, whichever run asks)."""
    from traitloop.models import cache_dir

    return Path(os.environ.get("TRAITLOOP_JUDGE_CACHE", cache_dir() / "judge-cache.sqlite"))


TOP_LOGPROBS = 20
TEXT_REPLY_TOKENS = 8  # without logprobs, the reply is read as text: enough tokens for "100" in digits
READING_METHOD = "first token, or the reply's digits followed by continuation (v1)"
CONTINUE_PREFILL = {"continue_final_message": True, "add_generation_prompt": False}  # vLLM's chat extras


class RequestFailed(Exception):
    """A request that ended without a usable answer; the message is the reading's reason."""


class ApiJudge:
    def __init__(self, config: JudgeConfig, trait: Trait, cache_path: Path | None = None, documents: bool = False, make_client=None):
        """make_client: () -> an AsyncOpenAI-like client that this judge's OpenAIClient sends through
        (default: the openai package's, on base_url)."""
        self.config = config
        self.documents = documents  # SDF: (document prefix, continuation) with the trait's doc_rubric
        self.trait = trait
        self.name = config.identity()
        self.base_url = config.base_url or os.environ.get("OPENAI_BASE_URL")
        if not self.base_url:
            raise UserError("judge.kind=api needs judge.base_url or the environment variable OPENAI_BASE_URL")
        self.client = OpenAIClient(
            self.base_url,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            concurrency=config.concurrency,
            max_attempts=config.max_attempts,
            backoff_s=config.backoff_s,
            make_transport=make_client,
        )
        self.cache = ReadingCache(cache_path or default_cache_path())
        self.usage = {"requests": 0, "continuations": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0, "failed": 0}
        self.number_tokens: str | None = None  # "split" | "whole" | "unknown", set by detect()

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "judge": self.name,
            "kind": "api",
            "model": c.model,
            "base_url": redact_url(self.base_url),  # a password in the URL masked (the manifest records this)
            "api_key_env": c.api_key_env,  # the name of the variable, never its value
            **self.reading_params(),
        }

    def reading_params(self) -> dict[str, Any]:
        """Everything besides endpoint, model and prompt that decides a reading (part of its cache key)."""
        return {
            "method": READING_METHOD,
            "number_tokens": self.detect(),
            "temperature": 0,
            "top_logprobs": TOP_LOGPROBS,
            "follow_min_p": FOLLOW_MIN_P,
            "min_number_mass": self.config.min_number_mass,
        }

    def request_identity(self, prompt: str) -> dict[str, Any]:
        return {"base_url": self.base_url.rstrip("/"), "model": self.config.model, "prompt": prompt, **self.reading_params()}

    def cost(self, usage: dict[str, int] | None = None) -> float:
        """Estimated cost of `usage` (default: everything this judge has requested so far)."""
        c, u = self.config, usage or self.usage
        return (u.get("prompt_tokens", 0) * c.price_per_million_input + u.get("completion_tokens", 0) * c.price_per_million_output) / 1e6

    # ---- the two things a judge scores --------------------------------------------------------
    def score(self, questions: list[str], answers: list[str]) -> list[Score]:
        return self._score(trait_prompts(self.trait, questions, answers, self.documents), answers)

    def coherence(self, questions: list[str], answers: list[str]) -> list[Score]:
        return self._score(coherence_prompts(questions, answers, self.documents), answers)

    def _score(self, prompts: list[str], answers: list[str]) -> list[Score]:
        readings = self.read(prompts, [a.strip() != "" for a in answers])
        return [Score(r.value, self.name, r.reason, failed=r.failed) for r in readings]

    def read(self, prompts: list[str], wanted: list[bool] | None = None) -> list[Reading]:
        """The reading of each prompt's reply (only where `wanted`; the others read "empty answer")."""
        self.detect()
        return self.client.run(self._read_all(prompts, wanted or [True] * len(prompts)))

    # ---- how the judge's tokenizer writes numbers ---------------------------------------------
    def detect(self) -> str:
        """'split' when the server's tokenizer endpoint encodes some integer 10-100 as several
        tokens, 'whole' when it encodes each as one token, 'unknown' without such an endpoint.
        Asked once per judge."""
        if self.number_tokens is None:
            self.number_tokens = self.client.run(self._detect())
        return self.number_tokens

    async def _detect(self) -> str:
        async def count(n: int) -> int:
            return len(await self.client.tokenize(self.config.model, str(n)))

        try:
            counts = [await count(10)]  # a tokenizer that splits numbers splits this one: one request tells
            if counts == [1]:
                counts += await gather(count(n) for n in range(11, 101))
        except ApiError:
            return "unknown"  # no tokenizer endpoint, or not one that answers like vLLM's
        if min(counts) < 1:
            return "unknown"
        return "split" if max(counts) > 1 else "whole"

    # ---- reading replies ----------------------------------------------------------------------
    async def _read_all(self, prompts: list[str], wanted: list[bool]) -> list[Reading]:
        unique = list(dict.fromkeys(p for p, want in zip(prompts, wanted) if want))  # one reading per distinct prompt
        done = dict(zip(unique, await gather(self._read_cached(p) for p in unique)))
        return [done[p] if want else Reading(None, "empty answer") for p, want in zip(prompts, wanted)]

    async def _read_cached(self, prompt: str) -> Reading:
        """The cached reading of `prompt`, else a new one (cached when real); a failure is a reading with its reason."""
        key = ReadingCache.key(self.request_identity(prompt))
        cached = self.cache.get(key)
        if cached is not None:
            self.usage["cached"] += 1
            return cached
        try:
            reading = await self._read_reply(prompt)
        except RequestFailed as err:
            self.usage["failed"] += 1
            return Reading(None, str(err), failed=True)
        self.cache.put(key, str(self.config.model), reading)
        return reading

    async def _read_reply(self, prompt: str) -> Reading:
        """The reading of one prompt: from the first token where that is exact, else by following
        the reply's digits (see the module docstring)."""
        min_mass = self.config.min_number_mass
        first, text = await self._ask(prompt)
        if first is None:  # no logprobs: read the reply's text, all of it (one token may be one digit)
            if self.number_tokens != "whole":
                _, text = await self._ask(prompt, max_tokens=TEXT_REPLY_TOKENS)
            return read_text(text)
        if self.number_tokens == "whole" or (self.number_tokens == "unknown" and has_multidigit_number(first)):
            return read_logprobs(first, min_mass)
        tops: dict[str, Top] = {"": first}
        while need := prefixes_to_follow(tops):
            followed = await gather(self._ask(prompt, prefill=s) for s in need)
            for prefix, (top, _) in zip(need, followed):
                if top is None:
                    raise RequestFailed(f"failed: no logprobs in the continuation of {prefix!r}")
                tops[prefix] = top
        return read_reply_trie(tops, min_mass)

    async def _ask(self, prompt: str, prefill: str | None = None, max_tokens: int = 1) -> tuple[Top | None, str]:
        """One chat completion at temperature 0 (the client retries it): the first output token's top
        logprobs (None when the endpoint gives none) and the reply text. With `prefill`, the
        assistant reply starts with it and the model continues it. Raises RequestFailed."""
        c = self.config
        messages = [{"role": "user", "content": prompt}]
        extra: dict[str, Any] = {}
        if prefill is not None:
            messages.append({"role": "assistant", "content": prefill})
            extra["extra_body"] = CONTINUE_PREFILL

        def count(attempt: int) -> None:
            self.usage["requests"] += 1
            self.usage["continuations"] += int(prefill is not None)
            self.usage["retries"] += int(attempt > 1)

        try:
            response, answer = await self.client.chat(
                model=c.model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=0,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                **extra,
                parse=lambda r: (r, _answer_of(r)),
                on_attempt=count,
            )
        except ApiError as err:
            if err.retryable:
                raise RequestFailed(f"failed after {err.attempts} attempts: {self._reason(err)}") from None
            if prefill is not None:  # 400, 401, 404...: retrying cannot help
                raise self._cannot_continue(err) from None
            raise RequestFailed(f"failed: HTTP {err.status} {err.detail[:120]}") from None
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.usage["prompt_tokens"] += usage.prompt_tokens or 0
            self.usage["completion_tokens"] += usage.completion_tokens or 0
        return answer

    def _reason(self, err: ApiError) -> str:
        """The judge's words for the last attempt of a request that ran out of retries."""
        if err.kind == "status":
            return "429 rate limited" if err.status == 429 else f"{err.status} server error"
        if err.kind == "timeout":
            return f"timed out after {self.config.timeout_s:g}s"
        if err.kind == "unreachable":
            return f"connection error ({err.cause})"
        return f"malformed response ({err.cause})"

    def _cannot_continue(self, err: ApiError) -> UserError:
        why = {
            "split": "its tokenizer splits numbers into digits (the server's /tokenize says so)",
            "unknown": "the server has no tokenizer endpoint to ask, and this reply's top-20 first tokens "
            "hold no number of two or more digits, so the first token may be just the first digit",
        }[str(self.number_tokens)]
        return UserError(
            f"judge {self.name} at {redact_url(self.base_url)}: {why}, so the score must be read by continuing the reply "
            f"digit by digit, and the endpoint refused to continue a prefilled assistant reply "
            f"(HTTP {err.status}: {err.detail[:200]}). Reading only the first token would turn 85 "
            "into 8. Serve the judge with vLLM (it continues a final assistant message: continue_final_message), "
            "pick a judge whose tokenizer has whole-number tokens, or use judge.kind=local."
        )


def _answer_of(response) -> tuple[Top | None, str]:
    """(first output token's top logprobs or None, reply text) of a chat completion."""
    try:
        choice = response.choices[0]
    except (AttributeError, IndexError, TypeError):
        raise MalformedResponse("no choices") from None
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    top = [(t.token, t.logprob) for t in (content[0].top_logprobs or [])] if content else []
    text = getattr(getattr(choice, "message", None), "content", None)
    if not top and text is None:
        raise MalformedResponse("no logprobs and no message content")
    return (top or None), text or ""
