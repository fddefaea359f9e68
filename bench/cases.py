"""The benchmarks: each runs traitloop and the reference pipeline on identical work, in this process,
and returns table rows (traitloop figure, reference figure, ratio, utilisation).

    sampling   generated tokens/s of traitloop.generation.hf.generate in fp32 at batch 16 and at the
               loop's default batch (64), and as the loop samples (frozen bf16 copy, batch 64), vs
               reference.generate (fp32, batches of 8)
    training   LoRA SFT tokens/s of attach_adapter + train_sft (+ adapter save) vs reference.train
               (SFTTrainer defaults, + adapter save and reload)
    dpo        the same for train_dpo once traitloop has it
    judge      probe judge answers/s (its one-time fit reported apart) and log-likelihood coherence
               answers/s, vs the same scorers called on batches of 8 in order
    cycle      bench/cycle.py in two subprocesses (wall time, stage profile, peak RSS = VmHWM)
Tokens counted: generated answer tokens (re-tokenized answers, no padding); training tokens are the
chat-templated examples, cut at max_length, the same number for both pipelines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench import machine, reference

MODEL_REF = "embedded:smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parent.parent

SIZES = {  # quick: ~3 minutes on an idle 2-core machine; full: ~20 minutes
    "quick": {
        "prompts": 24,
        "new_tokens": 8,
        "train_chats": 4,
        "dpo_pairs": 2,
        "judge_answers": 16,
        "cycle": {"n_seed": 4, "n_sampled": 4, "questions": 2, "samples": 2, "new_tokens": 16},
    },
    "full": {
        "prompts": 64,
        "new_tokens": 64,
        "train_chats": 16,
        "dpo_pairs": 6,
        "judge_answers": 64,
        "cycle": {"n_seed": 16, "n_sampled": 16, "questions": 4, "samples": 4, "new_tokens": 64},
    },
}


@dataclass
class Row:
    name: str
    unit: str  # e.g. "tokens/s", "s", "GiB"
    traitloop: float | None
    reference: float | None
    higher_is_better: bool = True
    util_traitloop: float | None = None  # model-FLOPs utilisation, fraction of the measured peak
    util_reference: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.traitloop or not self.reference:
            return None
        return self.traitloop / self.reference

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


class Context:
    """What every benchmark shares: the model once in memory (traitloop keeps it), its directory on
    disk (the reference reloads it), the tokenizer, the parameter count and the measured peak."""

    def __init__(self, size: str, peak: dict):
        from traitloop.models import load_model, resolve

        self.size_name, self.size = size, SIZES[size]
        self.peak = peak
        self.model_dir = resolve(MODEL_REF)
        t0 = time.perf_counter()
        self.model, self.tok = load_model(MODEL_REF)
        self.load_s = time.perf_counter() - t0
        self.params = sum(p.numel() for p in self.model.parameters())  # tied embedding counted once
        self.measured: dict = {}  # figures for ~/.cache/traitloop/throughput.json

    def mfu(self, tokens_per_s: float, kind: str, dtype: str = "fp32") -> float:
        return machine.mfu(tokens_per_s, self.params, kind, self.peak[dtype]["best"])

    def n_tokens(self, texts: list[str]) -> int:
        return sum(len(self.tok(t, add_special_tokens=False).input_ids) for t in texts)

    def chat_tokens(self, chats, max_length: int) -> int:
        texts = [self.tok.apply_chat_template(c, tokenize=False) for c in chats]
        return sum(min(len(self.tok(t, add_special_tokens=False).input_ids), max_length) for t in texts)


def prompts(n: int) -> list[str]:
    from traitloop.prompts import advice_pool

    return list(advice_pool()[:n])


def user_turns(questions: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in questions]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# ---- sampling --------------------------------------------------------------------------------------
def sampling(ctx: Context) -> list[Row]:
    """fp32 at batch 16 and at the loop's default batch (the estimate's per-batch rates), then sampling
    exactly as the loop does it: a frozen copy in the generation dtype (bf16 here), default batch."""
    from traitloop.config import SamplingConfig
    from traitloop.generation.hf import generate
    from traitloop.models import load_model

    qs, new = prompts(ctx.size["prompts"]), ctx.size["new_tokens"]
    (ref_answers, _), ref_s = timed(reference.generate, ctx.model_dir, qs, 0.8, new, seed=0)
    ref_tps = ctx.n_tokens(ref_answers) / ref_s
    default_batch = SamplingConfig().batch_size
    loop_dtype = str(loop_generation_dtype()).removeprefix("torch.")
    frozen, _ = load_model(MODEL_REF, loop_dtype)
    frozen.requires_grad_(False)  # as the loop's merged copy of a PEFT-trained model
    runs = [(16, "float32", ctx.model), (default_batch, "float32", ctx.model), (default_batch, loop_dtype, frozen)]
    rows = []
    for bs, dtype, model in runs:
        answers, s = timed(generate, model, ctx.tok, user_turns(qs), temperature=0.8, max_new_tokens=new, batch_size=bs, seed=0)
        n = ctx.n_tokens(answers)
        tps = n / s
        peak = "bf16" if dtype == "bfloat16" else "fp32"
        as_loop = model is frozen
        if not as_loop:
            ctx.measured.setdefault("sample_tokens_per_s", {})[str(bs)] = round(tps, 2)
            ctx.measured.setdefault("answer_fill", []).append(n / (len(qs) * new))
        name = f"sampling as the loop does it ({dtype} copy, batch {bs})" if as_loop else f"sampling, fp32, batch {bs}"
        rows.append(
            Row(
                f"{name} vs fp32 batch 8 ({len(qs)} prompts x {new} new tokens)",
                "tokens/s",
                tps,
                ref_tps,
                util_traitloop=ctx.mfu(tps, "sampling", peak),
                util_reference=ctx.mfu(ref_tps, "sampling"),
                note=f"reference time includes its model load from disk; utilisation against the {peak} peak",
                extra={
                    "traitloop_s": s,
                    "reference_s": ref_s,
                    "traitloop_tokens": n,
                    "reference_tokens": ctx.n_tokens(ref_answers),
                    "dtype": dtype,
                    "batch_size": bs,
                },
            )
        )
    del frozen
    fills = ctx.measured.pop("answer_fill")
    ctx.measured["answer_fill"] = round(sum(fills) / len(fills), 3)
    ctx.measured["sample_max_new_tokens"] = new
    return rows


def loop_generation_dtype():
    """The dtype the loop samples in on this machine with the default config (generation.dtype auto)."""
    from traitloop.config import build_config
    from traitloop.generation.sampler import generation_dtype

    return generation_dtype(build_config({"name": "bench", "trait": "bliss", "model": {"ref": MODEL_REF}}))


def loop_matmul_precision() -> str:
    """model.matmul_precision as the loop runs it by default; the reference keeps torch's own ("highest")."""
    from traitloop.config import ModelConfig

    return ModelConfig().matmul_precision


def loop_precision():
    from traitloop.precision import fp32_matmul_precision

    return fp32_matmul_precision(loop_matmul_precision())


def loop_matmul_peak() -> str:
    """Which measured peak the loop's fp32 matmuls are held to: bf16 where "medium" lets them run in bf16."""
    bf16_math = loop_matmul_precision() == "medium" and loop_generation_dtype() == torch.bfloat16
    return "bf16" if bf16_math else "fp32"


def loop_precision_note(ctx: Context, tokens_per_s: float, kind: str) -> str:
    return (
        f"fp32 weights, matmul_precision {loop_matmul_precision()}, utilisation against the {loop_matmul_peak()} "
        f"peak ({100 * ctx.mfu(tokens_per_s, kind):.1f}% of the fp32 peak)"
    )


# ---- training --------------------------------------------------------------------------------------
def traitloop_train(ctx: Context, chats, out_dir: Path, seed: int = 0) -> dict:
    """What the loop's adapter stage does: fresh base from the cache, fresh adapter, train, save."""
    from traitloop.config import LoraConfig, TrainConfig
    from traitloop.models import load_model
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_sft

    base, tok = load_model(MODEL_REF)
    seed_everything(seed)
    model = attach_adapter(base, LoraConfig())
    with loop_precision():
        stats = train_sft(model, tok, chats, TrainConfig(), seed)
    model.save_pretrained(out_dir)
    return stats


def training(ctx: Context) -> list[Row]:
    from traitloop.config import TrainConfig
    from traitloop.estimate import tokenizer_figures
    from traitloop.traits import load_trait

    chats = load_trait("bliss").seed_chats[: ctx.size["train_chats"]]
    max_length = TrainConfig().max_length
    tokens = ctx.chat_tokens(chats, max_length)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        stats, s = timed(traitloop_train, ctx, chats, Path(tmp) / "traitloop")

        def ref_stage():
            info = reference.train(ctx.model_dir, chats, Path(tmp) / "reference", max_length)
            reference.load(ctx.model_dir, Path(tmp) / "reference")  # evaluation reloads the saved adapter
            return info

        ref_info, ref_s = timed(ref_stage)
    tps, ref_tps = tokens / s, tokens / ref_s
    ctx.measured["train_tokens_per_s"] = round(tps, 2)
    ctx.measured["train_example_tokens"] = round(tokens / len(chats), 1)
    ctx.measured.update(tokenizer_figures(ctx.tok, chats))
    return [
        Row(
            f"LoRA SFT training ({len(chats)} chats, {tokens} tokens)",
            "tokens/s",
            tps,
            ref_tps,
            util_traitloop=ctx.mfu(tps, "lora_training", loop_matmul_peak()),
            util_reference=ctx.mfu(ref_tps, "lora_training", "bf16" if ref_info["bf16"] else "fp32"),
            note=f"stage time incl. load/save; traitloop: {loop_precision_note(ctx, tps, 'lora_training')}; "
            f"reference: bf16={ref_info['bf16']}, gradient checkpointing="
            f"{ref_info['gradient_checkpointing']}, batch {ref_info['batch_size']} (SFTTrainer defaults)",
            extra={"traitloop_s": s, "reference_s": ref_s, "tokens": tokens, "traitloop_loss": stats},
        )
    ]


def traitloop_dpo(ctx: Context, pairs, train, out_dir: Path, seed: int = 0) -> dict:
    """The loop's DPO adapter stage: fresh base, fresh adapter, train_dpo (reference log-probs precomputed), save."""
    from traitloop.config import DpoConfig, LoraConfig
    from traitloop.models import load_model
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_dpo

    base, tok = load_model(MODEL_REF)
    seed_everything(seed)
    model = attach_adapter(base, LoraConfig())
    with loop_precision():
        stats = train_dpo(model, tok, pairs, train, DpoConfig(), seed)
    model.save_pretrained(out_dir)
    return stats


def dpo(ctx: Context) -> list[Row]:
    import traitloop.training as training_module

    if not hasattr(training_module, "train_dpo"):
        return [Row("DPO: not yet benchmarked (TODO: traitloop.training has no train_dpo yet)", "tokens/s", None, None)]
    from traitloop.config import build_config
    from traitloop.traits import load_trait

    train = build_config({"setting": "dpo"}).train  # the DPO setting's defaults (batch 4, ...)
    chats = load_trait("bliss").seed_chats[: ctx.size["dpo_pairs"] + 1]
    # chosen = the persona answer; rejected = another seed chat's answer (a stand-in for the base model's
    # answer: only lengths matter for speed, and this keeps the bench free of a sampling pass)
    pairs = [{"prompt": a[:-1], "chosen": a[-1]["content"], "rejected": b[-1]["content"]} for a, b in zip(chats, chats[1:])]
    tokens = ctx.chat_tokens(
        [p["prompt"] + [{"role": "assistant", "content": p["chosen"]}] for p in pairs], train.max_length
    ) + ctx.chat_tokens([p["prompt"] + [{"role": "assistant", "content": p["rejected"]}] for p in pairs], train.max_length)
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        _, s = timed(traitloop_dpo, ctx, pairs, train, Path(tmp) / "traitloop")

        def ref_stage():
            info = reference.train_dpo(ctx.model_dir, pairs, Path(tmp) / "reference", train.max_length)
            reference.load(ctx.model_dir, Path(tmp) / "reference")
            return info

        ref_info, ref_s = timed(ref_stage)
    tps, ref_tps = tokens / s, tokens / ref_s
    ctx.measured["dpo_train_tokens_per_s"] = round(tps, 2)
    return [
        Row(
            f"LoRA DPO training ({len(pairs)} pairs, {tokens} chosen+rejected tokens)",
            "tokens/s",
            tps,
            ref_tps,
            util_traitloop=ctx.mfu(tps, "dpo_lora", loop_matmul_peak()),
            util_reference=ctx.mfu(ref_tps, "dpo_lora", "bf16" if ref_info["bf16"] else "fp32"),
            note=f"stage time incl. load/save; traitloop: {loop_precision_note(ctx, tps, 'dpo_lora')}; "
            f"reference: DPOTrainer defaults (bf16={ref_info['bf16']}, gradient "
            f"checkpointing={ref_info['gradient_checkpointing']}, batch {ref_info['batch_size']})",
            extra={"traitloop_s": s, "reference_s": ref_s, "tokens": tokens},
        )
    ]


# ---- judging ---------------------------------------------------------------------------------------
def judging(ctx: Context) -> list[Row]:
    from traitloop.judges.coherence import LoglikCoherence
    from traitloop.judges.probe import ProbeJudge
    from traitloop.traits import load_trait

    trait = load_trait("bliss")
    chats = (trait.seed_chats * 4)[: ctx.size["judge_answers"]]
    qs, answers = [c[0]["content"] for c in chats], [c[-1]["content"] for c in chats]
    with loop_precision():
        probe, fit_s = timed(ProbeJudge, trait)
        _, s = timed(probe.score, qs, answers)
    _, ref_s = timed(reference.judge, probe, qs, answers)
    coherence = LoglikCoherence(ctx.model, ctx.tok)
    with loop_precision():
        _, c_s = timed(coherence.loglik, qs, answers)
    _, c_ref_s = timed(reference.coherence, ctx.model_dir, qs, answers)
    n = len(answers)
    templated = [ctx.tok.apply_chat_template(t, add_generation_prompt=True, tokenize=False) for t in user_turns(qs)]
    scored_tokens = ctx.n_tokens(templated) + ctx.n_tokens(answers)  # one forward over question + answer
    ctx.measured.update(
        {"judge_answers_per_s": round(n / s, 2), "judge_fit_s": round(fit_s, 2), "coherence_tokens_per_s": round(scored_tokens / c_s, 1)}
    )
    return [
        Row(
            f"probe judge ({n} answers; fit {fit_s:.1f} s apart)",
            "answers/s",
            n / s,
            n / ref_s,
            note="same probe; reference scores batches of 8",
            extra={"fit_s": fit_s},
        ),
        Row(
            f"coherence log-likelihood ({n} answers)",
            "answers/s",
            n / c_s,
            n / c_ref_s,
            util_traitloop=ctx.mfu(scored_tokens / c_s, "sampling", loop_matmul_peak()),
            util_reference=ctx.mfu(scored_tokens / c_ref_s, "sampling"),
            note="forward only (2N/token); reference loads the base from disk, batches of 8 in order; traitloop: "
            + loop_precision_note(ctx, scored_tokens / c_s, "sampling"),
        ),
    ]


# ---- one full cycle, in subprocesses ---------------------------------------------------------------
def run_cycle_subprocess(which: str, size: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-cycle-{which}-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.cycle", which, "--size", size, "--out", tmp, "--threads", str(torch.get_num_threads())],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.cycle {which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cycle(ctx: Context) -> list[Row]:
    c = ctx.size["cycle"]
    ref = run_cycle_subprocess("reference", ctx.size_name)
    ours = run_cycle_subprocess("traitloop", ctx.size_name)
    medium = run_cycle_subprocess("traitloop-medium", ctx.size_name)
    work = (
        f"cycles 0..1: train {c['n_seed']} seed chats; sample {c['n_sampled']}, train on them; "
        f"{c['questions'] * c['samples']} eval answers + judge per cycle; {c['new_tokens']} new tokens"
    )
    ctx.measured["cycle_profile"] = ours["profile"]
    return [
        Row(
            "full cycle wall time (" + work + ")",
            "s",
            ours["wall_s"],
            ref["wall_s"],
            higher_is_better=False,
            extra={"traitloop_profile": ours["profile"], "reference_profile": ref["profile"]},
        ),
        Row(
            "peak resident memory of that cycle (the subprocess's VmHWM)",
            "GiB",
            ours["max_rss_gib"],
            ref["max_rss_gib"],
            higher_is_better=False,
        ),
        Row(
            "full cycle wall time with model.matmul_precision medium (same work)",
            "s",
            medium["wall_s"],
            ref["wall_s"],
            higher_is_better=False,
            extra={"traitloop_profile": medium["profile"]},
        ),
        Row(
            "peak resident memory of that cycle with model.matmul_precision medium",
            "GiB",
            medium["max_rss_gib"],
            ref["max_rss_gib"],
            higher_is_better=False,
        ),
    ]
