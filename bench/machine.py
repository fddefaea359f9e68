"""This machine: what it is (cores, CPU model) and what it can do at most (matmul GFLOP/s).

The peak is measured, not looked up: square matmuls of a few sizes with the same torch that runs
traitloop, best of several repeats, in fp32 and bf16. Model-FLOPs utilisation (MFU) anywhere in the
bench is achieved FLOP/s divided by one of these peaks.

FLOP formulas (N = parameters of the model, the tied embedding / lm_head counted once):
    sampling       2 N FLOPs per generated token   (one forward: a multiply-add per weight)
    LoRA training  4 N FLOPs per trained token     (forward 2N + backward through activations 2N;
                                                    frozen weights get no weight gradients)
    full training  6 N FLOPs per trained token     (forward 2N + backward 4N)
    DPO with LoRA  6 N FLOPs per chosen/rejected token (reference forward 2N + policy forward and
                                                    backward through activations 4N)
Attention score FLOPs and the LoRA matrices themselves are left out (small at these lengths), so
the MFU figures are slightly low rather than flattering.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import torch

FLOPS_PER_TOKEN = {"sampling": 2, "lora_training": 4, "full_training": 6, "dpo_lora": 6}
FORMULA = (
    "sampling 2N, LoRA training 4N (fwd 2N + bwd-through-activations 2N), full training 6N, LoRA DPO 6N "
    "(+ reference fwd 2N) FLOPs per token; N = params"
)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    except OSError:
        pass
    return []


def info() -> dict:
    from importlib.metadata import version

    return {
        "libraries": ", ".join(f"{name} {version(name)}" for name in ("transformers", "trl", "peft")),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def matmul_gflops(dtype: torch.dtype, sizes=(1024, 1536, 2048), repeats: int = 5) -> dict:
    """Best GFLOP/s over square matmuls of `sizes`, each timed `repeats` times after a warm-up."""
    best, per_size = 0.0, {}
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up: kernels picked, pages touched
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        gflops = 2 * n**3 / min(times) / 1e9
        per_size[n] = round(gflops, 1)
        best = max(best, gflops)
    return {"best": round(best, 1), "per_size": per_size}


def peak(quick: bool = False) -> dict:
    sizes = (1024, 1536) if quick else (1024, 1536, 2048)
    return {"fp32": matmul_gflops(torch.float32, sizes), "bf16": matmul_gflops(torch.bfloat16, sizes)}


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Best copy bandwidth (bytes read + written per second): the ceiling of batch-limited decoding,
    which streams every weight once per generated token of the batch."""
    a = torch.ones(mib * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(timed_copy(a, b) for _ in range(repeats))
    return 2 * a.numel() * 4 / best / 1e9


def timed_copy(a: torch.Tensor, b: torch.Tensor) -> float:
    t0 = time.perf_counter()
    b.copy_(a)
    return time.perf_counter() - t0


def mfu(tokens_per_s: float, params: int, kind: str, peak_gflops: float) -> float:
    """Model-FLOPs utilisation: FLOPs the model needs per token x tokens/s, over the measured peak."""
    return FLOPS_PER_TOKEN[kind] * params * tokens_per_s / (peak_gflops * 1e9)


def max_rss_gib() -> float:
    """Peak resident memory of this process: VmHWM from /proc/self/status. (getrusage's ru_maxrss is not
    used: on Linux a child started by fork + exec inherits the parent's high-water mark in it.)"""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
