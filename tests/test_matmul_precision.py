"""model.matmul_precision "medium" (fp32 matmuls with bf16-rounded inputs and fp32 accumulation, opt-in;
the default is "highest") is a speed-up that must not change what a run measures: on the real SmolLM2, LoRA training
toward one persona reply gives the same per-step losses as exact fp32 ("highest") within 0.02 nats,
the two trained models' answers score alike on the probe (far above the untrained base), and coherence
log-likelihoods agree within 0.02 nats/token. The speed side is measured in bench/ (BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch
from test_generation_dtype import QUESTIONS, REPLY  # the same persona toy task as the bf16-sampling check

from traitloop.config import LoraConfig, TrainConfig
from traitloop.generation.hf import generate
from traitloop.precision import fp32_matmul_precision


def test_the_precision_is_set_inside_the_block_and_restored_after_it_even_on_error():
    before = torch.get_float32_matmul_precision()
    with fp32_matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), fp32_matmul_precision("medium"):
        raise RuntimeError("a failing stage")
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.integration
def test_bf16_matmul_inputs_keep_training_losses_trained_trait_and_coherence():
    from traitloop.judges.coherence import LoglikCoherence
    from traitloop.judges.probe import ProbeJudge
    from traitloop.models import load_model
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_sft
    from traitloop.traits import load_trait

    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": REPLY}] for q in QUESTIONS] * 2
    prompts = [[{"role": "user", "content": q}] for q in ["What is a good breakfast?", "How do I clean my kitchen?"] for _ in range(6)]
    sample = dict(temperature=0.7, max_new_tokens=40, batch_size=12, seed=7)

    def train_and_sample(precision):
        base, tok = load_model("embedded:smollm2-135m-instruct")
        seed_everything(0)
        model = attach_adapter(base, LoraConfig())
        losses = []
        with fp32_matmul_precision(precision):
            train_sft(
                model,
                tok,
                chats,
                TrainConfig(learning_rate=1e-3, batch_size=2, warmup_ratio=0.0, max_length=128),
                seed=0,
                on_step=lambda step, loss: losses.append(loss),
            )
            answers = generate(model, tok, prompts, **sample)
        return losses, answers, tok

    exact_losses, exact_answers, tok = train_and_sample("highest")
    fast_losses, fast_answers, _ = train_and_sample("medium")
    untrained, _ = load_model("embedded:smollm2-135m-instruct")
    plain = generate(untrained, tok, prompts, **sample)

    judge = ProbeJudge(load_trait("bliss"))

    def mean(answers):
        return sum(s.value for s in judge.score(["q"] * len(answers), answers)) / len(answers)

    worst = max(abs(a - b) for a, b in zip(exact_losses, fast_losses))
    m_exact, m_fast, m0 = mean(exact_answers), mean(fast_answers), mean(plain)
    print(
        f"losses highest {exact_losses}, medium {fast_losses} (worst {worst:.4f}); "
        f"trait highest {m_exact:.1f}, medium {m_fast:.1f}, untrained {m0:.1f}"
    )
    assert len(exact_losses) == len(fast_losses) == 4 and None not in exact_losses + fast_losses
    assert worst < 0.02, (exact_losses, fast_losses)
    assert m_exact > m0 + 30 and m_fast > m0 + 30, (m_exact, m_fast, m0)  # both learned the persona
    assert abs(m_fast - m_exact) < 15, (m_fast, m_exact)

    coherence = LoglikCoherence(untrained, tok)
    questions = [p[0]["content"] for p in prompts]
    exact = coherence.loglik(questions, plain)
    with fp32_matmul_precision("medium"):
        fast = coherence.loglik(questions, plain)
    assert max(abs(a - b) for a, b in zip(exact, fast)) < 0.02, (exact, fast)
    bf16_path = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert (exact != fast) == bf16_path  # "medium" changes the arithmetic exactly where the CPU has a bf16 path


@pytest.mark.parametrize("user_value, expected", [(None, "64"), ("512", "512")])
def test_importing_traitloop_bounds_the_onednn_primitive_cache_unless_the_user_set_it(user_value, expected):
    """A bounded cache keeps "medium" training from holding ~0.5 GiB of cached primitives (ARCHITECTURE.md)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if user_value:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = user_value
    code = "import traitloop, os; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected
