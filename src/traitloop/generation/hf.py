"""Batched sampling with transformers: left padding, prompts sorted by length, seeded.

Prompts are chats (rendered with the model's chat template; SFT, DPO) or plain text that a base
model continues (SDF; the tokenizer adds its BOS token as in pretraining).

Sorting by length keeps padding (wasted compute) small; results come back in the caller's order.
The global torch RNG is seeded once per call, so the same (model, prompts, seed, batch size) always
gives the same answers on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

Conversation = list[dict[str, str]]
Prompt = Conversation | str


class Text(str):
    """A generated text that knows whether it was cut off: `truncated` is True when generation stopped at
    max_new_tokens rather than at the model's end-of-sequence (both backends set it)."""

    truncated: bool = False

    @classmethod
    def of(cls, text: str, truncated: bool) -> Text:
        out = cls(text)
        out.truncated = truncated
        return out


def render_prompts(tokenizer, conversations: list[Conversation]) -> list[str]:
    """Chat-template each conversation, ending where the assistant's answer begins."""
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[Prompt],
    *,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    top_p: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """One sampled answer (or continuation) per prompt, in input order. `on_batch(n)` is told after each batch."""
    chat = not all(isinstance(p, str) for p in prompts)
    texts = render_prompts(tokenizer, prompts) if chat else list(prompts)
    special = not chat  # a rendered chat template already holds its special tokens
    lengths = [len(tokenizer(t, add_special_tokens=special).input_ids) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: memory peaks early
    answers: list[str] = [""] * len(texts)
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    with contiguous_lm_head_input(model), decode_attention(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=special).to(device)
            out = model.generate(
                **batch,
                **sampling_kwargs(model, temperature, top_p),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,  # a model that was trained (gradient checkpointing) may have it off in its config
            )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            ends = _end_ids(model, tokenizer)
            for i, row in zip(idx, new_tokens):
                text = tokenizer.decode(row, skip_special_tokens=True)
                # cut off: max_new_tokens generated and none of them ends the sequence
                truncated = is_truncated([int(t) for t in row], max_new_tokens, ends)
                # a continuation keeps its leading space or newline: prefix + continuation is the document
                answers[i] = Text.of(text.strip() if chat else text.rstrip(), truncated)
            if on_batch:
                on_batch(len(idx))
    return answers


def is_truncated(new_tokens: list[int], max_new_tokens: int, ends: set[int]) -> bool:
    """Cut off: max_new_tokens were generated and none of them ends the sequence (padding after an
    end-of-sequence token only follows an end)."""
    return len(new_tokens) >= max_new_tokens and not any(t in ends for t in new_tokens)


def _end_ids(model, tokenizer) -> set[int]:
    """Token ids that end a generation: the model's generation_config eos ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ends.add(tokenizer.eos_token_id)
    return ends


@contextmanager
def contiguous_lm_head_input(model) -> Iterator[None]:
    """Hand the output layer a contiguous input while generating.

    The first step of `generate` keeps only the last position's hidden state, a strided view. When
    the output layer's weight does not require grad (any model trained with PEFT, whose base is
    frozen), torch's matmul then does not fold the batch into one matrix product: it expands the
    weight to one copy per row and calls bmm: a large temporary and a slow batch (measured in
    docs/DECISIONS.md, "Memory"). A contiguous input of
    batch x hidden floats avoids it; the result is the same product."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


# ---- decode speed-ups (BENCHMARKS.md, "Decode step profile (issue #16)") --------------------------
# Two changes to transformers' decode loop, measured on a 2-core CPU, each with its switch (the old
# path: both False) and its checks in tests/test_decode_speed.py. They apply to models on the CPU
# only: on a GPU, torch.multinomial and SDPA are fast, and nothing here was measured there. (A static
# KV cache and torch.compile were measured too and not kept: BENCHMARKS.md.)

FAST_SAMPLING = True  # draw each token by inverse-CDF sampling instead of torch.multinomial
FAST_DECODE_ATTENTION = True  # one-query attention steps as two batched matmuls instead of SDPA's kernel
_OTHER_WARPERS = ("min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff")


def _on_cpu(model) -> bool:
    return next(model.parameters()).device.type == "cpu"


def sampling_kwargs(model, temperature: float, top_p: float) -> dict:
    """generate() arguments for pure temperature (and nucleus) sampling, top_k off as in the protocol.

    torch.multinomial draws one exponential variate per vocabulary entry per row (64 x 49,152 at batch
    64: 40-100 ms a step on one core, more than the attention of all 30 layers). The fast path draws one
    uniform number per row and inverts the cumulative distribution of the same processed scores
    (`draw`): the same distribution, other samples for a seed. It runs as the last logits processor and
    marks the drawn token with +inf, so that generate's greedy step picks it. A model whose
    generation_config asks for a warper this path does not rebuild keeps the multinomial path."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    config = getattr(model, "generation_config", None)
    if not FAST_SAMPLING or not _on_cpu(model) or any(_warper_set(config, name) for name in _OTHER_WARPERS):
        return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    if top_p < 1.0:  # nucleus: transformers' own warpers in its order, then the draw at temperature 1
        processors = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p), InverseCdfSampler()])
    else:
        processors = LogitsProcessorList([InverseCdfSampler(temperature)])
    # do_sample=False: generate adds no warpers of its own and takes the argmax of what the processors return
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None, logits_processor=processors)


def _warper_set(config, name: str) -> bool:
    value = getattr(config, name, None)
    if value is None:
        return False
    return value < 1.0 if name == "typical_p" else (0.0 < value < 1.0 if name.endswith("cutoff") else True)


class InverseCdfSampler:
    """Logits processor that samples: draws a token from softmax(scores / temperature) per row with one
    uniform number (`draw`) and returns the scores with that token set to +inf. Seeded by the global
    torch generator, like torch.multinomial. Its float64 work buffer is kept from step to step: a
    fresh batch x vocabulary buffer each step costs page faults (it took 20-75 ms instead of 7)."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature
        self.buffer: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.buffer is None or self.buffer.shape != scores.shape or self.buffer.device != scores.device:
            self.buffer = torch.empty(scores.shape, dtype=torch.float64, device=scores.device)
        return scores.scatter_(1, draw(scores, self.temperature, out=self.buffer), float("inf"))


def draw(scores: torch.Tensor, temperature: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row, with probability softmax(scores / temperature) (rows x 1, int64): inverse
    transform sampling, the first entry whose cumulative mass exceeds a uniform draw over the row's
    total mass. In float64, from exp((scores - max) / temperature): no row over- or underflows, -inf
    entries have no mass. `out`: a float64 buffer of scores' shape to work in."""
    cdf = torch.empty(scores.shape, dtype=torch.float64, device=scores.device) if out is None else out
    cdf.copy_(scores)
    cdf.sub_(cdf.amax(-1, keepdim=True))
    if temperature != 1.0:
        cdf.div_(temperature)
    cdf.exp_().cumsum_(-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()):  # as torch.multinomial refuses such rows
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    u = torch.rand(total.shape, dtype=torch.float64, device=scores.device) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # u < total: never past the last likely token
    return torch.searchsorted(cdf, u, right=True)


DECODE_ATTENTION = "traitloop_decode"


@contextmanager
def decode_attention(model) -> Iterator[None]:
    """Run one-query (decode) attention steps as two batched matmuls while generating.

    On the measured CPU (2-core AMD EPYC with AVX512-BF16, no AMX), SDPA's fused kernel took 1.6-3.3 ms
    for one decode step of one layer at batch 64 in bf16, the two matmuls 0.5 ms. The prompt (more than
    one query per row) still goes through SDPA, with the same masks. Only a model on the CPU that uses
    "sdpa" is switched, and only for the duration of the call."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(getattr(target, "config", None), "_attn_implementation", None)
    if not FAST_DECODE_ATTENTION or before != "sdpa" or not _on_cpu(model) or not hasattr(target, "set_attn_implementation"):
        yield
        return
    _register_decode_attention()
    target.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        target.set_attn_implementation(before)


def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention_forward)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)  # the masks SDPA gets


def decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """A transformers attention function: SDPA for a prompt, two matmuls for one query per row. Key and
    value heads are shared by groups of query heads (GQA): a group's queries are stacked as the rows of
    one matmul against their key head (as transformers' pack_gqa does for SDPA), without copying the
    cache. Scores are rounded to the model's dtype before the fp32 softmax, as in transformers' eager
    attention. Anything unusual (soft-capping, position bias, sinks, a float mask) goes to SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    unusual = any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux", "sinks")) or kwargs.get("output_attentions")
    if query.shape[2] != 1 or module.training or dropout or unusual or (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:  # bool, True = attend; [batch, 1, 1, keys] broadcasts over the heads
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [batch, kv_heads, group, dim]
    return out.reshape(batch, 1, heads, dim), None
