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
Every request goes through one OpenAIClient (traitloop/openai_client.py): at most `concurrency` in
flight, retries with backoff, one typed error that is turned into the messages below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from traitloop.errors import UserError
from traitloop.openai_client import ApiError, OpenAIClient, gather

Conversation = list[dict[str, str]]


class VllmSampler:
    def __init__(self, base_url: str, concurrency: int = 32, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.client = OpenAIClient(self.base_url, api_key_env=None, timeout_s=timeout_s, concurrency=concurrency,
                                   max_attempts=4, backoff_s=0.5)
        self._loaded: set[str] = set()
        self._base_model: str | None = None

    # ---- which model a request names -----------------------------------------------------------
    def base_model(self) -> str:
        """The id the server serves the base model under (its first model without a parent)."""
        if self._base_model is None:
            try:
                models = self.client.run(self.client.models())
            except ApiError as err:
                raise UserError(f"generation.vllm_url {self.base_url}: no vLLM server answers there ({err.reason}); start one "
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
        try:
            self.client.run(self.client.load_lora(name, str(Path(adapter_dir).resolve())))
        except ApiError as err:
            if not (err.status and "already" in err.detail.lower()):
                raise UserError(
                    f"vLLM server {self.base_url} refused to load the adapter {adapter_dir}: {err.reason[:320]}. "
                    "Start it with --enable-lora, --max-lora-rank >= lora.r and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
                ) from None
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
        return self.client.run(self._all(model, prompts, temperature, max_new_tokens, seed, top_p, on_batch))

    async def _all(self, model, prompts, temperature, max_new_tokens, seed, top_p, on_batch) -> list[str]:
        params = {"model": model, "temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "n": 1}

        async def one(i: int, prompt) -> str:
            request_seed = (seed + i) % (2**31)
            if isinstance(prompt, str):  # a document to continue: its leading whitespace is part of it
                r = await self.client.completion(prompt=prompt, seed=request_seed, **params)
                text = r.choices[0].text.rstrip()
            else:
                r = await self.client.chat(messages=prompt, seed=request_seed, **params)
                text = (r.choices[0].message.content or "").strip()
            if on_batch:
                on_batch(1)
            return text

        return await gather(one(i, p) for i, p in enumerate(prompts))
