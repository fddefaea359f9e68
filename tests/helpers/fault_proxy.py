"""A fault-injecting HTTP proxy for judge tests: it sits between the api judge and a real
OpenAI-compatible server and, per prompt, answers with a scripted fault before passing requests on.

Requests are counted per (user prompt, prefilled assistant reply or None): the api judge continues
a prefilled reply to read a number digit by digit. Other POSTs (vLLM's /tokenize) pass through and
are counted under (their "prompt", None).

Actions, consumed one per request whose user prompt contains the plan's key (continuations included):
  "429"       429 Too Many Requests with Retry-After: 0.2
  "500"       500 Internal Server Error
  "hang"      wait `hang_s` seconds, then close without answering (past the client's timeout)
  "truncate"  forward upstream, then return the first half of the JSON body (a malformed 200)
  anything else (or no plan left): forward upstream and return its answer unchanged
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream: str, hang_s: float = 3.0):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")  # request paths already start with /v1
        self.hang_s = hang_s
        self.plan: dict[str, list[str]] = {}
        self.seen = Counter()  # (prompt, prefill) -> requests received
        self.forwarded = Counter()  # (prompt, prefill) -> requests passed to the real server
        self.auth_headers: set[str] = set()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                prompt, prefill = request_of(json.loads(body))
                with proxy.lock:
                    proxy.seen[prompt, prefill] += 1
                    proxy.auth_headers.add(self.headers.get("authorization", ""))
                    action = "ok"
                    for key, actions in proxy.plan.items():
                        if key in prompt and actions:
                            action = actions.pop(0)
                            break
                if action == "429":
                    return self._reply(429, b'{"error": "slow down"}', {"Retry-After": "0.2"})
                if action == "500":
                    return self._reply(500, b'{"error": "boom"}')
                if action == "hang":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return
                request = urllib.request.Request(proxy.upstream + self.path, data=body, headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as response:
                    payload = response.read()
                with proxy.lock:
                    proxy.forwarded[prompt, prefill] += 1
                if action == "truncate":
                    payload = payload[: len(payload) // 2]
                self._reply(200, payload)

            def do_GET(self):
                with urllib.request.urlopen(proxy.upstream + self.path, timeout=30) as response:
                    self._reply(response.status, response.read())

            def _reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_of(body: dict) -> tuple[str, str | None]:
    """(user prompt, prefilled assistant reply or None) of a chat request; ("prompt", None) of another."""
    messages = body.get("messages")
    if not messages:
        return str(body.get("prompt", "")), None
    prompt = [m["content"] for m in messages if m["role"] == "user"][-1]
    return prompt, messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
