"""`python -m bench --gpu` (bench/gpu.py): traitloop's own sampling and LoRA training on a GPU, in bf16, on a
random-weight model of a real architecture (no model hub, no download), against the card's measured peak.

    python -m bench --gpu [--arch qwen3-4b] [--tokenizer DIR] [--out-dir bench/results]
    python -m bench --gpu-smoke [--out-dir DIR]      the same code on the CPU, tiny shapes, a few steps (tested)

Measures, on CUDA in bf16:
- peak      the card's bf16 matmul rate: square matmuls (4096, 8192, 16384) of random data, timed with CUDA
            events after warm-ups, best of the sizes (the median of 10 each);
- sampling  generated tokens/s of traitloop.generation.hf.generate (the loop's transformers path: chat
            template, left padding, pure temperature sampling at T=0.8) at batch 64 and 256, one full batch
            of the advice pool's prompts each, 128 new tokens per prompt (the random model's end-of-sequence
            is switched off, so every row generates all of them);
- training  LoRA SFT tokens/s of traitloop.training.attach_adapter + train_sft (TRL's SFTTrainer, as a cycle
            trains; PEFT keeps the adapter in fp32 on the bf16 base) on the bliss trait's seed chats, at the
            protocol's batch 2 and at batch 16; steady-state rate from the trainer's per-step log times
            (the first step, with its kernel selection, left out), and the whole call's rate beside it.

Utilisation = achieved FLOP/s / measured peak, with FLOPs per token = 2 N for sampling (generated tokens
only; prompt prefill is left out) and 6 N for training (the usual forward + backward figure; LoRA on a
frozen base does no weight gradients, about 4 N, reported as utilisation_4n), N = the parameters (tied
embedding once). Attention-score FLOPs are left out, so utilisation is slightly low, never flattering.

Writes bench/results/gpu-<card>.json (--gpu-smoke: gpu-smoke-cpu.json) and prints a table. The architecture
configs are kept here (ARCHITECTURES: each model's config.json as published); the tokenizer is the embedded
SmolLM2's (`embedded:smollm2-135m-instruct`, or a directory holding it, as scripts/gpu_check.sh carries it):
token ids it does not know decode to nothing, which only shortens the texts, not the work.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
FLOPS_PER_TOKEN = {"sampling": 2, "training": 6, "training_lora": 4}
FORMULA = (
    "sampling 2N per generated token (prefill left out); training 6N per trained token (fwd 2N + bwd 4N; LoRA on a "
    "frozen base is nearer 4N: utilisation_4n); N = params, tied embedding once; attention scores left out"
)

# config.json of each architecture, as published (random weights are drawn from it; nothing is downloaded)
ARCHITECTURES: dict[str, dict] = {
    # Qwen/Qwen3-4B-Instruct-2507: the paper's SFT model (configs/paper/sft-bliss-qwen3-4b.yaml); 4.02 B parameters
    "qwen3-4b": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "initializer_range": 0.02,
        "intermediate_size": 9728,
        "max_position_embeddings": 262144,
        "max_window_layers": 36,
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    # the embedded Gemma-3-270M (embedded:gemma3-270m, the SDF demo's base model): its config.json as traitloop
    # writes it from the GGUF; 268 M parameters, 170 M of them the embedding
    "gemma3-270m": {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 640,
        "initializer_range": 0.02,
        "intermediate_size": 2048,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
        "max_position_embeddings": 32768,
        "num_attention_heads": 4,
        "num_hidden_layers": 18,
        "num_key_value_heads": 1,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        "sliding_window": 512,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": False,
        "vocab_size": 262144,
    },
    # --gpu-smoke: Qwen3's code at a toy size, with the SmolLM2 tokenizer's vocabulary
    "smoke": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "head_dim": 16,
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "vocab_size": 49152,
    },
}

SIZES = {
    "gpu": {
        "peak_sizes": (4096, 8192, 16384),
        "peak_repeats": 10,
        "sample_batches": (64, 256),
        "new_tokens": 128,
        "train_batches": ((2, 32), (16, 128)),  # (batch size, chats): 16 and 8 optimizer steps
        "max_length": 512,
    },
    "smoke": {
        "peak_sizes": (128, 256),
        "peak_repeats": 3,
        "sample_batches": (4, 8),
        "new_tokens": 4,
        "train_batches": ((2, 6),),
        "max_length": 64,
    },
}
TOKENIZER = "embedded:smollm2-135m-instruct"


# ---- the machine -----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_info(device: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    info = {
        "type": device.type,
        "name": card_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "libraries": {name: v(name) for name in ("transformers", "trl", "peft", "accelerate", "datasets")},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


def matmul_peak(device: torch.device, sizes, repeats: int) -> dict:
    """Best bf16 TFLOP/s over square matmuls of `sizes` (random data; each the median of `repeats`)."""
    per_size = {}
    for n in sizes:
        gen = torch.Generator(device=device).manual_seed(n)
        a = torch.randn(n, n, device=device, generator=gen).to(torch.bfloat16)
        b = torch.randn(n, n, device=device, generator=gen).to(torch.bfloat16)
        for _ in range(3):  # warm-up: kernel selection, clocks up
            torch.mm(a, b)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.mm(a, b)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - t0)
        times.sort()
        per_size[str(n)] = 2 * n**3 / times[len(times) // 2] / 1e12
        del a, b
    best = max(per_size.values())
    return {"tflops": best, "per_size_tflops": per_size, "method": f"bf16 torch.mm, random data, median of {repeats} after 3 warm-ups"}


# ---- the model -------------------------------------------------------------------------------------
def build_model(arch: str, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """A random-weight model of `arch` (ARCHITECTURES), on `device` in `dtype`, its end-of-sequence off (so
    every sampled row runs to max_new_tokens: the work is known exactly)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHITECTURES[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **{k: v for k, v in spec.items() if k != "architectures"})
    config.eos_token_id = config.bos_token_id = config.pad_token_id = None
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model.eval()


def count_params(model) -> int:
    """Parameters, the tied embedding and output layer once (parameters() yields a shared one once)."""
    return sum(p.numel() for p in model.parameters())


def load_bench_tokenizer(ref: str):
    """`embedded:NAME` as traitloop loads it, or a directory holding just a tokenizer (no model config)."""
    from traitloop.models import load_tokenizer

    if not Path(ref).is_dir():
        return load_tokenizer(ref)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    return tok


# ---- the measurements ------------------------------------------------------------------------------
def rates(kind: str, params: int, tokens: int, seconds: float, peak_tflops: float) -> dict:
    tokens_per_s = tokens / seconds
    achieved = FLOPS_PER_TOKEN[kind] * params * tokens_per_s / 1e12
    out = {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "achieved_tflops": achieved,
        "utilisation": achieved / peak_tflops,
    }
    if kind == "training":
        out["utilisation_4n"] = FLOPS_PER_TOKEN["training_lora"] * params * tokens_per_s / 1e12 / peak_tflops
    return out


def sampling(model, tok, device, params: int, peak: float, batch: int, new_tokens: int) -> dict:
    """One full batch of `batch` advice-pool prompts through hf.generate (after a short warm-up batch)."""
    from traitloop.generation.hf import generate, render_prompts
    from traitloop.prompts import advice_pool

    chats = [[{"role": "user", "content": q}] for q in advice_pool()[:batch]]
    kwargs = dict(temperature=0.8, batch_size=batch, seed=0)
    generate(model, tok, chats, max_new_tokens=min(8, new_tokens), **kwargs)  # warm-up: allocator, kernels
    sync(device)
    t0 = time.perf_counter()
    answers = generate(model, tok, chats, max_new_tokens=new_tokens, **kwargs)
    sync(device)
    seconds = time.perf_counter() - t0
    full = sum(bool(getattr(a, "truncated", False)) for a in answers)
    prompt_tokens = sum(len(tok(t, add_special_tokens=False).input_ids) for t in render_prompts(tok, chats))
    return {
        "batch": batch,
        "prompts": len(chats),
        "new_tokens_per_prompt": new_tokens,
        "rows_that_ran_to_max_new_tokens": full,
        "prompt_tokens": prompt_tokens,
        **rates("sampling", params, len(chats) * new_tokens, seconds, peak),
    }


def training(model, tok, device, params: int, peak: float, batch: int, n_chats: int, max_length: int) -> dict:
    """A fresh LoRA adapter (traitloop's defaults: r 16, all linear layers) trained on `n_chats` seed chats for
    one epoch at `batch`, as a cycle trains; the adapter is taken off the base again afterwards."""
    from traitloop.config import LoraConfig, TrainConfig
    from traitloop.training import attach_adapter, detach_adapter, train_sft
    from traitloop.traits import load_trait

    seed_chats = load_trait("bliss").seed_chats
    chats = [seed_chats[i % len(seed_chats)] for i in range(n_chats)]
    tokens = sum(min(len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False).input_ids), max_length) for c in chats)
    train = TrainConfig(batch_size=batch, max_length=max_length, epochs=1, warmup_ratio=0.0)
    step_times: list[float] = []

    def on_step(n: int, loss: float | None) -> None:  # after each optimizer step (its loss logged)
        sync(device)
        step_times.append(time.perf_counter())

    torch.manual_seed(0)
    peft_model = attach_adapter(model, LoraConfig())
    sync(device)
    t0 = time.perf_counter()
    stats = train_sft(peft_model, tok, chats, train, seed=0, on_step=on_step)
    sync(device)
    seconds = time.perf_counter() - t0
    detach_adapter(peft_model, model)
    steps = len(step_times)
    out = {
        "batch_size": batch,
        "chats": n_chats,
        "max_length": max_length,
        "steps": steps,
        "loss_first": stats["loss_first"],
        "loss_last": stats["loss_last"],
    }
    out["stage"] = rates("training", params, tokens, seconds, peak)  # the whole call: trainer set-up included
    if steps >= 3:  # steady state: steps 2..n, at the mean tokens per step
        steady_tokens = round(tokens * (steps - 1) / steps)
        out.update(rates("training", params, steady_tokens, step_times[-1] - step_times[0], peak))
        out["steady_state"] = f"steps 2..{steps} of {steps}, from the trainer's per-step log times"
    else:
        out.update(out["stage"])
        out["steady_state"] = "too few steps: the whole call"
    return out


# ---- the command -----------------------------------------------------------------------------------
def run(arch: str, smoke: bool, tokenizer: str, out_dir: Path) -> dict:
    from traitloop.cli import quiet_libraries

    quiet_libraries()
    size = SIZES["smoke" if smoke else "gpu"]
    if smoke:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("python -m bench --gpu needs a CUDA GPU (torch.cuda.is_available() is False); --gpu-smoke runs on the CPU")
    else:
        device = torch.device("cuda")
    started = time.time()
    result: dict = {
        "command": "python -m bench " + ("--gpu-smoke" if smoke else f"--gpu --arch {arch}"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device_info(device),
        "dtype": "bfloat16",
        "flop_formula": FORMULA,
        "flops_per_token": {"sampling": FLOPS_PER_TOKEN["sampling"], "training": FLOPS_PER_TOKEN["training"]},
    }
    print(f"device: {result['device']['name']} ({device.type}), torch {torch.__version__}", flush=True)
    result["peak"] = matmul_peak(device, size["peak_sizes"], size["peak_repeats"])
    peak = result["peak"]["tflops"]
    print(f"peak bf16 matmul: {peak:.2f} TFLOP/s {result['peak']['per_size_tflops']}", flush=True)

    tok = load_bench_tokenizer(tokenizer)
    model = build_model(arch, device)
    params = count_params(model)
    result["architecture"] = {"name": arch, "params": params, "config": ARCHITECTURES[arch], "tokenizer": tokenizer}
    print(f"model: {arch}, {params / 1e9:.3f} B parameters, random weights, bf16", flush=True)
    result["sampling"] = []
    for batch in size["sample_batches"]:
        row = sampling(model, tok, device, params, peak, batch, size["new_tokens"])
        result["sampling"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the batch's KV cache
        print(f"sampling batch {batch}: {row['tokens_per_s']:.1f} tokens/s, utilisation {row['utilisation']:.2%}", flush=True)
    result["training"] = []
    for batch, n_chats in size["train_batches"]:
        row = training(model, tok, device, params, peak, batch, n_chats, size["max_length"])
        result["training"].append(row)
        print(f"LoRA SFT batch {batch}: {row['tokens_per_s']:.1f} tokens/s, utilisation {row['utilisation']:.2%}", flush=True)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["wall_s"] = time.time() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu-smoke-cpu.json" if smoke else f"gpu-{slug(card_name(device))}.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    result["path"] = str(path)
    return result


def table(result: dict):
    from rich.table import Table

    from bench.report import num, pct

    peak = result["peak"]["tflops"]
    t = Table(
        title=f"traitloop on {result['device']['name']}: {result['architecture']['name']} "
        f"({result['architecture']['params'] / 1e9:.2f} B params, random weights), bf16",
        caption=f"utilisation = achieved / measured bf16 matmul peak ({peak:.3g} TFLOP/s); {result['flop_formula']}",
    )
    for col in ["benchmark", "tokens/s", "achieved TFLOP/s", "utilisation", "note"]:
        t.add_column(col, justify="left" if col in ("benchmark", "note") else "right", overflow="fold")
    for row in result["sampling"]:
        t.add_row(
            f"sampling (hf.generate), batch {row['batch']}",
            num(row["tokens_per_s"]),
            f"{row['achieved_tflops']:.3g}",
            pct(row["utilisation"]),
            f"{row['prompts']} prompts x {row['new_tokens_per_prompt']} new tokens, 2N",
        )
    for row in result["training"]:
        t.add_row(
            f"LoRA SFT (train_sft), batch {row['batch_size']}",
            num(row["tokens_per_s"]),
            f"{row['achieved_tflops']:.3g}",
            pct(row["utilisation"]),
            f"6N (4N: {pct(row['utilisation_4n'])}); {row['steps']} steps; whole call {num(row['stage']['tokens_per_s'])} tokens/s",
        )
    return t


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench --gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run on the CUDA GPU")
    parser.add_argument("--gpu-smoke", action="store_true", help="the same code on the CPU at a toy size, a few steps")
    parser.add_argument("--arch", default="qwen3-4b", choices=[a for a in ARCHITECTURES if a != "smoke"], help="architecture (--gpu)")
    parser.add_argument("--tokenizer", default=TOKENIZER, help="tokenizer reference: embedded:NAME or a directory")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where gpu-<card>.json goes (default bench/results)")
    args = parser.parse_args(argv)
    from rich.console import Console

    result = run("smoke" if args.gpu_smoke else args.arch, args.gpu_smoke, args.tokenizer, args.out_dir)
    console = Console(width=200)
    console.print(table(result))
    console.print(f"results: {result['path']} ({result['wall_s']:.0f} s)")
