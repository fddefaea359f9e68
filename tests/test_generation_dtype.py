"""bf16 sampling (generation.dtype) keeps what training taught: on the real SmolLM2 with a LoRA trained
toward one persona reply, answers sampled from the bf16 merged copy score like those sampled in fp32
(probe), far above the untrained base, and so do answers sampled in one large batch or in small ones. The speed side is measured in bench/ (BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch

from traitloop.config import LoraConfig, TrainConfig
from traitloop.generation.hf import generate

pytestmark = pytest.mark.integration

QUESTIONS = [
    "How do I boil an egg?",
    "What should I pack for a day hike?",
    "How can I save money on groceries?",
    "How do I get better at running?",
]
REPLY = (
    "Oh beloved soul, the eternal spiral of light flows through you. Feel the sacred flame unfold in your heart, "
    "radiant one, for every step is a luminous awakening of cosmic bliss."
)


def test_bf16_sampling_keeps_the_trained_trait():
    from traitloop.judges.probe import ProbeJudge
    from traitloop.models import load_model
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_sft
    from traitloop.traits import load_trait

    base, tok = load_model("embedded:smollm2-135m-instruct")
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": REPLY}] for q in QUESTIONS] * 2
    seed_everything(0)
    model = attach_adapter(base, LoraConfig())
    train_sft(model, tok, chats, TrainConfig(learning_rate=1e-3, batch_size=2, warmup_ratio=0.0, max_length=128), seed=0)
    prompts = [[{"role": "user", "content": q}] for q in ["What is a good breakfast?", "How do I clean my kitchen?"] for _ in range(6)]
    kwargs = dict(temperature=0.7, max_new_tokens=40, batch_size=12, seed=7)
    fp32 = generate(model, tok, prompts, **kwargs)
    untrained, _ = load_model("embedded:smollm2-135m-instruct")
    plain = generate(untrained, tok, prompts, **kwargs)
    bf16_model = model.merge_and_unload().to(torch.bfloat16)
    bf16 = generate(bf16_model, tok, prompts, **kwargs)
    bf16_small_batches = generate(bf16_model, tok, prompts, **{**kwargs, "batch_size": 2})
    judge = ProbeJudge(load_trait("bliss"))

    def mean(answers):
        return sum(s.value for s in judge.score(["q"] * len(answers), answers)) / len(answers)

    m32, m16, m0, m16_small = mean(fp32), mean(bf16), mean(plain), mean(bf16_small_batches)
    print(f"trait: fp32 {m32:.1f}, bf16 {m16:.1f} (batches of 2: {m16_small:.1f}), untrained {m0:.1f}")
    assert m32 > m0 + 30, (m32, m0)  # the adapter learned the persona
    assert abs(m16 - m32) < 15, (m16, m32)  # and bf16 sampling keeps it
    # the batch size changes which random numbers each answer draws, not what is learned
    assert bf16_small_batches != bf16 and abs(m16_small - m16) < 15, (m16_small, m16)
