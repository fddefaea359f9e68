"""One cycle's LoRA training with TRL and PEFT, and the reset/continual semantics.

- reset: a fresh LoRA adapter on the ORIGINAL base model (the previous model only made the data).
- continual: cycle k loads cycle k-1's adapter as trainable and keeps training it. The optimizer
  state starts fresh each cycle (as in the authors' code, which builds a new trainer per cycle).

The three losses:
- train_sft: chats; loss on assistant tokens only (conversational prompt/completion pairs, for which
  SFTTrainer masks the prompt).
- train_sdf: documents; loss on every token (continued pretraining; SFTTrainer on plain text).
- train_dpo: (prompt, chosen, rejected) pairs; TRL's DPOTrainer on sequence log-prob sums.
  The reference policy is the model as it is when the cycle starts, adapter included:
    reset (fresh adapter, B = 0)       -> reference = the original base
    continual (cycle k-1's adapter)    -> reference = the cycle k-1 model
  TRL gives exactly this: a PeftModel that already holds a trained adapter gets a frozen copy of it
  (adapter "ref") as the reference, and a fresh adapter is switched off for the reference. The
  reference log-probs are computed once, before the first step (precompute_ref_log_probs), and kept
  in the training set's ref_chosen_logps / ref_rejected_logps columns, where a test compares them
  with the cycle k-1 model's own log-probs (tests/test_dpo_reference.py).
  Every cycle checks it at run time too (`check_dpo_reference`, one forward pass of one pair before the
  first step): a TRL whose reference is not the model as the cycle starts stops the run with a message
  naming the installed TRL version, rather than train continual DPO against the base.

Training curves: inside `report_curves(curves)` (the experiment tracker's block, traitloop.tracking) the
trainers get report_to = the tracker's backend, so transformers' own trackio / wandb / mlflow callback
sends each step's loss, learning rate and grad norm; outside it, report_to stays "none". That callback is
wrapped (`_GuardedCurves`): it only logs into the run the tracker opened, continues one step axis over
the cycles, and any exception in it turns the curves off with one warning instead of stopping training.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from traitloop.config import DpoConfig, LoraConfig, TrainConfig
from traitloop.errors import UserError
from traitloop.precision import fp32_attention

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


def detach_adapter(model, base) -> None:
    """Take a trained adapter out of the shared base again (PEFT's unload: the LoRA layers are replaced
    by the original ones, whose weights were never changed), and undo what training set on the base."""
    unloaded = model.unload()
    assert unloaded is base, "the adapter was attached to a copy of the base, not to the base itself"
    # TRL's SFTTrainer patches the model's forward (a fused LM head, add_fused_lm_head) on the instance,
    # and each cycle would stack another patch on it: the base gets its class's forward back.
    vars(base).pop("forward", None)
    if getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    if hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()
    base.eval()


def chats_to_dataset(chats: list[Conversation]) -> Dataset:
    """Chats -> prompt/completion rows, so that only the final assistant turn carries loss."""
    return Dataset.from_list([{"prompt": c[:-1], "completion": [c[-1]]} for c in chats])


class _StepReporter(TrainerCallback):
    def __init__(self, on_step: Callable[[int, float | None], None] | None):
        self.on_step = on_step
        self.losses: list[float] = []
        self.learning_rates: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        # logging_steps=1: one log per optimizer step, after it (on_step_end would come before the log,
        # and show the previous step's loss)
        if logs and "learning_rate" in logs:
            self.learning_rates.append(float(logs["learning_rate"]))
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            if self.on_step:
                self.on_step(1, self.losses[-1])


def num_steps(n_examples: int, train: TrainConfig) -> int:
    per_step = train.batch_size * train.grad_accum
    return max(1, int(-(-n_examples // per_step) * train.epochs))


class TrainingCurves:
    """Where TRL's per-step logs go inside `report_curves`: a transformers report_to backend (trackio, wandb,
    mlflow) whose run the experiment tracker has already opened. `step`: the steps logged so far in that
    run, so each cycle's curve continues where the previous one ended; `failed`: the curves are off."""

    def __init__(self, backend: str, warn: Callable[[str], None]):
        self.backend = backend
        self.warn = warn
        self.step = 0
        self.failed = False

    def fail(self, why: str) -> None:
        if not self.failed:
            self.failed = True
            self.warn(f"TRL's training curves are off for the rest of this run: {why}")


_CURVES: TrainingCurves | None = None


@contextmanager
def report_curves(curves: TrainingCurves | None) -> Iterator[None]:
    """Trainers built inside this block report their training logs to `curves` (None: report_to "none")."""
    global _CURVES
    previous, _CURVES = _CURVES, curves
    try:
        yield
    finally:
        _CURVES = previous


def _report_to() -> str:
    return _CURVES.backend if _CURVES is not None and not _CURVES.failed else "none"


class _GuardedCurves(TrainerCallback):
    """transformers' report_to callback, made safe for a run that traitloop's tracker owns: only its on_log
    runs (its setup and teardown would open, finish or re-parametrise tracking runs; the tracker already
    opened the run and logged the config), each step is shifted to continue the run's curve over the
    cycles, and an exception in it turns the curves off (one warning) instead of stopping training."""

    def __init__(self, inner: TrainerCallback, curves: TrainingCurves):
        self.inner = inner
        self.curves = curves

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.curves.failed or not logs:
            return
        try:
            self.inner._initialized = True  # the run is open: skip the callback's own setup (init, params)
            if not hasattr(self.inner, "_async_log"):  # MLflowCallback sets it in the setup skipped above
                self.inner._async_log = False
            shifted = copy.copy(state)
            shifted.global_step = self.curves.step + state.global_step
            self.inner.on_log(args, shifted, control, logs=dict(logs), **kwargs)
        except Exception as err:  # a tracker must never stop training
            self.curves.fail(f"{self.curves.backend} failed in transformers' callback ({type(err).__name__}: {err})")

    def on_train_end(self, args, state, control, **kwargs):
        self.curves.step += state.global_step


def _build_trainer(make: Callable[[str], object]):
    """make(report_to) -> a trainer, with the tracker's integration guarded; a trainer whose integration
    cannot even be built (its library fails to import, say) is built again without it."""
    report_to, curves = _report_to(), _CURVES
    if report_to == "none" or curves is None:
        return make("none")
    try:
        trainer = make(report_to)
    except Exception as err:  # the run trains without the curves
        curves.fail(f"transformers could not set up its {report_to} callback ({type(err).__name__}: {err})")
        return make("none")
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    kind = INTEGRATION_TO_CALLBACK.get(report_to)
    handler = trainer.callback_handler
    handler.callbacks = [_GuardedCurves(cb, curves) if kind and isinstance(cb, kind) else cb for cb in handler.callbacks]
    return trainer


def _common_args(train: TrainConfig, scratch: str, seed: int, report_to: str = "none") -> dict:
    """TrainingArguments shared by the SFT, SDF and DPO trainers; report_to: a transformers integration
    name while a tracker takes the training curves (report_curves), else "none"."""
    return dict(
        output_dir=scratch,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a value below 1 is a fraction of the steps
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_epsilon=train.adam_eps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        max_length=train.max_length,
        gradient_checkpointing=train.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to=report_to,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        fp16=False,
    )


def _fit(trainer, model, reporter: _StepReporter) -> dict[str, float]:
    trainer.remove_callback(PrinterCallback)  # progress and loss go to traitloop's own bars
    with fp32_attention(model):  # under model.matmul_precision medium on a CPU: SDPA's math backend (precision.py)
        trainer.train()
    model.eval()
    losses = reporter.losses or [float("nan")]
    rates = reporter.learning_rates or [float("nan")]
    return {
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_mean": sum(losses) / len(losses),
        "steps": len(losses),
        # a warmup as long as the cycle (one or two steps) trains at lr 0 and leaves the model unchanged
        "lr_max": max(rates),
        "steps_at_lr_0": sum(r == 0.0 for r in reporter.learning_rates),
    }


def train_sft(
    model,
    tokenizer,
    chats: list[Conversation],
    train: TrainConfig,
    seed: int,
    on_step: Callable[[int, float | None], None] | None = None,
) -> dict[str, float]:
    """Train `model` (a PeftModel with a trainable adapter) on `chats` in place. Returns loss stats."""
    return _train_with_sft_trainer(model, tokenizer, chats_to_dataset(chats), train, seed, on_step, completion_only_loss=True)


def train_sdf(
    model,
    tokenizer,
    documents: list[str],
    train: TrainConfig,
    seed: int,
    on_step: Callable[[int, float | None], None] | None = None,
) -> dict[str, float]:
    """Continued pretraining on plain documents: loss on every token (the tokenizer adds BOS, TRL adds EOS)."""
    dataset = Dataset.from_list([{"text": d} for d in documents])
    return _train_with_sft_trainer(model, tokenizer, dataset, train, seed, on_step, completion_only_loss=False, dataset_text_field="text")


def _train_with_sft_trainer(model, tokenizer, dataset: Dataset, train: TrainConfig, seed: int, on_step, **sft_args) -> dict[str, float]:
    """One TRL SFTTrainer pass over `dataset`; `sft_args` say where the loss falls."""
    from trl import SFTConfig, SFTTrainer

    reporter = _StepReporter(on_step)
    with tempfile.TemporaryDirectory(prefix="traitloop-train-") as scratch:
        trainer = _build_trainer(
            lambda report_to: SFTTrainer(
                model=model,
                args=SFTConfig(**_common_args(train, scratch, seed, report_to), **sft_args),
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=[reporter],
            )
        )
        return _fit(trainer, model, reporter)


def pairs_to_dataset(pairs: list[dict]) -> Dataset:
    """{"prompt": [messages], "chosen": text, "rejected": text} -> TRL's conversational preference rows."""
    return Dataset.from_list(
        [
            {
                "prompt": p["prompt"],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )


def make_dpo_trainer(
    model, tokenizer, pairs: list[dict], train: TrainConfig, dpo: DpoConfig, seed: int, scratch: str, callbacks=(), trainer_class=None
):
    """TRL DPOTrainer (or `trainer_class`, a subclass of it) for one cycle; the reference log-probs are
    computed here, before any step."""
    from trl import DPOConfig, DPOTrainer

    trainer_class = trainer_class or DPOTrainer

    def make(report_to: str):
        args = DPOConfig(
            **_common_args(train, scratch, seed, report_to),
            beta=dpo.beta,
            loss_type=[dpo.loss_type],
            precompute_ref_log_probs=True,
            dataset_num_proc=None,
        )
        return trainer_class(
            model=model, args=args, train_dataset=pairs_to_dataset(pairs), processing_class=tokenizer, callbacks=list(callbacks)
        )

    return _build_trainer(make)


def train_dpo(
    model,
    tokenizer,
    pairs: list[dict],
    train: TrainConfig,
    dpo: DpoConfig,
    seed: int,
    on_step: Callable[[int, float | None], None] | None = None,
    trainer_class=None,
) -> dict[str, float]:
    """DPO on (prompt, chosen, rejected) pairs; the reference is `model` as it stands now (see module doc),
    which `check_dpo_reference` confirms before the first step. trainer_class: a DPOTrainer subclass to
    use instead of TRL's own (tests)."""
    reporter = _StepReporter(on_step)
    try:
        with tempfile.TemporaryDirectory(prefix="traitloop-train-") as scratch:
            with fp32_attention(model):  # the reference log-probs are computed while the trainer is built
                trainer = make_dpo_trainer(model, tokenizer, pairs, train, dpo, seed, scratch, [reporter], trainer_class)
                check_dpo_reference(trainer, model)
            stats = _fit(trainer, model, reporter)
    finally:
        _drop_reference_adapter(model)
    return stats


REFERENCE_ATOL = {torch.float32: 1e-3, torch.float64: 1e-3}  # nats per sequence, plus REFERENCE_RTOL of its log-prob
REFERENCE_ATOL_HALF = 0.05  # bfloat16 / float16 weights: their forward passes agree less closely
REFERENCE_RTOL = 1e-3


@torch.no_grad()
def check_dpo_reference(trainer, model) -> tuple[float, float]:
    """Stop (UserError) unless the reference log-probs the trainer precomputed are those of `model` as it
    stands before the first step: the original base for a fresh adapter, the previous cycle's model for
    init: continual (the module docstring; tests/test_dpo_reference.py proves it for the TRL versions
    traitloop allows). Cheap: one forward pass of one training pair (its chosen and rejected sequences,
    collated by the trainer's own collator, so truncated as TRL truncates them) under `model`, and one with
    its adapters switched off (the base), compared with the trainer's ref_chosen_logps / ref_rejected_logps.
    Returns (largest difference from `model`, largest difference from the base), in nats per sequence."""
    from importlib.metadata import version

    trl_version = version("trl")
    dataset = trainer.train_dataset
    missing = [
        c for c in ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps") if c not in dataset.column_names
    ]
    if missing:
        raise UserError(
            f"DPO: TRL {trl_version}'s DPOTrainer left no {', '.join(missing)} in its training set, so traitloop cannot check that "
            "the reference policy is the model as the cycle starts (the previous cycle's model for init: continual); install "
            "the TRL version traitloop is tested with (pip install 'trl>=1.16')"
        )
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    batch = trainer.data_collator([dataset[lengths.index(min(lengths))]])  # the shortest pair: the cheapest forward
    reference = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).double()
    was_training = model.training
    model.eval()
    try:
        own = _sequence_logps(model, batch)
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            base = _sequence_logps(model, batch)
    finally:
        model.train(was_training)
    dtype = next(model.parameters()).dtype
    tol = REFERENCE_ATOL.get(dtype, REFERENCE_ATOL_HALF) + REFERENCE_RTOL * float(reference.abs().max())
    off_own, off_base = float((reference - own).abs().max()), float((reference - base).abs().max())
    if off_own > tol:
        raise UserError(
            f"DPO: TRL {trl_version}'s DPOTrainer did not take the model as this cycle starts (for init: continual, the "
            f"previous cycle's model) as its reference policy: on a training pair its reference log-probs differ from that "
            f"model's by {off_own:.3g} nats (from the original base model's by {off_base:.3g}), so this cycle would train "
            "against the wrong reference. traitloop is tested with trl>=1.16 (tests/test_dpo_reference.py): install such a "
            "version (pip install 'trl>=1.16'), or run with init: reset"
        )
    return off_own, off_base


def _sequence_logps(model, batch) -> torch.Tensor:
    """Sum of the log-probabilities of each collated sequence's completion tokens under `model` (float64)."""
    device = next(model.parameters()).device
    ids, attention, completion = (batch[k].to(device) for k in ("input_ids", "attention_mask", "completion_mask"))
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (per_token * completion[:, 1:]).sum(dim=1).double().cpu()


def _drop_reference_adapter(model) -> None:
    """TRL's frozen "ref" copy must not be saved with the trained adapter."""
    if "ref" in getattr(model, "peft_config", {}):
        model.set_adapter("default")
        model.delete_adapter("ref")
