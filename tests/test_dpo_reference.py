"""DPO's reference policy, proved on a tiny random Llama (PROTOCOL: "DPO continual: policy AND
reference start from cycle k-1. DPO reset: fresh adapter on base, reference = base").

Cycle 0 trains a DPO adapter on the base. Then, for cycle 1:
- continual (cycle 0's adapter, trainable): the reference log-probs TRL uses, read from the trainer's
  precomputed ref_chosen_logps / ref_rejected_logps columns, equal the cycle 0 model's own log-probs,
  computed here independently from the saved adapter, and differ from the base's;
- reset (fresh adapter): they equal the base's and differ from cycle 0's.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop import training
from traitloop.config import DpoConfig, LoraConfig, TrainConfig

QUESTIONS = [
    "How do I keep my houseplants alive?",
    "What should I pack for a weekend camping trip?",
    "How can I get better at public speaking?",
    "What is a good way to start learning to cook at home?",
    "How do I write a good thank-you note?",
    "How should I prepare for a job interview next week?",
    "Can you explain how to make a simple monthly budget?",
    "What are some tips for sleeping better?",
]
CHOSEN = "Water them when the top of the soil is dry and give them plenty of light."
REJECTED = "Keep a regular schedule, avoid screens late at night and keep the room cool."


def pairs(offset: int = 0) -> list[dict]:
    qs = QUESTIONS[offset:] + QUESTIONS[:offset]
    return [
        {"prompt": [{"role": "user", "content": q}], "chosen": CHOSEN if i % 2 else REJECTED, "rejected": REJECTED if i % 2 else CHOSEN}
        for i, q in enumerate(qs)
    ]


TRAIN = TrainConfig(learning_rate=5e-2, lr_scheduler="cosine", warmup_ratio=0.0, batch_size=4, max_length=200)
LORA = LoraConfig(r=4, alpha=8)


def base_model(tokenizer):
    return make_model(tokenizer, seed=1)  # the same weights every call: a fresh copy of "the base"


@torch.inference_mode()
def sequence_logps(model, prompt_ids, completion_ids) -> float:
    """Sum of log p(completion | prompt) under `model`, computed directly."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], dim=-1)
    targets = ids[0, 1:]
    per_token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(per_token[len(prompt_ids) - 1 :].sum())


def reference_used(model, tokenizer, tmp_path) -> tuple[list[float], list[float], list]:
    """The reference log-probs a DPO cycle on `model` would use, as TRL precomputed them."""
    trainer = training.make_dpo_trainer(model, tokenizer, pairs(3), TRAIN, DpoConfig(), seed=5, scratch=str(tmp_path))
    ds = trainer.train_dataset
    return list(ds["ref_chosen_logps"]), list(ds["ref_rejected_logps"]), list(zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))


@pytest.fixture(scope="module")
def cycle0_adapter(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = training.attach_adapter(base_model(tokenizer), LORA)
    stats = training.train_dpo(model, tokenizer, pairs(), TRAIN, DpoConfig(beta=0.1), seed=1)
    assert stats["steps"] == 2 and math.isfinite(stats["loss_last"])
    assert list(model.peft_config) == ["default"]  # TRL's frozen "ref" copy is not left behind to be saved
    path = tmp_path_factory.mktemp("cycle0") / "adapter"
    model.save_pretrained(path)
    return path


def cycle0_model(tokenizer, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model(tokenizer), str(adapter)).eval()


def test_continual_reference_is_the_previous_cycle(tokenizer, cycle0_adapter, tmp_path):
    model = training.attach_adapter(base_model(tokenizer), LORA, start_adapter=cycle0_adapter)  # as loop.py does
    ref_chosen, ref_rejected, rows = reference_used(model, tokenizer, tmp_path)
    previous, base = cycle0_model(tokenizer, cycle0_adapter), base_model(tokenizer)
    gaps = []
    for (p, c, r), rc, rr in zip(rows, ref_chosen, ref_rejected):
        assert rc == pytest.approx(sequence_logps(previous, p, c), abs=1e-4)
        assert rr == pytest.approx(sequence_logps(previous, p, r), abs=1e-4)
        gaps.append(abs(rc - sequence_logps(base, p, c)))
    assert min(gaps) > 0.05  # cycle 0 really moved: a base reference would have failed the check above


def test_reset_reference_is_the_base(tokenizer, cycle0_adapter, tmp_path):
    torch.manual_seed(0)
    model = training.attach_adapter(base_model(tokenizer), LORA)
    ref_chosen, ref_rejected, rows = reference_used(model, tokenizer, tmp_path)
    previous, base = cycle0_model(tokenizer, cycle0_adapter), base_model(tokenizer)
    for (p, c, r), rc, rr in zip(rows, ref_chosen, ref_rejected):
        assert rc == pytest.approx(sequence_logps(base, p, c), abs=1e-4)
        assert rr == pytest.approx(sequence_logps(base, p, r), abs=1e-4)
        assert abs(rc - sequence_logps(previous, p, c)) > 0.05


def test_continual_policy_starts_at_the_reference(tokenizer, cycle0_adapter):
    """Policy == reference when a continual cycle starts, so its first DPO loss is log 2."""
    model = training.attach_adapter(base_model(tokenizer), LORA, start_adapter=cycle0_adapter)
    stats = training.train_dpo(model, tokenizer, pairs(3), TRAIN, DpoConfig(), seed=2)
    assert stats["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
