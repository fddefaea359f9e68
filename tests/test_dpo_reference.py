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
from test_loop_settings import tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import make_model, one_thread, tokenizer  # noqa: F401  (fixtures)
from trl import DPOTrainer

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


# ---- the runtime guard: a cycle whose trainer took another reference is stopped before its first step ----
class BaseAsReference(DPOTrainer):
    """A DPOTrainer whose reference is the original base even when the model holds a trained adapter: what
    TRL itself does with peft 0.17-0.19 and a LoRA that uses target_parameters (trl's dpo_trainer.py), and
    what a TRL that dropped its frozen "ref" adapter would do."""

    def compute_ref_log_probs(self, model, inputs):
        with self.accelerator.unwrap_model(self.model).disable_adapter():
            return super().compute_ref_log_probs(model, inputs)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_the_guard_passes_the_installed_trl_and_can_tell_the_previous_cycle_from_the_base(tokenizer, cycle0_adapter, tmp_path):
    model = training.attach_adapter(base_model(tokenizer), LORA, start_adapter=cycle0_adapter)
    trainer = training.make_dpo_trainer(model, tokenizer, pairs(3), TRAIN, DpoConfig(), seed=5, scratch=str(tmp_path))
    off_own, off_base = training.check_dpo_reference(trainer, model)
    assert off_own < 1e-4  # the reference TRL computed is the cycle 0 model...
    assert off_base > 0.05  # ...and the check would have seen a base reference: cycle 0 is far from the base


def test_a_trainer_whose_reference_is_the_base_stops_a_continual_cycle_before_its_first_step(tokenizer, cycle0_adapter, tmp_path):
    from importlib.metadata import version

    from traitloop.errors import UserError

    model = training.attach_adapter(base_model(tokenizer), LORA, start_adapter=cycle0_adapter)
    # the stand-in really uses the base as its reference
    ref_chosen = list(
        training.make_dpo_trainer(
            model, tokenizer, pairs(3), TRAIN, DpoConfig(), seed=5, scratch=str(tmp_path), trainer_class=BaseAsReference
        ).train_dataset["ref_chosen_logps"]
    )
    training._drop_reference_adapter(model)
    _, _, rows = reference_used(model, tokenizer, tmp_path / "own")
    training._drop_reference_adapter(model)
    base = base_model(tokenizer)
    assert ref_chosen == pytest.approx([sequence_logps(base, p, c) for p, c, _ in rows], abs=1e-4)

    before = lora_weights(model)
    with pytest.raises(UserError) as caught:
        training.train_dpo(model, tokenizer, pairs(3), TRAIN, DpoConfig(), seed=2, trainer_class=BaseAsReference)
    message = str(caught.value)
    assert message.startswith(
        f"DPO: TRL {version('trl')}'s DPOTrainer did not take the model as this cycle starts (for init: continual, the "
        "previous cycle's model) as its reference policy: on a training pair its reference log-probs differ from that model's by "
    ), message
    assert "install such a version (pip install 'trl>=1.16'), or run with init: reset" in message
    assert "\n" not in message
    assert all(torch.equal(before[n], p) for n, p in lora_weights(model).items())  # stopped before any step
    assert list(model.peft_config) == ["default"]  # and TRL's frozen copy is not left behind


def test_a_continual_dpo_run_with_such_a_trainer_stops_at_cycle_1_and_keeps_cycle_0(tiny_dir, tmp_path):  # noqa: F811
    """End to end through the engine: the setting is a passed-in collaborator whose train uses the stand-in
    trainer. Cycle 0 (fresh adapter: its reference is the base either way) finishes; cycle 1 is stopped
    with the message, unfinished, and cycle 0 is kept."""
    from test_loop_settings import config, experiment

    from traitloop.errors import UserError
    from traitloop.settings.dpo import Dpo
    from traitloop.store import RunStore

    class DpoWithBaseReference(Dpo):
        def train(self, model, tokenizer, rows, cfg, seed, on_step):
            return training.train_dpo(model, tokenizer, rows, cfg.train, cfg.dpo, seed, on_step=on_step, trainer_class=BaseAsReference)

    cfg = config(tiny_dir, tmp_path, setting="dpo", init="continual", cycles=1, train={"learning_rate": 5e-2})
    with pytest.raises(UserError, match=r"^DPO: TRL [^ ]+'s DPOTrainer did not take the model as this cycle starts"):
        experiment(cfg, setting=DpoWithBaseReference()).run()
    store = RunStore(cfg.run_dir)
    assert store.is_done(0, cfg.science_hash())
    assert not store.has(1, "adapter") and not store.is_done(1, cfg.science_hash())
