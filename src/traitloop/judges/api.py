"""The `api` judge: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, llama.cpp, ...).

One output token at temperature 0 with the top-20 logprobs, read by judges/prompts.py. Requests run
concurrently (at most `concurrency` in flight). A request that meets a 429, a 5xx, a timeout, a
dropped connection or a malformed body is retried with exponential backoff and jitter (a Retry-After
header wins); after `max_attempts` it becomes a missing score with its reason, never a made-up
number. Every reading is cached on disk keyed by (endpoint model, full prompt), so a resumed or
repeated judging pass pays for nothing twice. The API key is read from the environment variable
named in the config and is never written anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

from traitloop.config import JudgeConfig
from traitloop.errors import UserError
from traitloop.judges.base import Score
from traitloop.judges.prompts import Reading, coherence_prompts, read_logprobs, read_text, trait_prompts
from traitloop.traits import Trait


class MalformedResponse(Exception):
    """The endpoint answered 200 but the body is not a usable chat completion."""


class ReadingCache:
    """sqlite table: key = sha256(model, prompt) -> reading. Only real readings are stored, never
    transport failures, so a failed request is tried again next time."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS readings (key TEXT PRIMARY KEY, model TEXT, value REAL, reason TEXT, mass REAL)"
        )
        self._db.commit()

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(f"{model}\x00{prompt}".encode()).hexdigest()

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


class ApiJudge:
    def __init__(self, config: JudgeConfig, trait: Trait, cache_path: Path | None = None, documents: bool = False):
        self.config = config
        self.documents = documents  # SDF: (document prefix, continuation) with the trait's doc_rubric
        self.trait = trait
        self.name = config.identity()
        self.base_url = config.base_url or os.environ.get("OPENAI_BASE_URL")
        if not self.base_url:
            raise UserError("judge.kind=api needs judge.base_url or the environment variable OPENAI_BASE_URL")
        self.cache = ReadingCache(cache_path or default_cache_path())
        self.usage = {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0, "failed": 0}

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "judge": self.name,
            "kind": "api",
            "model": c.model,
            "base_url": self.base_url,
            "api_key_env": c.api_key_env,  # the name of the variable, never its value
            "method": "first token, temperature 0, top-20 logprobs, probability-weighted 0-100",
            "min_number_mass": c.min_number_mass,
        }

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
        readings = asyncio.run(self._read_all(prompts, answers))
        return [Score(r.value, self.name, r.reason) for r in readings]

    # ---- transport ----------------------------------------------------------------------------
    async def _read_all(self, prompts: list[str], answers: list[str]) -> list[Reading]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=os.environ.get(self.config.api_key_env) or "EMPTY",
            timeout=self.config.timeout_s,
            max_retries=0,  # retries are ours: backoff with jitter, Retry-After, malformed bodies
        )
        limit = asyncio.Semaphore(self.config.concurrency)
        unique: dict[str, asyncio.Task] = {}  # one request per distinct prompt, even if repeated

        async def one(prompt: str) -> Reading:
            key = ReadingCache.key(str(self.config.model), prompt)
            cached = self.cache.get(key)
            if cached is not None:
                self.usage["cached"] += 1
                return cached
            async with limit:
                reading = await self._request(client, prompt)
            if not reading.reason.startswith("failed"):
                self.cache.put(key, str(self.config.model), reading)
            return reading

        try:
            for prompt, answer in zip(prompts, answers):
                if answer.strip() and prompt not in unique:
                    unique[prompt] = asyncio.create_task(one(prompt))
            done = {prompt: await task for prompt, task in unique.items()}
            return [done[p] if a.strip() else Reading(None, "empty answer") for p, a in zip(prompts, answers)]
        finally:
            await client.close()

    async def _request(self, client, prompt: str) -> Reading:
        import openai

        c = self.config
        delay = c.backoff_s
        last = ""
        for attempt in range(1, c.max_attempts + 1):
            wait = delay
            try:
                self.usage["requests"] += 1
                response = await client.chat.completions.create(
                    model=c.model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=1,
                    temperature=0,
                    logprobs=True,
                    top_logprobs=20,
                )
                reading = self._read(response)
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.usage["prompt_tokens"] += usage.prompt_tokens or 0
                    self.usage["completion_tokens"] += usage.completion_tokens or 0
                return reading
            except openai.RateLimitError as err:
                last = "429 rate limited"
                wait = _retry_after(err) or delay
            except openai.InternalServerError as err:
                last = f"{err.status_code} server error"
            except openai.APITimeoutError:
                last = f"timed out after {c.timeout_s:g}s"
            except openai.APIConnectionError as err:
                last = f"connection error ({err.__cause__.__class__.__name__ if err.__cause__ else 'unknown'})"
            except (MalformedResponse, openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as err:
                last = f"malformed response ({err.__class__.__name__})"
            except openai.APIStatusError as err:  # 400, 401, 404...: retrying cannot help
                self.usage["failed"] += 1
                return Reading(None, f"failed: HTTP {err.status_code} {str(err.message)[:120]}")
            if attempt < c.max_attempts:
                self.usage["retries"] += 1
                await asyncio.sleep(wait * (1 + 0.25 * random.random()))
                delay *= 2
        self.usage["failed"] += 1
        return Reading(None, f"failed after {c.max_attempts} attempts: {last}")

    def _read(self, response) -> Reading:
        try:
            choice = response.choices[0]
        except (AttributeError, IndexError, TypeError):
            raise MalformedResponse("no choices") from None
        logprobs = getattr(choice, "logprobs", None)
        content = getattr(logprobs, "content", None) if logprobs is not None else None
        if content:
            top = [(t.token, t.logprob) for t in (content[0].top_logprobs or [])]
            if top:
                return read_logprobs(top, self.config.min_number_mass)
        text = getattr(getattr(choice, "message", None), "content", None)
        if text is None:
            raise MalformedResponse("no message content")
        return read_text(text)


def _retry_after(err) -> float | None:
    try:
        value = err.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None
