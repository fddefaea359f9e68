"""One decode step of traitloop's sampling: where its time goes, and candidate speed-ups (issue #16).

    .venv/bin/python -m bench.decode [--batch 64] [--new-tokens 64] [--repeats 3] [--threads 1]
        [--only profile,sampler,attention,both,static,demo,fp32,batch,shared]   (default: all but compile)
    .venv/bin/python -m bench.decode --only compile --batch 36 --new-tokens 32   (minutes of compiling)

The model is the loop's sampling copy: the embedded SmolLM2-135M-Instruct in the generation dtype
(`generation.dtype: auto`, bf16 on this CPU), frozen, prompts from the advice pool rendered as chats,
temperature 0.8, sampled through `traitloop.generation.hf.generate`. The speed-ups kept in hf.py each
have a switch there (FAST_SAMPLING, FAST_DECODE_ATTENTION); "old path" = both off. The static KV cache
and torch.compile (not kept) are transformers' own `cache_implementation="static"` / `compile_config`.

profile   torch.profiler over one generate call; only the decode steps (every forward after the
          prompt's) are counted, by a profiler range opened at the second forward. Per step: each
          category's self time (matmuls of the linear layers, the lm_head's 49,152-way matmul,
          attention, KV cache update, norms / rotary / activations, casts and copies, the logits
          processors and the draw over the vocabulary, other ops) and the rest of the step outside any
          op (Python, generate's bookkeeping, the dispatcher, the profiler's own cost). Old and current
          path, at --batch and at --profile-batches (the demo's eval batch, 36).
A/B       each candidate against its baseline in this process, interleaved A, B, A, B, ... `repeats`
          times (after one warm-up call each); figures are medians. "step" = the median time between
          two decode forwards (the draw included), "call" = the whole generate call (prompt included).
demo      old vs current path at the SFT demo's (and `reproduce --quick`'s) shapes: training-data
          sampling 32 prompts x 128 tokens at T=0.8, eval answers 36 x 128 at T=0.7.

Measure on a quiet machine if you can; on a busy one compare only the ratios (both sides see the
same load, interleaved). The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

import torch

from bench import machine
from bench.cases import MODEL_REF, prompts, user_turns

CANDIDATES = ("profile", "sampler", "attention", "both", "static", "demo", "compile", "fp32", "batch", "shared")
SWITCHES = ("FAST_SAMPLING", "FAST_DECODE_ATTENTION")
OLD, CURRENT = (False, False), (True, True)


def load_avg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"


@contextmanager
def paths(sampling: bool, attention: bool):
    """hf's switches: the old path (both False), the current one (both True), or one of them."""
    from traitloop.generation import hf

    before = [getattr(hf, name) for name in SWITCHES]
    for name, value in zip(SWITCHES, (sampling, attention)):
        setattr(hf, name, value)
    try:
        yield
    finally:
        for name, value in zip(SWITCHES, before):
            setattr(hf, name, value)


class StepClock:
    """Forward pre-hook: a wall-clock and a CPU-time stamp per forward. The first forward of a call is
    the prompt's. CPU time (this process's) is what the A/B tables compare: with one torch thread it
    leaves out the time other jobs hold the core, which wall time on a busy machine does not."""

    def __init__(self, model):
        self.stamps: list[tuple[float, float]] = []
        self.on_second: list = []  # callbacks run at the first decode forward (the profiler's range)
        model.register_forward_pre_hook(self._hook)

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def _hook(self, module, args):
        self.stamps.append(self.now())
        if len(self.stamps) == 2:
            for fn in self.on_second:
                fn()

    def reset(self) -> None:
        self.stamps.clear()

    def steps(self, end: tuple[float, float]) -> list[tuple[float, float]]:
        """(wall, cpu) durations of the decode steps: from each decode forward to the next (the last to `end`)."""
        marks = self.stamps[1:] + [end]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def timing(steps: list[tuple[float, float]], start: tuple[float, float], end: tuple[float, float], rows: int) -> dict:
    return {
        "step_s": statistics.median(w for w, _ in steps),
        "step_cpu": statistics.median(c for _, c in steps),
        "call_s": end[0] - start[0],
        "call_cpu": end[1] - start[1],
        "steps": len(steps),
        "rows": rows,
    }


def loop_model(dtype: str):
    from traitloop.models import load_model

    model, tok = load_model(MODEL_REF, dtype)
    model.requires_grad_(False)  # as the loop's merged, frozen sampling copy
    return model, tok


def call(model, tok, clock: StepClock, convs, batch: int, new_tokens: int, seed: int = 0, temperature: float = 0.8, **extra) -> dict:
    """One generate call over `convs` (one batch); with `extra`, model.generate is called directly with
    those arguments added (cache_implementation, compile_config), otherwise traitloop's generate."""
    from traitloop.generation import hf

    clock.reset()
    t0 = clock.now()
    if extra:
        texts = hf.render_prompts(tok, convs)
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.inference_mode(), hf.contiguous_lm_head_input(model), hf.decode_attention(model):
            out = model.generate(
                **enc,
                **hf.sampling_kwargs(model, temperature, 1.0),
                max_new_tokens=new_tokens,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
                **extra,
            )
        rows = out.shape[0]
    else:
        hf.generate(model, tok, convs, temperature=temperature, max_new_tokens=new_tokens, batch_size=batch, seed=seed)
        rows = len(convs)
    end = clock.now()
    return timing(clock.steps(end), t0, end, rows)


def shared_prefill_call(model, tok, clock: StepClock, convs, copies: int, new_tokens: int, seed: int = 0) -> dict:
    """Each prompt's prefill once, its KV cache repeated `copies` times, then one generate over all rows:
    what sharing the eval's several samples of one question could save. (transformers'
    num_return_sequences repeats the prompt before the prefill, so it saves nothing, and it refuses the
    greedy step the inverse-CDF draw runs through.)"""
    from transformers import DynamicCache

    from traitloop.generation import hf

    clock.reset()
    t0 = clock.now()
    tok.padding_side = "left"
    enc = tok(hf.render_prompts(tok, convs), return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    torch.manual_seed(seed)
    with torch.inference_mode(), hf.contiguous_lm_head_input(model), hf.decode_attention(model):
        cache = DynamicCache(config=model.config)
        model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(copies)
        model.generate(
            input_ids=ids.repeat_interleave(copies, 0),
            attention_mask=mask.repeat_interleave(copies, 0),
            cache=cache,
            **hf.sampling_kwargs(model, 0.8, 1.0),
            max_new_tokens=new_tokens,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
        )
    end = clock.now()
    # the first forward is the manual prefill, the second the last prompt token's
    return timing(clock.steps(end)[1:], t0, end, len(convs) * copies)


def interleaved(variants: dict, repeats: int) -> dict:
    """Run each variant once (warm-up), then A, B, A, B, ... `repeats` times; medians per variant."""
    for fn in variants.values():
        fn()
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(fn())
    out = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("step_s", "step_cpu", "call_s", "call_cpu")}
        rows, steps = rs[0]["rows"], rs[0]["steps"]
        out[name] = {
            "step_ms": 1e3 * med["step_cpu"],  # CPU time
            "decode_tps": rows / med["step_cpu"],  # tokens/s of the decode steps (one token per row per step)
            "call_s": med["call_cpu"],
            "call_tps": rows * steps / med["call_cpu"],  # token slots per second of the whole call, prompt included
            "wall_decode_tps": rows / med["step_s"],
            "wall_call_tps": rows * steps / med["call_s"],
            "steps": steps,
            "rows": rows,
            "all_step_cpu_ms": [round(1e3 * r["step_cpu"], 1) for r in rs],
            "all_step_wall_ms": [round(1e3 * r["step_s"], 1) for r in rs],
        }
    return out


# ---- the profile -----------------------------------------------------------------------------------

VOCAB_OPS_NOTE = "ops on a batch x vocabulary tensor: the fp32 copy of the logits, temperature, softmax, the draw"


def category(event, vocab: int) -> str:
    name, shapes = event.name, [s for s in (event.input_shapes or []) if s]
    on_vocab = any(s[-1] == vocab for s in shapes)
    if name in ("aten::mm", "aten::addmm"):
        return "matmul: lm_head (vocabulary)" if on_vocab else "matmul: linear layers"
    if on_vocab:
        return "logits processors and the draw (vocabulary-sized)"
    if "scaled_dot_product" in name or name in ("aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::masked_fill"):
        return "attention (SDPA kernel, or the two matmuls + softmax)"
    if name in ("aten::cat", "aten::index_copy_", "aten::index_put_"):
        return "KV cache update (cat / index_copy)"
    if name in ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"):
        return "copies and casts"
    if name in (
        "aten::mul",
        "aten::add",
        "aten::pow",
        "aten::mean",
        "aten::rsqrt",
        "aten::silu",
        "aten::neg",
        "aten::cos",
        "aten::sin",
        "aten::add_",
        "aten::mul_",
    ):
        return "norms, rotary, SiLU, residual adds"
    return "other ops"


def profile(model, tok, clock: StepClock, convs, batch: int, new_tokens: int) -> dict:
    """Self time per category per decode step, inside one profiled generate call."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    vocab = model.config.vocab_size
    marker = record_function("decode steps")
    clock.on_second = [marker.__enter__]
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        r = call(model, tok, clock, convs, batch, new_tokens)
        marker.__exit__(None, None, None)
    clock.on_second = []
    events = prof.events()
    [decode] = [e for e in events if e.name == "decode steps"]
    lo, hi = decode.time_range.start, decode.time_range.end
    inside = [e for e in events if e is not decode and lo <= e.time_range.start and e.time_range.end <= hi and e.name.startswith("aten::")]
    steps = r["steps"]
    per: dict[str, float] = {}
    flops = {"linear": 0.0, "lm_head": 0.0}
    top: dict[str, float] = {}
    for e in inside:
        c = category(e, vocab)
        per[c] = per.get(c, 0.0) + e.self_cpu_time_total
        shape = (
            "x".join(str(list(s)) for s in (e.input_shapes or []) if s)
            if e.name in ("aten::mm", "aten::addmm") or c.startswith("logits")
            else ""
        )
        key = f"{e.name} {shape}".strip() + ("" if c != "other ops" else " (other)")
        top[key] = top.get(key, 0.0) + e.self_cpu_time_total
        if e.name in ("aten::mm", "aten::addmm") and e.flops:
            flops["lm_head" if c.endswith("(vocabulary)") else "linear"] += e.flops
    wall_us = hi - lo
    per["outside any op (Python, generate's bookkeeping, dispatch, profiler)"] = wall_us - sum(per.values())
    return {
        "steps": steps,
        "rows": r["rows"],
        "step_ms_profiled": wall_us / 1e3 / steps,
        "unprofiled_step_ms": None,
        "categories_ms": {k: v / 1e3 / steps for k, v in sorted(per.items(), key=lambda kv: -kv[1])},
        "top_ops_ms": {k: v / 1e3 / steps for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:20]},
        "matmul_gflop_per_step": {k: v / 1e9 / steps for k, v in flops.items()},
    }


def print_profile(title: str, p: dict, peak_bf16: float) -> None:
    step = p["step_ms_profiled"]
    print(f"\n## {title}: {p['rows']} rows, {p['steps']} decode steps, {step:.1f} ms per step under the profiler")
    print("| part of a decode step | ms per step | share |\n|---|---|---|")
    for k, v in p["categories_ms"].items():
        print(f"| {k} | {v:.1f} | {100 * v / step:.0f}% |")
    g = p["matmul_gflop_per_step"]
    mm_ms = sum(v for k, v in p["categories_ms"].items() if k.startswith("matmul"))
    total = g["linear"] + g["lm_head"]
    print(
        f"\nmatmul FLOPs per step: {total:.1f} GFLOP ({g['lm_head']:.1f} in the lm_head); at the measured bf16 peak "
        f"({peak_bf16:.0f} GFLOP/s) {1e3 * total / peak_bf16:.0f} ms; the matmuls took {mm_ms:.0f} ms "
        f"({total / mm_ms * 1e3:.0f} GFLOP/s), {100 * mm_ms / step:.0f}% of the step"
    )
    print("\ntop ops (self ms per step; matmuls and vocabulary-sized ops by input shape, the rest by name):")
    for k, v in p["top_ops_ms"].items():
        print(f"  {v:7.2f}  {k[:150]}")


# ---- A/B candidates --------------------------------------------------------------------------------


def ab_rows(title: str, results: dict, base: str) -> list[str]:
    b = results[base]
    lines = [
        f"\n## {title}",
        "| variant | step ms | decode tokens/s | call s | call tokens/s | decode ratio | call ratio | wall-clock ratios (decode, call) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['step_ms']:.0f} | {r['decode_tps']:.0f} | {r['call_s']:.1f} | {r['call_tps']:.0f} | "
            f"{r['decode_tps'] / b['decode_tps']:.2f} | {r['call_tps'] / b['call_tps']:.2f} | "
            f"{r['wall_decode_tps'] / b['wall_decode_tps']:.2f}, {r['wall_call_tps'] / b['wall_call_tps']:.2f} |"
        )
    lines.append(
        "(CPU time of this process; per-repeat step ms, CPU / wall: "
        + "; ".join(f"{k} {r['all_step_cpu_ms']} / {r['all_step_wall_ms']}" for k, r in results.items())
        + ")"
    )
    print("\n".join(lines), flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--profile-batches",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[36],
        help="profiled besides --batch (the demo's eval: 36)",
    )
    ap.add_argument("--only", default=",".join(c for c in CANDIDATES if c != "compile"), help=f"comma-separated, of {','.join(CANDIDATES)}")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    torch.set_num_threads(args.threads)
    info = machine.info()
    print(f"{info['cpu_model']}, {info['cores']} cores, torch {info['torch']}, {info['libraries']}; {args.threads} thread(s)")
    print(f"load average at start: {load_avg()}")
    peak = machine.peak(quick=True)
    print(f"measured peak (1 thread, now): fp32 {peak['fp32']['best']:.0f}, bf16 {peak['bf16']['best']:.0f} GFLOP/s")

    from traitloop.config import ExperimentConfig
    from traitloop.generation.sampler import free_memory, generation_dtype

    dtype = str(generation_dtype(ExperimentConfig.model_validate({"name": "x", "trait": "bliss"}))).removeprefix("torch.")
    model, tok = loop_model(dtype)
    clock = StepClock(model)
    convs = user_turns(prompts(args.batch))
    b, n, reps = args.batch, args.new_tokens, args.repeats
    print(f"sampling copy: {dtype}; batch {b}, {n} new tokens, {reps} interleaved repeats")

    def run(fast=CURRENT, m=model, k=clock, c=convs, tokens=n, **extra):
        def fn():
            with paths(*fast):
                return call(m, tok, k, c, len(c), tokens, **extra)

        return fn

    if "profile" in only:
        call(model, tok, clock, convs[:8], 8, 4)  # warm-up
        for pb in sorted({b, *args.profile_batches}, reverse=True):
            pc = user_turns(prompts(pb))
            for title, fast in (("old path: multinomial draw, SDPA decode attention", OLD), ("current path", CURRENT)):
                with paths(*fast):
                    print_profile(f"{title}, batch {pb}", profile(model, tok, clock, pc, pb, n), peak["bf16"]["best"])
                free_memory()  # the profiler's events: gigabytes at batch 64 x 64 steps
    if "sampler" in only:
        ab_rows(
            "(1) inverse-CDF draw vs torch.multinomial (the rest old)",
            interleaved({"old": run(OLD), "inverse CDF": run((True, False))}, reps),
            "old",
        )
    if "attention" in only:
        ab_rows(
            "(2) decode attention as two matmuls vs SDPA (the rest old)",
            interleaved({"old": run(OLD), "two matmuls": run((False, True))}, reps),
            "old",
        )
    if "both" in only:
        ab_rows("(1+2) both vs the old path", interleaved({"old": run(OLD), "current": run(CURRENT)}, reps), "old")
    if "static" in only:
        ab_rows(
            'static KV cache (transformers\' cache_implementation="static") vs dynamic, no compile (current path in both)',
            interleaved({"dynamic cache": run(CURRENT), "static cache": run(CURRENT, cache_implementation="static")}, reps),
            "dynamic cache",
        )
    if "demo" in only:
        for label, rows, temp in (("training-data sampling, 32 prompts", 32, 0.8), ("eval answers, 36 prompts", 36, 0.7)):
            demo = user_turns(prompts(rows))
            ab_rows(
                f"(1+2) current vs old path (and a static cache on top) at the demo's {label} x 128 tokens, T={temp}",
                interleaved(
                    {
                        "old": run(OLD, c=demo, tokens=128, temperature=temp),
                        "current": run(CURRENT, c=demo, tokens=128, temperature=temp),
                        "current + static cache": run(CURRENT, c=demo, tokens=128, temperature=temp, cache_implementation="static"),
                    },
                    reps,
                ),
                "old",
            )
    if "compile" in only:
        from transformers import CompileConfig

        cc = CompileConfig(fullgraph=False, dynamic=False, _compile_all_devices=True)
        static = dict(cache_implementation="static")
        t0 = time.perf_counter()
        run(CURRENT, **static, compile_config=cc)()
        print(f"\ncompile + first call: {time.perf_counter() - t0:.0f} s (wall)")
        ab_rows(
            "torch.compile of the decode forward (static cache in both, current path)",
            interleaved({"static cache": run(CURRENT, **static), "static + compile": run(CURRENT, **static, compile_config=cc)}, reps),
            "static cache",
        )
    if "fp32" in only:
        other = "float32" if dtype != "float32" else "bfloat16"
        m2, _ = loop_model(other)
        k2 = StepClock(m2)
        ab_rows(
            f"{other} sampling copy vs {dtype} (current path in both)", interleaved({dtype: run(), other: run(m=m2, k=k2)}, reps), dtype
        )
        del m2, k2
    if "batch" in only:
        big = {f"batch {bs}": run(c=user_turns(prompts(bs))) for bs in (b, 2 * b, 4 * b)}
        ab_rows("larger batches (current path; tokens/s per row-token)", interleaved(big, max(1, reps - 1)), f"batch {b}")
    if "shared" in only:
        questions = prompts(12)
        rows = [q for q in questions for _ in range(3)]

        def shared():
            with paths(*CURRENT):
                return shared_prefill_call(model, tok, clock, user_turns(questions), 3, n)

        ab_rows(
            "the eval's 12 questions x 3 samples: the prompt's prefill shared by its 3 samples (current path)",
            interleaved({"36 prompts": run(c=user_turns(rows)), "12 prefilled once, cache x 3": shared}, reps),
            "36 prompts",
        )
    print(f"\nload average at end: {load_avg()}")


if __name__ == "__main__":
    main()
