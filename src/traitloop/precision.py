"""How precisely fp32 matmuls are computed during a run (`model.matmul_precision`).

torch's `set_float32_matmul_precision` is process-wide; `fp32_matmul_precision` sets it for one block
and puts the previous value back, so a run does not change the precision of code around it (a notebook,
the bench's reference pipeline).

- "highest": every fp32 matmul in full fp32.
- "medium": fp32 matmuls may round their INPUTS to bf16 and accumulate in fp32 where the hardware has a
  fast path for it (oneDNN on CPUs with AMX / AVX512-BF16; TF32 on NVIDIA GPUs). Weights, activations,
  gradients, optimizer state and every non-matmul op stay fp32. Speed and accuracy against "highest",
and why bf16 autocast was rejected, are measured in BENCHMARKS.md.

One catch: under "medium", torch's fused CPU flash-attention kernel gets SLOWER in fp32, while SDPA's
math backend (plain matmuls + softmax) does not (BENCHMARKS.md). `fp32_attention(model)` picks the math
backend for exactly that case: training and coherence scoring run inside it. bf16 sampling keeps the
fused kernel (math is slower there).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

MatmulPrecision = Literal["highest", "high", "medium"]


@contextmanager
def fp32_attention(model) -> Iterator[None]:
    """SDPA's math backend for an fp32 model on the CPU when fp32 matmuls run at reduced precision;
    otherwise nothing changes."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    weight = next(model.parameters())
    reduced = torch.get_float32_matmul_precision() != "highest"
    if reduced and weight.device.type == "cpu" and weight.dtype == torch.float32:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    else:
        yield


@contextmanager
def fp32_matmul_precision(precision: MatmulPrecision) -> Iterator[None]:
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
