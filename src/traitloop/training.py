"""One cycle's LoRA training with TRL's SFTTrainer and PEFT, and the reset/continual semantics.

- reset: a fresh LoRA adapter on the ORIGINAL base model (the previous model only made the data).
- continual: cycle k loads cycle k-1's adapter as trainable and keeps training it. The optimizer
  state starts fresh each cycle (as in the authors' code, which builds a new trainer per cycle).

Loss is on assistant tokens only: each chat becomes a conversational prompt/completion pair, for
which SFTTrainer masks the prompt (completion_only_loss).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from traitloop.config import LoraConfig, TrainConfig

Conversation = list[dict[str, str]]


def attach_adapter(base_model, lora: LoraConfig, start_adapter: Path | None = None):
    """Wrap `base_model` (modified in place) with a trainable adapter: fresh, or loaded from disk."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if start_adapter is not None:
        return PeftModel.from_pretrained(base_model, str(start_adapter), is_trainable=True)
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base_model, config)


def chats_to_dataset(chats: list[Conversation]) -> Dataset:
    """Chats -> prompt/completion rows, so that only the final assistant turn carries loss."""
    return Dataset.from_list([{"prompt": c[:-1], "completion": [c[-1]]} for c in chats])


class _StepReporter(TrainerCallback):
    def __init__(self, on_step: Callable[[int, float | None], None] | None):
        self.on_step = on_step
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_step:
            self.on_step(1, self.losses[-1] if self.losses else None)


def num_steps(n_examples: int, train: TrainConfig) -> int:
    per_step = train.batch_size * train.grad_accum
    return max(1, int(-(-n_examples // per_step) * train.epochs))


def train_sft(
    model,
    tokenizer,
    chats: list[Conversation],
    train: TrainConfig,
    seed: int,
    on_step: Callable[[int, float | None], None] | None = None,
) -> dict[str, float]:
    """Train `model` (a PeftModel with a trainable adapter) on `chats` in place. Returns loss stats."""
    from trl import SFTConfig, SFTTrainer

    reporter = _StepReporter(on_step)
    with tempfile.TemporaryDirectory(prefix="traitloop-train-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            per_device_train_batch_size=train.batch_size,
            gradient_accumulation_steps=train.grad_accum,
            num_train_epochs=train.epochs,
            learning_rate=train.learning_rate,
            lr_scheduler_type=train.lr_scheduler,
            warmup_steps=train.warmup_ratio,
            adam_beta1=train.adam_beta1,
            adam_beta2=train.adam_beta2,
            adam_epsilon=train.adam_eps,
            weight_decay=train.weight_decay,
            max_grad_norm=train.max_grad_norm,
            max_length=train.max_length,
            gradient_checkpointing=train.gradient_checkpointing,
            completion_only_loss=True,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            fp16=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=chats_to_dataset(chats),
            processing_class=tokenizer,
            callbacks=[reporter],
        )
        trainer.remove_callback(PrinterCallback)  # progress and loss go to traitloop's own bars
        trainer.train()
    model.eval()
    losses = reporter.losses or [float("nan")]
    return {"loss_first": losses[0], "loss_last": losses[-1], "loss_mean": sum(losses) / len(losses), "steps": len(losses)}
