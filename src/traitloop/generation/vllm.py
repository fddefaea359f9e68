"""Sampling through vLLM's OpenAI-compatible server, with each cycle's LoRA adapter loaded at run time.

For GPU-scale runs: start one server for the base model with LoRA enabled, then point traitloop at it
(`generation.backend: vllm`, `generation.vllm_url`):

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank 16

Every cycle's adapter is loaded under a name derived from its content (POST /v1/load_lora_adapter),
and requests name that adapter as their model; the untrained base is the served model itself. Chats
go to /v1/chat/completions (the server applies the model's chat template), plain-text prompts (SDF)
to /v1/completions. Sampling is pure temperature sampling (vLLM's top_k is off by default), and
request i carries seed + i, so a rerun draws the same samples whatever the order of completion.
The server must serve the same base weights as model.ref (traitloop checks the served id is given).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from traitloop.errors import UserError

Conversation = list[dict[str, str]]


class VllmSampler:
    def __init__(self, base_url: str, concurrency: int = 32, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._loaded: set[str] = set()
        self._base_model: str | None = None

    # ---- which model a request names -----------------------------------------------------------
    def base_model(self) -> str:
        """The id the server serves the base model under (its first model without a parent)."""
        if self._base_model is None:
            try:
                models = json.loads(_http("GET", f"{self.base_url}/models")[1])["data"]
            except (OSError, ValueError, KeyError) as err:
                raise UserError(f"generation.vllm_url {self.base_url}: no vLLM server answers there ({err}); start one "
                                "with `vllm serve MODEL --enable-lora` (see docs/ARCHITECTURE.md)") from None
            roots = [m["id"] for m in models if not m.get("parent")]
            if not roots:
                raise UserError(f"generation.vllm_url {self.base_url}: the server lists no base model")
            self._base_model = roots[0]
        return self._base_model

    def adapter_model(self, adapter_dir: Path) -> str:
        """Load `adapter_dir` into the server (once) and return the name requests use for it."""
        weights = Path(adapter_dir) / "adapter_model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        name = f"traitloop-{digest}"
        if name in self._loaded:
            return name
        body = {"lora_name": name, "lora_path": str(Path(adapter_dir).resolve())}
        status, text = _http("POST", f"{self.base_url}/load_lora_adapter", body)
        if status != 200 and "already" not in text.lower():
            raise UserError(
                f"vLLM server {self.base_url} refused to load the adapter {adapter_dir}: HTTP {status} {text[:300]}. "
                "Start it with --enable-lora, --max-lora-rank >= lora.r and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
            )
        self._loaded.add(name)
        return name

    # ---- sampling ------------------------------------------------------------------------------
    def generate(
        self,
        adapter_dir: Path | None,
        prompts: list[Conversation | str],
        *,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        top_p: float = 1.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """One sample per prompt, in input order, from the base (adapter_dir None) or base + adapter."""
        model = self.adapter_model(adapter_dir) if adapter_dir is not None else self.base_model()
        return asyncio.run(self._all(model, prompts, temperature, max_new_tokens, seed, top_p, on_batch))

    async def _all(self, model, prompts, temperature, max_new_tokens, seed, top_p, on_batch) -> list[str]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key="EMPTY", timeout=self.timeout_s, max_retries=3)
        gate = asyncio.Semaphore(self.concurrency)
        params = {"model": model, "temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "n": 1}

        async def one(i: int, prompt) -> str:
            async with gate:
                request_seed = (seed + i) % (2**31)
                if isinstance(prompt, str):  # a document to continue: its leading whitespace is part of it
                    r = await client.completions.create(prompt=prompt, seed=request_seed, **params)
                    text = r.choices[0].text.rstrip()
                else:
                    r = await client.chat.completions.create(messages=prompt, seed=request_seed, **params)
                    text = (r.choices[0].message.content or "").strip()
            if on_batch:
                on_batch(1)
            return text

        try:
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        finally:
            await client.close()


def _http(method: str, url: str, body: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    """(status, body text) of one plain HTTP request; an HTTP error status is returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
