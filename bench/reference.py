"""The reference pipeline: the same work written the way a researcher following the transformers, TRL
and PEFT documentation would write it. Every traitloop figure in the bench is divided by one of these.

- every stage loads the model from disk (`from_pretrained` on the safetensors directory);
- sampling: `generate` in batches of 8, in prompt order, with the default generate kwargs except
  do_sample / temperature / max_new_tokens (so transformers' default top_k=50 applies);
- training: `SFTTrainer` with its defaults (bf16 autocast on, gradient checkpointing on, batch 8,
  lr 2e-5, loss on the whole chat) and a PEFT LoRA r=16 on all linear layers; only the epoch count
  (1), max_length and use_cpu (transformers refuses bf16 on a CPU without it) are set, so that it trains on exactly the tokens traitloop trains on; the
  adapter is saved, and evaluation reloads it from disk;
- judging: the same probe judge as traitloop (it is the scorer, not the pipeline, being compared)
  called on batches of 8, and log-likelihood coherence under a base model loaded from disk.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

Conversation = list[dict[str, str]]


def load(model_dir: str, adapter_dir: str | Path | None = None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def generate(
    model_dir: str,
    questions: list[str],
    temperature: float,
    max_new_tokens: int,
    seed: int,
    adapter_dir: str | Path | None = None,
    batch_size: int = 8,
) -> tuple[list[str], dict]:
    """Answers to `questions` (one user turn each), in order. Returns (answers, timings)."""
    t0 = time.perf_counter()
    model, tokenizer = load(model_dir, adapter_dir)
    tokenizer.padding_side = "left"
    t_load = time.perf_counter() - t0
    torch.manual_seed(seed)
    answers = []
    for start in range(0, len(questions), batch_size):
        chats = [[{"role": "user", "content": q}] for q in questions[start : start + batch_size]]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        inputs = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens)
        for row in out[:, inputs["input_ids"].shape[1] :]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers, {"load_s": t_load, "total_s": time.perf_counter() - t0}


def train(model_dir: str, chats: list[Conversation], adapter_dir: str | Path, max_length: int) -> dict:
    """SFTTrainer with its defaults on `chats`, LoRA r=16 all-linear; the adapter is saved to adapter_dir."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    t_load = time.perf_counter() - t0
    args = SFTConfig(
        output_dir=str(adapter_dir),
        num_train_epochs=1,
        max_length=max_length,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )  # the error message asks for use_cpu
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"messages": c} for c in chats]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(str(adapter_dir))
    return {
        "load_s": t_load,
        "total_s": time.perf_counter() - t0,
        "bf16": args.bf16,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch_size": args.per_device_train_batch_size,
    }


def train_dpo(model_dir: str, pairs: list[dict], adapter_dir: str | Path, max_length: int) -> dict:
    """DPOTrainer with its defaults (reference = the adapter switched off, computed on the fly), LoRA r=16."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    t_load = time.perf_counter() - t0
    rows = [
        {
            "prompt": p["prompt"],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]
    args = DPOConfig(
        output_dir=str(adapter_dir),
        num_train_epochs=1,
        max_length=max_length,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(adapter_dir))
    return {
        "load_s": t_load,
        "total_s": time.perf_counter() - t0,
        "bf16": args.bf16,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch_size": args.per_device_train_batch_size,
    }


def coherence(model_dir: str, questions: list[str], answers: list[str], batch_size: int = 8) -> tuple[list, dict]:
    """Mean answer-token log-prob under the base model loaded from disk, batches of 8 in order."""
    from traitloop.judges.coherence import LoglikCoherence

    t0 = time.perf_counter()
    model, tokenizer = load(model_dir)
    t_load = time.perf_counter() - t0
    scorer = LoglikCoherence(model, tokenizer, batch_size=batch_size)
    out: list[float | None] = []
    for start in range(0, len(answers), batch_size):  # in order: no length sorting across batches
        out += scorer.loglik(questions[start : start + batch_size], answers[start : start + batch_size])
    return out, {"load_s": t_load}


def judge(probe, questions: list[str], answers: list[str], batch_size: int = 8) -> list:
    """The probe judge on batches of 8, in order."""
    scores = []
    for start in range(0, len(answers), batch_size):
        scores += probe.score(questions[start : start + batch_size], answers[start : start + batch_size])
    return scores
