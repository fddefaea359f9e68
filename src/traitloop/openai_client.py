"""One client for an OpenAI-compatible HTTP server (OpenAI, a `vllm serve` server, llama.cpp, ...),
shared by the api judge, the API teacher and the vLLM sampler.

An OpenAIClient owns, for one server:

- the base URL, and the API key: read from the environment variable the caller names when the HTTP
  session opens and sent as a Bearer header; never kept on this object, written, logged or put in an
  error message (a server that echoes it back has it masked);
- a key written into the base URL itself (https://user:KEY@host/v1, https://host/v1?api_key=KEY): the URL
  is shown and stored only through `redact_url`, which masks it (every message, log line and manifest
  entry that names a server URL goes through it), and a server's echo of it is masked like the key's;
- one HTTP session (the openai package's AsyncOpenAI, its own retries off) on one event loop that runs
  in a background thread, so synchronous callers on any thread share it through `run`;
- the timeout of every request;
- concurrency: at most `concurrency` requests in flight at once, whoever asks;
- retries: a 429, a 5xx, a timeout, a dropped or refused connection, or a body that does not parse is
  tried again after an exponential backoff with jitter, up to `max_attempts` attempts in all; a
  Retry-After header on a 429 or 503 sets the wait instead;
- errors: every failure ends in one ApiError that says why (`reason`) and what kind of failure it
  was; callers turn it into their own messages;
- helpers for the endpoints traitloop uses: chat completions, completions, the model list, vLLM's
  /tokenize and its LoRA adapter load and unload endpoints.

Helpers are coroutines: await them inside `run`, or call `client.run(client.chat(...))` from plain code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 60.0  # a Retry-After beyond this waits this long
JITTER = 0.25  # a backoff wait is stretched by up to this fraction, at random


class ApiError(Exception):
    """A request that ended without a usable answer. `str(err)` is `reason`.

    kind: "unreachable" (no connection), "timeout", "status" (an HTTP error status) or "bad_json" (a
    2xx body that does not parse as the answer expected). status and detail (the server's error text)
    are set for kind "status"; retry_after for a 429 or 503 that sent the header. cause names the
    exception underneath (the transport's, or the parse error's). attempts counts the attempts made."""

    def __init__(
        self,
        kind: str,
        reason: str,
        *,
        url: str,
        status: int | None = None,
        detail: str = "",
        cause: str = "",
        retry_after: float | None = None,
        attempts: int = 1,
    ):
        super().__init__(reason)
        self.kind, self.reason, self.url, self.status, self.detail = kind, reason, url, status, detail
        self.cause, self.retry_after, self.attempts = cause, retry_after, attempts

    @property
    def retryable(self) -> bool:
        """Whether another attempt could help (everything but an HTTP status like 400, 401 or 404)."""
        return self.kind != "status" or self.status == 429 or (self.status or 0) >= 500

    def __repr__(self) -> str:
        return f"ApiError({self.kind!r}, {self.reason!r}, attempts={self.attempts})"


class OpenAIClient:
    """See the module docstring. make_transport: () -> an AsyncOpenAI-like object (tests pass a fake);
    default: AsyncOpenAI on base_url with the key from $api_key_env (None: no key, "EMPTY" is sent).
    sleep: the coroutine that waits between attempts (tests pass one that records the wait)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        concurrency: int = 8,
        max_attempts: int = 4,
        backoff_s: float = 1.0,
        make_transport: Callable[[], Any] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.sleep = sleep
        self._make_transport = make_transport or self._openai_transport
        self._slots = asyncio.Semaphore(concurrency)
        self._session: list[Any] = []  # the transport, once opened (a list, so the finalizer can close it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        return f"OpenAIClient({redact_url(self.base_url)!r}, api_key_env={self.api_key_env!r}, concurrency={self.concurrency})"

    # ---- the event loop and the session ---------------------------------------------------------
    def run(self, coro: Awaitable[T]) -> T:
        """Run `coro` on this client's loop and return its result (blocking; any thread but the loop's)."""
        loop = self._started_loop()
        if threading.current_thread() is self._thread:
            raise RuntimeError("OpenAIClient.run called from its own loop: await the coroutine instead")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C: stop its requests too
            raise

    def close(self) -> None:
        """Close the HTTP session and stop the loop (a closed client starts afresh if used again)."""
        if self._finalizer is not None:
            self._finalizer()
        self._loop = self._thread = self._finalizer = None
        self._slots = asyncio.Semaphore(self.concurrency)  # a semaphore belongs to the loop that used it

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _started_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="openai-client", daemon=True)
                self._thread.start()
                self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._thread, self._session)
            return self._loop

    def _transport(self) -> Any:
        """The one HTTP session, opened on first use (on the loop's thread)."""
        if not self._session:
            self._session.append(self._make_transport())
        return self._session[0]

    def _openai_transport(self) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=self._key() or "EMPTY", timeout=self.timeout_s, max_retries=0)

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    # ---- one request, with the slot, the retries and the typed error ------------------------------
    async def call(
        self,
        path: str,
        send: Callable[[Any], Awaitable[Any]],
        *,
        parse: Callable[[Any], T] | None = None,
        on_attempt: Callable[[int], None] | None = None,
    ) -> T:
        """`send(transport)`, then `parse` of its answer, retried as the module docstring says, holding
        one of the `concurrency` slots throughout (backoff waits included). A ValueError from parse
        counts as a bad body. on_attempt(n) is called before attempt n (1, 2, ...). Raises ApiError (its
        URL masked: redact_url)."""
        url = redact_url(self.url(path))
        delay = self.backoff_s
        async with self._slots:
            for attempt in range(1, self.max_attempts + 1):
                if on_attempt is not None:
                    on_attempt(attempt)
                try:
                    answer = await send(self._transport())
                    return parse(answer) if parse is not None else answer
                except Exception as exc:  # sorted by _classify; anything else is re-raised
                    error = self._classify(exc, url)
                    if error is None:
                        raise
                error.attempts = attempt
                if not error.retryable or attempt == self.max_attempts:
                    raise error
                await self.sleep(_wait(error, delay))
                delay *= 2
        raise AssertionError("max_attempts < 1")  # the loop returns or raises before it ends

    def url(self, path: str) -> str:
        """The full URL of `path` (relative to the base URL, or already absolute)."""
        return path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"

    def root_url(self, path: str) -> str:
        """The URL of `path` beside /v1 (vLLM serves /tokenize at the server's root)."""
        return f"{self.base_url.removesuffix('/v1')}/{path.lstrip('/')}"

    def _classify(self, exc: Exception, url: str) -> ApiError | None:
        """The ApiError that `exc` means, or None when it is not a transport or parse failure."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return ApiError("timeout", f"timed out after {self.timeout_s:g} s ({url})", url=url, cause="APITimeoutError")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__.__class__.__name__ if exc.__cause__ else "unknown"
            return ApiError("unreachable", f"server unreachable at {url} ({cause})", url=url, cause=cause)
        if isinstance(exc, openai.APIStatusError):
            status, detail = exc.status_code, self._scrub(_error_text(exc))
            return ApiError(
                "status",
                f"HTTP {status} {detail[:300]}".rstrip(),
                url=url,
                status=status,
                detail=detail,
                cause=exc.__class__.__name__,
                retry_after=_retry_after(exc) if status in RETRY_AFTER_STATUSES else None,
            )
        if isinstance(exc, (openai.APIResponseValidationError, ValueError)):  # JSONDecodeError is a ValueError
            return ApiError("bad_json", f"bad JSON from {url} ({exc.__class__.__name__})", url=url, cause=exc.__class__.__name__)
        return None

    def _scrub(self, text: str) -> str:
        """`text` with the API key, and the secrets in the base URL (url_secrets), masked, should a server
        echo them (as they are, or base64-encoded)."""
        secrets = [key for key in (self._key(), *url_secrets(self.base_url)) if key]
        for form in sorted({form for key in secrets for form in secret_forms(key)}, key=len, reverse=True):
            text = text.replace(form, "***")
        return text

    # ---- the endpoints ---------------------------------------------------------------------------
    async def chat(self, *, parse: Callable[[Any], T] | None = None, on_attempt: Callable[[int], None] | None = None, **params) -> Any:
        """POST /v1/chat/completions with `params` (model, messages, ...; extra_body for server extras)."""
        return await self.call("/chat/completions", lambda t: t.chat.completions.create(**params), parse=parse, on_attempt=on_attempt)

    async def completion(
        self, *, parse: Callable[[Any], T] | None = None, on_attempt: Callable[[int], None] | None = None, **params
    ) -> Any:
        """POST /v1/completions (a plain-text prompt to continue) with `params`."""
        return await self.call("/completions", lambda t: t.completions.create(**params), parse=parse, on_attempt=on_attempt)

    async def models(self) -> list[dict[str, Any]]:
        """GET /v1/models: the served models, each a dict with at least "id"."""

        def data(body: Any) -> list[dict[str, Any]]:
            models = body.get("data") if isinstance(body, dict) else None
            if not isinstance(models, list) or not all(isinstance(m, dict) and "id" in m for m in models):
                raise ValueError("no list of models")
            return models

        return await self.call("/models", lambda t: t.get("/models", cast_to=object), parse=data)

    async def tokenize(self, model: str | None, text: str) -> list[int]:
        """vLLM's POST /tokenize (beside /v1): the token ids of `text`, without special tokens. A server
        without the endpoint answers an ApiError (HTTP 404, or a body that is not vLLM's)."""
        url = self.root_url("/tokenize")
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        answer = await self.call(url, lambda t: t.post(url, cast_to=object, body=body))
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            shown = redact_url(url)
            raise ApiError("bad_json", f"bad JSON from {shown} (no token list)", url=shown, cause="no token list")
        return tokens

    async def load_lora(self, name: str, path: str) -> str:
        """vLLM's POST /v1/load_lora_adapter: serve the adapter at `path` under `name`; the server's reply."""
        body = {"lora_name": name, "lora_path": path}
        return await self.call("/load_lora_adapter", lambda t: t.post("/load_lora_adapter", cast_to=str, body=body))

    async def unload_lora(self, name: str) -> str:
        """vLLM's POST /v1/unload_lora_adapter: stop serving the adapter `name`; the server's reply."""
        body = {"lora_name": name}
        return await self.call("/unload_lora_adapter", lambda t: t.post("/unload_lora_adapter", cast_to=str, body=body))


async def gather(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await them concurrently, in order; on the first failure cancel the rest, then raise it (no
    request is left running)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def secret_forms(key: str) -> list[str]:
    """The key as a server may echo it back: itself, and (for a key of 8 characters or more) its base64
    text, standard and URL-safe, at each of the three alignments it can have inside a longer encoded
    text such as a Basic header: the characters that depend on the key's bytes alone."""
    forms = {key}
    raw = key.encode()
    if len(raw) >= 8:
        for offset in range(3):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                text = encode(b"\0" * offset + raw).decode()
                forms.add(text[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6])
    return sorted(forms, key=len, reverse=True)


KEY_PREFIXES = ("sk-", "sk_", "pk-", "rk-", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "github_pat_", "glpat-", "xox", "AKIA", "key-")
MASK = "***"


def _userinfo(url: str) -> tuple[str, str, str | None, str]:
    """(the text before the user info, user, password or None, the text after the user info), or ("", "",
    None, url) for a URL without user info. The user info runs from '://' to the URL's last '@': wider than
    a URL parser reads it, so that a password holding a '/', '?' or '#' that should have been
    percent-encoded is still found (a base URL has no other '@')."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not sep or not at:
        return "", "", None, url
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://", user, password if colon else None, f"@{after}"


def _looks_like_key(user: str) -> bool:
    """A user name that is a token rather than a name: a known key prefix, or long and with digits in it."""
    user = unquote(user)
    return user.startswith(KEY_PREFIXES) or (len(user) >= 16 and any(c.isdigit() for c in user))


# Query parameters whose value is a secret, compared after lowercasing and reading '-' as '_' (is_secret_param);
# a name ending in one of SECRET_PARAM_SUFFIXES counts too. "code" is an Azure Functions key, "sig" a SAS signature.
SECRET_PARAMS = (
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "auth",
    "authorization",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "x_api_key",
    "code",
)
SECRET_PARAM_SUFFIXES = ("_key", "_token", "_secret", "_password")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter called `name` (as written, percent-encoded or not) holds a secret."""
    name = unquote(name).lower().replace("-", "_")
    return name in SECRET_PARAMS or name.endswith(SECRET_PARAM_SUFFIXES)


def _split_query(text: str) -> tuple[str, str, str]:
    """(`text` up to and including its '?', its query, the '#' and fragment after it); the query is ''
    when `text` has none (a '?' inside the fragment is no query)."""
    rest, hash_mark, fragment = text.partition("#")
    path, question, query = rest.partition("?")
    return path + question, query, hash_mark + fragment


def secret_params(url: str) -> list[tuple[str, str]]:
    """(name, value), as written, of each query parameter of `url` whose name looks secret
    (is_secret_param) and whose value is not empty, in the URL's order."""
    _, query, _ = _split_query(url)
    pairs = [param.partition("=") for param in query.split("&")]
    return [(name, value) for name, _, value in pairs if value and is_secret_param(name)]


def _mask_query(text: str) -> str:
    """`text` with the value of each secret query parameter (is_secret_param) replaced by '***'; everything
    else, parameter order and the fragment included, exactly as written."""
    before, query, after = _split_query(text)
    params = [param.partition("=") for param in query.split("&")]
    shown = [f"{name}={MASK}" if value and is_secret_param(name) else name + eq + value for name, eq, value in params]
    return before + "&".join(shown) + after


def _mask_userinfo(url: str) -> str:
    """`url` with a password in its user info, and a user name that looks like a key, replaced by '***'."""
    before, user, password, after = _userinfo(url)
    shown_user = MASK if _looks_like_key(user) else user
    shown_password = "" if password is None else f":{MASK if password else ''}"
    return f"{before}{shown_user}{shown_password}{after}"


def redact_url(url: str) -> str:
    """`url` as it may be shown or stored: a password in its user info (https://user:KEY@host/v1), a user
    name that looks like a key (https://sk-...@host/v1) and the value of a query parameter whose name looks
    secret (https://host/v1?api_key=KEY, is_secret_param) replaced by '***'; anything else as written, never
    re-encoded. The query is read once the user info is masked, so a '?' in a password is no query and an
    '@' in the query hides nothing. Every message, log line and file that names a server URL shows it
    through this."""
    return _mask_query(_mask_userinfo(url)) if isinstance(url, str) else url


def redact_urls(data: T) -> T:
    """A copy of JSON-like `data` (a config or manifest dict) with every string that is a URL passed
    through redact_url."""
    if isinstance(data, dict):
        return {key: redact_urls(value) for key, value in data.items()}  # type: ignore[return-value]
    if isinstance(data, list):
        return [redact_urls(value) for value in data]  # type: ignore[return-value]
    if isinstance(data, str) and "://" in data:
        return redact_url(data)  # type: ignore[return-value]
    return data


def url_secrets(url: str) -> list[str]:
    """The secrets redact_url hides in `url` (as written and percent-decoded, as a client sends them), for
    masking a server's echo of them; a secret shorter than 4 characters is left out (masking it would
    garble the text around it)."""
    if not isinstance(url, str):
        return []
    _, user, password, _ = _userinfo(url)
    written = [value for _, value in secret_params(_mask_userinfo(url))]  # the query as redact_url reads it
    written += [password] if password else []
    written += [user] if _looks_like_key(user) else []
    found = {form for secret in written for form in (secret, unquote(secret))}
    return sorted(s for s in found if len(s) >= 4)


def _wait(error: ApiError, delay: float) -> float:
    """Seconds to wait before the next attempt: the server's Retry-After, else `delay` with jitter."""
    if error.retry_after is not None:
        return min(error.retry_after, MAX_RETRY_AFTER_S)
    return delay * (1 + JITTER * random.random())


def _retry_after(exc: Any) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is ignored: the backoff applies)."""
    try:
        value = exc.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _error_text(exc: Any) -> str:
    """The server's error body as text, else the openai package's message for it."""
    try:
        text = exc.response.text
    except Exception:  # noqa: BLE001 - a response without a readable body
        text = ""
    return (text or str(getattr(exc, "message", "") or exc)).strip()


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, session: list[Any]) -> None:
    """Close the session and stop the loop (close(), or the finalizer when the client is collected)."""
    if loop.is_closed():
        return
    on_loop_thread = threading.current_thread() is thread
    if session and not on_loop_thread:
        close = getattr(session.pop(), "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    if not on_loop_thread:
        thread.join(timeout=10)
        loop.close()
