"""The one OpenAI-compatible client (traitloop/openai_client.py) against a small scripted HTTP server
started here on 127.0.0.1: retries and their waits (recorded by an injected sleep, never timed), the
typed error and its reasons, the concurrency bound, the key in the header and nowhere else, and the
endpoint helpers."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

from traitloop.openai_client import ApiError, OpenAIClient, gather

SECRET = "sk-test-client-never-shown-0123456789"
CHAT = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
}
MESSAGES = [{"role": "user", "content": "Hello?"}]


class Server:
    """Answers each request with the next scripted reply (status, headers, body bytes); with none left,
    200 and a chat completion (or the `default` reply). Records every request, and how many were
    being handled at once. With `hold`, a request is held until `hold` requests are in flight at once
    or every request expected has arrived."""

    def __init__(self, script=(), default=None, hold: int = 0, expected: int = 0):
        self.script = list(script)
        self.default = default or (200, {}, json.dumps(CHAT).encode())
        self.hold, self.expected = hold, expected
        self.requests: list[dict] = []  # method, path, authorization, body
        self.active = self.max_active = 0
        self.release = threading.Event()  # lets "hang" replies go
        self.cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.answer()

            def do_POST(self):
                self.answer()

            def answer(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                with server.cond:
                    server.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "body": json.loads(raw) if raw else None,
                            "authorization": self.headers.get("authorization"),
                        }
                    )
                    reply = server.script.pop(0) if server.script else server.default
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    server.cond.notify_all()
                    if server.hold:
                        server.cond.wait_for(lambda: server.active >= server.hold or len(server.requests) >= server.expected, timeout=30)
                    server.active -= 1
                if reply == "hang":
                    server.release.wait(30)
                    self.close_connection = True
                    return
                status, headers, body = reply
                self.send_response(status)
                headers = {"content-type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def error(status: int, text: str = "boom", headers: dict | None = None):
    return status, headers or {}, json.dumps({"error": text}).encode()


class Waits(list):
    """An injected sleep: records each wait instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(url: str, waits: Waits, **kwargs) -> OpenAIClient:
    options = {"api_key_env": "TRAITLOOP_TEST_KEY", "timeout_s": 10.0, "max_attempts": 3, "backoff_s": 0.1, **kwargs}
    return OpenAIClient(url, sleep=waits, **options)


def chat(c: OpenAIClient):
    return c.run(c.chat(model="m", messages=MESSAGES, max_tokens=1))


def test_a_429_with_retry_after_is_waited_for_then_retried(monkeypatch):
    monkeypatch.setenv("TRAITLOOP_TEST_KEY", SECRET)
    waits = Waits()
    with Server([error(429, "slow down", {"Retry-After": "1"})]) as server, client(server.url, waits) as c:
        response = chat(c)
    assert response.choices[0].message.content == "hi"
    assert waits == [1.0]  # the server's Retry-After, not the 0.1 s backoff
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2


def test_a_500_is_retried_up_to_the_limit_then_a_typed_error_names_the_status():
    waits = Waits()
    attempts = []
    with Server(default=error(500)) as server, client(server.url, waits) as c, pytest.raises(ApiError) as caught:
        c.run(c.chat(model="m", messages=MESSAGES, on_attempt=attempts.append))
    err = caught.value
    assert (err.kind, err.status, err.attempts, err.retryable) == ("status", 500, 3, True)
    assert str(err).startswith("HTTP 500") and err.url == server.url + "/chat/completions"
    assert len(server.requests) == 3 and attempts == [1, 2, 3]
    assert len(waits) == 2  # exponential backoff with jitter: 0.1 then 0.2, each stretched by at most 25%
    assert 0.1 <= waits[0] <= 0.125 and 0.2 <= waits[1] <= 0.25


def test_a_client_error_status_is_not_retried():
    waits = Waits()
    with Server([error(404, "no such model")]) as server, client(server.url, waits) as c, pytest.raises(ApiError) as caught:
        chat(c)
    assert (caught.value.status, caught.value.attempts, caught.value.retryable) == (404, 1, False)
    assert "no such model" in caught.value.detail and waits == [] and len(server.requests) == 1


def test_a_refused_connection_is_unreachable_and_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    url = f"http://127.0.0.1:{port}/v1"
    waits = Waits()
    with client(url, waits, max_attempts=2) as c, pytest.raises(ApiError) as caught:
        chat(c)
    err = caught.value
    assert err.kind == "unreachable" and err.attempts == 2 and len(waits) == 1
    assert f"server unreachable at {url}/chat/completions" in str(err)


def test_a_hung_request_times_out_and_says_after_how_long():
    waits = Waits()
    with Server(default="hang") as server, client(server.url, waits, timeout_s=0.3, max_attempts=2) as c, pytest.raises(ApiError) as caught:
        chat(c)
    assert caught.value.kind == "timeout" and "timed out after 0.3 s" in str(caught.value)
    assert len(server.requests) == 2


def test_a_body_that_does_not_parse_is_retried_then_is_bad_json():
    truncated = (200, {}, json.dumps(CHAT).encode()[:40])
    waits = Waits()
    with Server([truncated]) as server, client(server.url, waits) as c:
        assert chat(c).choices[0].message.content == "hi"
        assert len(server.requests) == 2
    with Server(default=truncated) as server, client(server.url, waits) as c, pytest.raises(ApiError) as caught:
        chat(c)
    assert caught.value.kind == "bad_json" and str(caught.value).startswith("bad JSON")


def test_a_parse_error_of_the_caller_is_retried_like_a_bad_body():
    def parse(response):
        if not parse.seen:
            parse.seen = True
            raise ValueError("not the answer expected")
        return response.choices[0].message.content

    parse.seen = False
    with Server() as server, client(server.url, Waits()) as c:
        assert c.run(c.chat(model="m", messages=MESSAGES, parse=parse)) == "hi"
    assert len(server.requests) == 2


@pytest.mark.parametrize("concurrency", [1, 3])
def test_no_more_requests_are_in_flight_than_the_concurrency(concurrency):
    n = 4 * concurrency
    with Server(hold=concurrency, expected=n) as server, client(server.url, Waits(), concurrency=concurrency) as c:

        async def all_of_them():
            return await gather(c.chat(model="m", messages=MESSAGES) for _ in range(n))

        assert len(c.run(all_of_them())) == n
    assert len(server.requests) == n
    assert server.max_active == concurrency


def test_plain_threads_share_one_client_and_its_bound():
    n, concurrency = 8, 2
    with (
        Server(hold=concurrency, expected=n) as server,
        client(server.url, Waits(), concurrency=concurrency) as c,
        ThreadPoolExecutor(n) as pool,
    ):
        replies = list(pool.map(lambda _: chat(c).choices[0].message.content, range(n)))
    assert replies == ["hi"] * n and server.max_active == concurrency


def test_the_key_is_a_bearer_header_and_in_no_error_or_repr(monkeypatch):
    monkeypatch.setenv("TRAITLOOP_TEST_KEY", SECRET)
    echo = error(401, f"Incorrect API key provided: {SECRET}")  # a server that echoes the key back
    with Server([echo]) as server, client(server.url, Waits()) as c:
        with pytest.raises(ApiError) as caught:
            chat(c)
        assert chat(c).choices  # the next request goes through
        shown = [str(caught.value), repr(caught.value), caught.value.detail, repr(c)]
    assert [r["authorization"] for r in server.requests] == [f"Bearer {SECRET}"] * 2
    assert caught.value.status == 401 and "Incorrect API key provided: ***" in caught.value.detail
    assert not any(SECRET in text for text in shown)
    assert not any(SECRET in str(value) for value in vars(c).values())


def test_without_a_key_variable_the_placeholder_key_is_sent():
    with Server() as server, OpenAIClient(server.url, api_key_env=None) as c:
        chat(c)
    assert server.requests[0]["authorization"] == "Bearer EMPTY"


def test_the_endpoint_helpers_use_vllm_s_paths():
    models = (200, {}, json.dumps({"object": "list", "data": [{"id": "base"}, {"id": "lora-1", "parent": "base"}]}).encode())
    tokens = (200, {}, json.dumps({"tokens": [23, 24], "count": 2}).encode())
    loaded = (200, {"content-type": "text/plain"}, b"Success: LoRA adapter 'a' added successfully.")
    unloaded = (200, {"content-type": "text/plain"}, b"Success: LoRA adapter 'a' removed successfully.")
    completion = (
        200,
        {},
        json.dumps(
            {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "text": " and so on", "finish_reason": "length"}],
            }
        ).encode(),
    )
    with Server([models, tokens, loaded, unloaded, completion]) as server, client(server.url, Waits()) as c:
        assert [m["id"] for m in c.run(c.models())] == ["base", "lora-1"]
        assert c.run(c.tokenize("m", "85")) == [23, 24]
        assert c.run(c.load_lora("a", "/adapters/a")).startswith("Success")
        assert c.run(c.unload_lora("a")).startswith("Success")
        assert c.run(c.completion(model="m", prompt="Once", max_tokens=3)).choices[0].text == " and so on"
    assert [(r["method"], r["path"]) for r in server.requests] == [
        ("GET", "/v1/models"),
        ("POST", "/tokenize"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/v1/completions"),
    ]
    assert server.requests[1]["body"] == {"model": "m", "prompt": "85", "add_special_tokens": False}
    assert server.requests[2]["body"] == {"lora_name": "a", "lora_path": "/adapters/a"}
    assert server.requests[3]["body"] == {"lora_name": "a"}


def test_an_endpoint_without_tokenize_is_a_typed_error_at_once():
    with Server([error(404, "Not Found")]) as server, client(server.url, Waits()) as c, pytest.raises(ApiError) as caught:
        c.run(c.tokenize("m", "85"))
    assert caught.value.status == 404 and len(server.requests) == 1


def test_a_failure_in_gather_is_raised_and_a_closed_client_can_be_used_again():
    with Server([error(400, "bad request")], hold=0) as server:
        c = client(server.url, Waits())
        with pytest.raises(ApiError):

            async def two():
                return await gather([c.chat(model="m", messages=MESSAGES), c.chat(model="m", messages=MESSAGES)])

            c.run(two())
        c.close()
        assert chat(c).choices[0].message.content == "hi"  # a fresh loop and session
        c.close()
