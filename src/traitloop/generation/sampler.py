"""Which model writes text, and how: the Sampler owns both generation backends (transformers in this
process, or a vLLM server given each cycle's adapter), the sampling dtype, rebuilding a finished
cycle's model from its saved adapter, and the untrained base's cached answers (DPO's rejected side).

A cycle is named by its index k; k = BASE is the untrained base model. `model` arguments are the
cycle's model when it is still in memory, or None to rebuild it from disk when needed.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

from traitloop import models
from traitloop.config import ExperimentConfig
from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.progress import Reporter
from traitloop.settings.dpo import prompt_key
from traitloop.store import BASE, RunStore


class Sampler:
    def __init__(self, config: ExperimentConfig, store: RunStore, base, tokenizer, reporter: Reporter, vllm=None):
        self.config, self.store, self.base, self.tokenizer, self.reporter = config, store, base, tokenizer, reporter
        self.vllm = vllm
        if config.generation.backend == "vllm" and vllm is None:
            from traitloop.generation import vllm as vllm_backend

            self.vllm = vllm_backend.VllmSampler(config.generation.vllm_url, concurrency=config.generation.concurrency)
            reporter.log(f"generation: vLLM server {config.generation.vllm_url} serving {self.vllm.base_model()}")

    def sample(self, k: int, model, prompts: list, seed: int, label: str) -> list[str]:
        """Cycle k's model writes one answer or continuation per prompt at the data-sampling settings."""
        s = self.config.sampling
        return self.generate(
            k,
            model,
            prompts,
            seed,
            label,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
        )

    def answer(self, k: int, model, prompts: list, seed: int, label: str) -> list[str]:
        """Cycle k's model answers eval prompts at the eval settings."""
        e = self.config.eval
        return self.generate(
            k, model, prompts, seed, label, temperature=e.temperature, top_p=1.0, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size
        )

    def generate(self, k: int, model, prompts: list, seed: int, label: str, **params: Any) -> list[str]:
        """Generation by cycle k's model with the configured backend: transformers on `model` (rebuilt
        from disk when None), or the vLLM server with cycle k's adapter (the served base for BASE)."""
        from traitloop.generation.hf import generate

        batch_size = params.pop("batch_size")
        with self.reporter.step(label, total=len(prompts)) as advance:
            if self.vllm is not None:
                adapter = None if k == BASE else self.store.stage_path(k, "adapter")
                return self.vllm.generate(adapter, prompts, seed=seed, on_batch=advance, **params)
            if model is None:
                model = self.base if k == BASE else self.cycle_model(k)
            model = self.generation_model(k, model)
            return generate(model, self.tokenizer, prompts, batch_size=batch_size, seed=seed, on_batch=advance, **params)

    def generation_model(self, k: int, model):
        """The copy of cycle k's model that samples (generation.dtype): its adapter merged into the weights
        in full precision, then cast (BENCHMARKS.md: bf16 sampling). The frozen base keeps its precision
        for coherence scoring, so the base samples from a cast copy of it."""
        import torch

        dtype = generation_dtype(self.config)
        if next(model.parameters()).dtype == dtype:
            return model
        if k == BASE:  # loaded in that dtype from the cache and dropped after use: not kept in memory
            m = self.config.model
            return models.load_model(m.ref, str(dtype).removeprefix("torch."), m.trust_remote_code)[0]
        if hasattr(model, "merge_and_unload"):  # a PeftModel: merge B @ A into W in full precision, then cast
            model = model.merge_and_unload()
        return model.to(dtype).eval() if dtype != torch.float32 else model.eval()

    def cycle_model(self, k: int):
        """A finished cycle's model from disk: a fresh base with that cycle's adapter."""
        from peft import PeftModel

        base, _ = load_base(self.config)
        model = PeftModel.from_pretrained(base, str(self.store.stage_path(k, "adapter")))
        model.eval()
        return model

    def base_answers(self, prompts: list, seed: int) -> list[str]:
        """The original base model's answers, sampled once per prompt and cached in
        base/rejected_answers.jsonl: the base never changes, so a resumed or later cycle reuses them."""
        path = self.store.cycle_dir(BASE) / "rejected_answers.jsonl"
        cache = {r["key"]: r["answer"] for r in read_jsonl(path)} if path.is_file() else {}
        missing = [p for p in prompts if prompt_key(p) not in cache]
        if missing:
            answers = self.sample(BASE, self.base, missing, seed, f"base model: sampling {len(missing)} rejected answers")
            cache.update({prompt_key(p): a for p, a in zip(missing, answers)})
            path.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(path, [{"key": key, "answer": a} for key, a in cache.items()])
        return [cache[prompt_key(p)] for p in prompts]


def load_base(config: ExperimentConfig):
    """(model, tokenizer) of the run's base model in model.dtype."""
    m = config.model
    return models.load_model(m.ref, m.dtype, m.trust_remote_code)


def generation_dtype(cfg: ExperimentConfig):
    """generation.dtype resolved on this machine (auto: bf16 where the hardware computes it natively)."""
    import torch

    if cfg.generation.dtype != "auto":
        return getattr(torch, cfg.generation.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else getattr(torch, cfg.model.dtype)
    native = (
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    )
    return torch.bfloat16 if native else getattr(torch, cfg.model.dtype)


def free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS between stages. glibc keeps freed
    memory of mid-sized allocations (a training step's buffers, the logits of a batch) in its heap;
    without the trim that memory stays resident and adds to the next stage's peak (docs/ARCHITECTURE.md,
    "Memory")."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
