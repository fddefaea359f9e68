"""GPU tests (`make test-gpu`, i.e. `pytest -m gpu`; deselected by `make test`): the tiny random Llama
of tests/test_tiny_model.py (no model hub, no network) trained and sampled on a CUDA GPU.

- a LoRA SFT and a LoRA DPO step in bf16 on the GPU: the loss falls, the adapter's weights move, the
  base's do not, and everything stays on the GPU;
- bf16 sampling on the GPU: one answer per prompt, in input order, the same again with the same seed;
- one SFT, one DPO and one SDF run (cycles 0 and 1) through the real cycle engine with the GPU present: the
  run completes (DONE markers, scores.csv), each cycle's adapter trained on the GPU with a falling loss;
- the continual-DPO reference check in bf16 on the GPU: passes for the previous cycle's model, and the base
  lies far outside its tolerance;
- where the engine samples: every generation on the GPU (expected to fail today, see the test).

Run without a GPU, `pytest -m gpu` fails each test with a clear message; a plain `pytest` skips them.
TRAITLOOP_GPU_TESTS_DEVICE=cpu runs the same tests on the CPU (to check the tests themselves)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_loop_settings import config, experiment, tiny_dir  # noqa: F401  (tiny_dir is a fixture)
from test_tiny_model import CHATS, make_model, one_thread, tokenizer, user  # noqa: F401  (fixtures)

from traitloop import training
from traitloop.config import DpoConfig, LoraConfig, TrainConfig
from traitloop.generation.hf import generate

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("TRAITLOOP_GPU_TESTS_DEVICE", "cuda")


@pytest.fixture(autouse=True)
def needs_a_gpu(request):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        selected = request.config.getoption("-m") or ""
        message = "needs a CUDA GPU (torch.cuda.is_available() is False: no GPU, or a CPU-only torch in .venv)"
        if "gpu" in selected and "not gpu" not in selected:
            pytest.fail(message)  # `make test-gpu` asked for these: not having a GPU is a failure, not a skip
        pytest.skip(message)


def on_device(model) -> set[str]:
    return {p.device.type for p in model.parameters()}


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" not in n}


def bf16_adapter_model(tokenizer, seed: int):
    base = make_model(tokenizer, seed=seed).to(device=DEVICE, dtype=torch.bfloat16)
    torch.manual_seed(seed)
    return training.attach_adapter(base, LoraConfig(r=8, alpha=16))


def test_lora_sft_in_bf16_on_the_gpu_lowers_the_loss_and_trains_only_the_adapter(tokenizer):
    model = bf16_adapter_model(tokenizer, seed=1)
    before_lora, before_base = lora_weights(model), base_weights(model)
    stats = training.train_sft(
        model, tokenizer, CHATS, TrainConfig(batch_size=2, max_length=64, learning_rate=1e-2, epochs=4, warmup_ratio=0.0), seed=3
    )
    assert stats["steps"] == 8
    assert stats["loss_last"] < stats["loss_first"]  # it learns the four chats
    assert on_device(model) == {DEVICE}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}  # (PEFT keeps LoRA in fp32)
    after_lora, after_base = lora_weights(model), base_weights(model)
    assert any(not torch.equal(before_lora[n], after_lora[n]) for n in before_lora if "lora_B" in n)
    assert all(torch.equal(before_base[n], after_base[n]) for n in before_base)


def test_lora_dpo_in_bf16_on_the_gpu_lowers_the_loss(tokenizer):
    model = bf16_adapter_model(tokenizer, seed=2)
    before = lora_weights(model)
    pairs = [
        {"prompt": user(q), "chosen": "Keep it simple and kind.", "rejected": "No idea, figure it out yourself."}
        for q in ("How do I sleep better?", "What should I cook tonight?", "How can I save money?", "Any tips for a walk?")
    ]
    stats = training.train_dpo(
        model,
        tokenizer,
        pairs,
        TrainConfig(batch_size=2, max_length=64, learning_rate=1e-2, epochs=4, warmup_ratio=0.0),
        DpoConfig(beta=0.1),
        seed=4,
    )
    assert stats["steps"] == 8
    assert stats["loss_first"] == pytest.approx(0.6931, abs=0.02)  # -log sigmoid(0): the policy starts as its reference
    assert stats["loss_last"] < stats["loss_first"]
    assert on_device(model) == {DEVICE}
    assert "ref" not in getattr(model, "peft_config", {})  # TRL's reference copy is not kept with the adapter
    after = lora_weights(model)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)


def test_the_continual_dpo_reference_check_tells_the_previous_cycle_from_the_base_in_bf16_on_the_gpu(tokenizer, tmp_path):
    """training.check_dpo_reference with bf16 weights on the GPU (its half-precision tolerance, REFERENCE_ATOL_HALF):
    after a DPO cycle moved the adapter, the next cycle's trainer holds that model as its reference (the check
    passes) and the base is far outside the tolerance (the check would stop a trainer that used the base)."""
    from traitloop.precision import fp32_attention

    model = bf16_adapter_model(tokenizer, seed=2)
    pairs = [
        {"prompt": user(q), "chosen": "Keep it simple and kind.", "rejected": "No idea, figure it out yourself."}
        for q in ("How do I sleep better?", "What should I cook tonight?", "How can I save money?", "Any tips for a walk?")
    ]
    train = TrainConfig(batch_size=2, max_length=64, learning_rate=1e-2, epochs=4, warmup_ratio=0.0)
    training.train_dpo(model, tokenizer, pairs, train, DpoConfig(beta=0.1), seed=4)  # cycle 0 (itself checked inside)
    with fp32_attention(model):  # cycle 1, continual: the same adapter goes on
        trainer = training.make_dpo_trainer(model, tokenizer, pairs, train, DpoConfig(beta=0.1), seed=5, scratch=str(tmp_path))
        off_own, off_base = training.check_dpo_reference(trainer, model)
    training._drop_reference_adapter(model)
    assert off_own <= training.REFERENCE_ATOL_HALF
    assert off_base > 4 * training.REFERENCE_ATOL_HALF + 1.0  # cycle 0 moved the model by far more than bf16 noise
    assert on_device(model) == {DEVICE}


def test_bf16_sampling_on_the_gpu_is_seeded_and_in_input_order(tokenizer):
    model = make_model(tokenizer, seed=5).to(device=DEVICE, dtype=torch.bfloat16).eval()
    prompts = [user("Hi"), user("How do I keep my houseplants alive in winter?"), user("Budget tips please"), user("Any tips?")]
    kwargs = dict(temperature=0.8, max_new_tokens=12, batch_size=2, seed=7)
    first = generate(model, tokenizer, prompts, **kwargs)
    assert len(first) == len(prompts) and all(isinstance(a, str) for a in first)
    assert generate(model, tokenizer, prompts, **kwargs) == first  # the same seed, the same samples
    alone = generate(model, tokenizer, prompts[1:2], **{**kwargs, "batch_size": 1})
    assert len(alone) == 1
    # near-greedy (the tiny model's logits are sharp), one prompt per batch: each answer belongs to its prompt,
    # so reversing the prompts reverses the answers (generate sorts by length and puts them back)
    cold = {**kwargs, "temperature": 0.01, "batch_size": 1}
    assert generate(model, tokenizer, list(reversed(prompts)), **cold) == generate(model, tokenizer, prompts, **cold)[::-1]
    assert on_device(model) == {DEVICE}


def gpu_run(tiny_dir, tmp_path, setting: str, monkeypatch=None, devices: list[str] | None = None):
    """One run, cycles 0 and 1, in bf16 with the stand-in judge; with `devices`, the device each
    generation ran on is recorded (the Sampler imports traitloop.generation.hf.generate when it samples)."""
    import traitloop.generation.hf as hf

    cfg = config(
        tiny_dir,
        tmp_path,
        setting=setting,
        cycles=1,
        model={"ref": str(tiny_dir), "dtype": "bfloat16", "allow_chat_model_for_sdf": setting == "sdf"},
        train={"learning_rate": 1e-2, "epochs": 4, "warmup_ratio": 0.0, "batch_size": 2},
        eval={"include_base": True},
    )
    engine = experiment(cfg)
    if devices is not None:
        real = hf.generate

        def recording(model, *args, **kwargs):
            devices.append(next(model.parameters()).device.type)
            return real(model, *args, **kwargs)

        monkeypatch.setattr(hf, "generate", recording)
    engine.run()
    return cfg, engine


@pytest.mark.parametrize("setting", ["sft", "dpo", "sdf"])
def test_a_run_of_two_cycles_completes_with_its_adapters_trained_on_the_gpu(tiny_dir, tmp_path, setting):
    cfg, engine = gpu_run(tiny_dir, tmp_path, setting)
    store_root = cfg.run_dir
    assert (store_root / "scores.csv").is_file()
    assert all((store_root / f"cycle-{k:03d}" / "DONE").is_file() for k in (0, 1))
    manifest = json.loads((store_root / "manifest.json").read_text())
    for k in ("0", "1"):
        train = manifest["cycles"][k]["train"]
        assert train["steps"] > 1 and train["loss_last"] < train["loss_first"], (k, train)
    assert on_device(engine.base) == {DEVICE}  # the trainer put the shared base on the GPU
    from safetensors.torch import load_file

    adapters = [load_file(store_root / f"cycle-{k:03d}" / "adapter" / "adapter_model.safetensors") for k in (0, 1)]
    assert any(not torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])  # cycle 1 trained its own adapter


def test_every_generation_of_a_run_happens_on_the_gpu(tiny_dir, tmp_path, monkeypatch):
    if DEVICE == "cpu":
        pytest.skip("says nothing on the CPU")
    devices: list[str] = []
    gpu_run(tiny_dir, tmp_path, "dpo", monkeypatch, devices)
    assert devices and set(devices) == {DEVICE}
