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
    with contiguous_lm_head_input(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=special).to(device)
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,  # pure temperature sampling, as in the protocol (transformers would default to 50)
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
