"""A small fake OpenAI-compatible judge server on 127.0.0.1, for tests that need real HTTP (the key in a
real Authorization header) but no model: GET /v1/models lists one model; POST /v1/chat/completions
answers every prompt with the reply "85" and top logprobs on whole-number tokens ("85", "60"), which the
api judge reads from the first token (there is no /tokenize: it answers 404). Every request's path and
Authorization header are recorded.

Modes, for the error paths:
  echo_auth=True      every request gets 401 with an error that echoes the Authorization header back, as
                      it came and base64-encoded (a careless server or proxy)
  fail_once=TEXT      the first chat request for each prompt containing TEXT gets 400 with the same echo;
                      asking again succeeds
  refuse=True         every request gets 401 "Incorrect API key provided." (a wrong key)
  html=True           every request gets 200 and an HTML page: a web server, not an OpenAI-compatible API
"""

from __future__ import annotations

import base64
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

MODEL = "fake-judge"
TOP = [("85", 0.7), ("60", 0.3)]
HTML = b"<!DOCTYPE html><html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>"


def completion(model: str) -> dict:
    top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in TOP]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": TOP[0][0]},
                "logprobs": {"content": [{**top[0], "top_logprobs": top}]},
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
    }


class FakeJudgeServer:
    def __init__(self, echo_auth: bool = False, fail_once: str | None = None, html: bool = False, refuse: bool = False):
        self.echo_auth, self.fail_once, self.html, self.refuse = echo_auth, fail_once, html, refuse
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.failed: set[str] = set()  # prompts already failed once
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.answer()

            def do_POST(self):
                self.answer()

            def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def echo(self, status: int) -> None:
                auth = self.headers.get("authorization") or ""
                encoded = base64.b64encode(auth.encode()).decode()
                message = f"Invalid Authorization header: {auth!r} (base64 {encoded}); request headers: {dict(self.headers)}"
                self.send(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())

            def answer(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                with server.lock:
                    server.requests.append((self.command, self.path, self.headers.get("authorization")))
                if server.html:
                    return self.send(200, HTML, "text/html")
                if server.echo_auth:
                    return self.echo(401)
                if server.refuse:
                    return self.send(401, json.dumps({"error": {"message": "Incorrect API key provided."}}).encode())
                if self.path.endswith("/models"):
                    return self.send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
                if self.path.endswith("/chat/completions"):
                    body = json.loads(raw)
                    prompt = body["messages"][0]["content"]
                    if server.fail_once and server.fail_once in prompt:
                        with server.lock:
                            first = prompt not in server.failed
                            server.failed.add(prompt)
                        if first:
                            return self.echo(400)
                    return self.send(200, json.dumps(completion(body["model"])).encode())
                self.send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def authorizations(self) -> set[str | None]:
        with self.lock:
            return {auth for _, _, auth in self.requests}

    def chat_requests(self) -> int:
        with self.lock:
            return sum(path.endswith("/chat/completions") for _, path, _ in self.requests)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
