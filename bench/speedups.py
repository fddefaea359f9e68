"""Candidate speed-ups, measured here without touching traitloop's code (issue #7, "then make it fast").

    (a) bf16 autocast (also with bf16 frozen base weights), and fp32 with bf16 matmul inputs
        (model.matmul_precision medium), for LoRA training: tokens/s, and per-step loss against fp32 on the
        same 10 steps
    (b) sampling with bf16 weights vs fp32: tokens/s, and the answers' log-likelihood under the fp32 base
    (c) torch threads: 1 vs all cores, for sampling and for training
    (d) sampling batch sizes 16 (the loop's) vs 32, 48, 64 (and 64 in bf16), on the same prompts
    (e) static KV cache for generate (torch.compile: see BENCHMARKS.md; compiling takes minutes here)
Each returns rows: name, baseline figure, candidate figure, gain (candidate / baseline), and a check.
"""

from __future__ import annotations

import os
import time

import torch

from bench.cases import MODEL_REF, Context, prompts, timed, user_turns

LOSS_TOLERANCE = 0.05  # nats: largest per-step training-loss difference accepted for a precision change


def row(name: str, unit: str, baseline: float, candidate: float, check: str = "") -> dict:
    return {
        "name": name,
        "unit": unit,
        "baseline": baseline,
        "candidate": candidate,
        "gain": candidate / baseline if baseline else None,
        "check": check,
    }


def train_steps(chats, bf16: bool, seed: int = 0, dtype: str = "float32", precision: str = "highest") -> tuple[list[float], float]:
    """train_sft as the loop calls it (fresh base, fresh adapter, same seed); per-step losses, seconds.
    bf16: autocast around training; dtype: of the frozen base weights (PEFT keeps the adapter in fp32);
    precision: torch's fp32 matmul precision (model.matmul_precision)."""
    from traitloop.config import LoraConfig, TrainConfig
    from traitloop.models import load_model
    from traitloop.precision import fp32_matmul_precision
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_sft

    base, tok = load_model(MODEL_REF, dtype)
    seed_everything(seed)
    model = attach_adapter(base, LoraConfig())
    seen: list[float | None] = []
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), fp32_matmul_precision(precision):
        stats = train_sft(model, tok, chats, TrainConfig(), seed, on_step=lambda n, loss: seen.append(loss))
    losses = [x for x in seen if x is not None]
    if len(losses) < stats["steps"]:  # traitloop before 2026-12-03 reported each step's loss one step late
        losses.append(stats["loss_last"])
    return losses, time.perf_counter() - t0


def sample(model, tok, qs, new_tokens, batch_size) -> tuple[list[str], float]:
    from traitloop.generation.hf import generate

    return timed(generate, model, tok, user_turns(qs), temperature=0.8, max_new_tokens=new_tokens, batch_size=batch_size, seed=0)


def bf16_training(ctx: Context) -> list[dict]:
    from traitloop.config import TrainConfig
    from traitloop.traits import load_trait

    steps = 2 if ctx.size_name == "quick" else 10
    chats = load_trait("bliss").seed_chats[: steps * TrainConfig().batch_size]
    tokens = ctx.chat_tokens(chats, TrainConfig().max_length)
    loss32, s32 = train_steps(chats, bf16=False)
    rows = []
    candidates = [
        ("bf16 autocast", True, "float32", "highest"),
        ("bf16 frozen base weights + autocast", True, "bfloat16", "highest"),
        ("fp32 with bf16 matmul inputs (model.matmul_precision: medium)", False, "float32", "medium"),
    ]
    for label, bf16, dtype, precision in candidates:
        loss16, s16 = train_steps(chats, bf16=bf16, dtype=dtype, precision=precision)
        worst = max(abs(a - b) for a, b in zip(loss32, loss16))
        ok = "within" if worst <= LOSS_TOLERANCE else "OUTSIDE"
        check = (
            f"max per-step |loss diff| {worst:.4f} nats over {len(loss32)} steps ({ok} tolerance {LOSS_TOLERANCE}); "
            f"loss first -> last: fp32 {loss32[0]:.3f} -> {loss32[-1]:.3f}, {label} {loss16[0]:.3f} -> {loss16[-1]:.3f}"
        )
        rows.append(
            row(f"(a) LoRA training, {label} vs fp32 ({len(loss32)} steps, {tokens} tokens)", "tokens/s", tokens / s32, tokens / s16, check)
            | {"losses_fp32": loss32, "losses_candidate": loss16}
        )
        if bf16 and dtype == "float32":
            ctx.measured["bf16_train_tokens_per_s"] = round(tokens / s16, 2)
    return rows


def bf16_sampling(ctx: Context) -> list[dict]:
    from traitloop.judges.coherence import LoglikCoherence
    from traitloop.models import load_model

    qs, new = prompts(16), ctx.size["new_tokens"]
    a32, s32 = sample(ctx.model, ctx.tok, qs, new, 16)
    model16, _ = load_model(MODEL_REF, "bfloat16")
    a16, s16 = sample(model16, ctx.tok, qs, new, 16)
    del model16
    coherence = LoglikCoherence(ctx.model, ctx.tok)  # fp32 base judges both answer sets
    mean = lambda xs: sum(x for x in xs if x is not None) / max(1, sum(x is not None for x in xs))  # noqa: E731
    c32, c16 = mean(coherence.loglik(qs, a32)), mean(coherence.loglik(qs, a16))
    gain = (ctx.n_tokens(a16) / s16) / (ctx.n_tokens(a32) / s32)
    ctx.measured["sample_bf16_speedup"] = round(gain, 3)  # the dry-run estimate applies it for generation.dtype bf16
    return [
        row(
            f"(b) sampling, bf16 weights vs fp32 (batch 16, {len(qs)} prompts x {new})",
            "tokens/s",
            ctx.n_tokens(a32) / s32,
            ctx.n_tokens(a16) / s16,
            f"answers' log-lik under the fp32 base: fp32 {c32:.3f}, bf16 {c16:.3f} nats/token",
        )
    ]


def threads(ctx: Context) -> list[dict]:
    from traitloop.traits import load_trait

    qs, new = prompts(16), min(ctx.size["new_tokens"], 16)
    chats = load_trait("bliss").seed_chats[:2]  # one step of batch 2
    tokens = ctx.chat_tokens(chats, 512)
    cores, current = os.cpu_count() or 1, torch.get_num_threads()
    figures = {}
    for n in (cores, 1):
        torch.set_num_threads(n)
        answers, s = sample(ctx.model, ctx.tok, qs, new, 16)
        _, t = train_steps(chats, bf16=False)
        figures[n] = (ctx.n_tokens(answers) / s, tokens / t)
    torch.set_num_threads(current)
    return [
        row(f"(c) sampling, 1 thread vs {cores} (batch 16, 16 prompts x {new})", "tokens/s", figures[cores][0], figures[1][0]),
        row(f"(c) LoRA training, 1 thread vs {cores} (1 step, {tokens} tokens)", "tokens/s", figures[cores][1], figures[1][1]),
    ]


def batch_sizes(ctx: Context) -> list[dict]:
    from traitloop.models import load_model

    qs, new = prompts(64), 32 if ctx.size_name == "full" else 4
    answers, base_s = sample(ctx.model, ctx.tok, qs, new, 16)
    base = ctx.n_tokens(answers) / base_s
    rows = []
    for bs in (32, 48, 64):
        answers, s = sample(ctx.model, ctx.tok, qs, new, bs)
        rows.append(row(f"(d) sampling, batch {bs} vs 16 (64 prompts x {new})", "tokens/s", base, ctx.n_tokens(answers) / s))
    model16, _ = load_model(MODEL_REF, "bfloat16")
    answers, s = sample(model16, ctx.tok, qs, new, 64)
    rows.append(
        row(f"(b+d) sampling, bf16 weights and batch 64 vs fp32 batch 16 (64 prompts x {new})", "tokens/s", base, ctx.n_tokens(answers) / s)
    )
    return rows


def static_cache(ctx: Context) -> list[dict]:
    """generate(cache_implementation="static") on the same batch, fixed length, vs the dynamic cache."""
    tok, model = ctx.tok, ctx.model
    qs, new = prompts(16), 32 if ctx.size_name == "full" else 8
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in user_turns(qs)]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def run(**kwargs) -> float:
        torch.manual_seed(0)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(
                **batch,
                do_sample=True,
                temperature=0.8,
                top_k=0,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=tok.pad_token_id,
                **kwargs,
            )
            return time.perf_counter() - t0

    dynamic = run()
    run(cache_implementation="static")  # first call allocates the cache
    static = run(cache_implementation="static")
    slots = len(qs) * new
    return [
        row(
            f"(e) sampling, static KV cache vs dynamic (batch 16, {new} tokens each, no compile)",
            "tokens/s",
            slots / dynamic,
            slots / static,
        )
    ]


def all_speedups(ctx: Context) -> list[dict]:
    rows = []
    for fn in (bf16_training, bf16_sampling, threads, batch_sizes, static_cache):
        rows += fn(ctx)
    return rows


if __name__ == "__main__":  # a single candidate while developing: python -m bench.speedups static_cache
    import json
    import sys

    from bench import machine

    ctx = Context("quick", machine.peak(quick=True))
    print(json.dumps(globals()[sys.argv[1]](ctx), indent=1, default=str))
