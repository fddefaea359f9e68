"""How precisely fp32 matmuls are computed during a run (`model.matmul_precision`).

torch's `set_float32_matmul_precision` is process-wide; `fp32_matmul_precision` sets it for one block
and puts the previous value back, so a run does not change the precision of code around it (a notebook,
the bench's reference pipeline).

- "highest": every fp32 matmul in full fp32.
- "medium": fp32 matmuls may round their INPUTS to bf16 and accumulate in fp32 where the hardware has a
  fast path for it (oneDNN on CPUs with AMX / AVX512-BF16; TF32 on NVIDIA GPUs). Weights, activations,
  gradients, optimizer state and every non-matmul op stay fp32. Measured here (BENCHMARKS.md): a 1024^2
  matmul 4.3x faster, a linear layer's output within 0.25% relative error, and 10 LoRA SFT steps on the
  embedded SmolLM2 within 0.003 nats of "highest" at every step (bf16 autocast, which also runs the
  activations and the LoRA sum in bf16, drifted 0.23 nats on the same steps and was rejected).

One catch: under "medium", torch's fused CPU flash-attention kernel gets ~3x SLOWER in fp32 (fwd+bwd of
2x9x169x64 heads: 5.8 ms highest, 18 ms medium), while SDPA's math backend (plain matmuls + softmax)
takes 6.5 ms in both. `fp32_attention(model)` picks the math backend for exactly that case: training and
coherence scoring run inside it. bf16 sampling keeps the fused kernel (math is 1.2x slower there).
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
