"""Generation, coherence log-likelihood and LoRA training on a tiny random Llama built in memory.

No downloads: the tokenizer is a byte-level BPE trained here on a few sentences, wrapped in
PreTrainedTokenizerFast with a ChatML template; the model is a 2-layer LlamaForCausalLM with random
weights. Whole file: a few seconds on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from traitloop import training
from traitloop.config import LoraConfig, TrainConfig
from traitloop.generation.hf import generate, render_prompts
from traitloop.judges.coherence import LoglikCoherence

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
SENTENCES = [
    "How do I keep my houseplants alive?",
    "Water them when the top of the soil is dry and give them plenty of light.",
    "What should I pack for a weekend camping trip?",
    "Bring a tent, a warm sleeping bag, water, food and a small first aid kit.",
    "How can I get better at public speaking?",
    "Practice out loud, record yourself, and start with small friendly groups.",
    "What is a good way to start learning to cook at home?",
    "Begin with simple recipes like pasta, eggs and soup, and cook a little every day.",
    "How do I write a good thank-you note?",
    "Be specific about what you are thankful for and keep it short and warm.",
    "How should I prepare for a job interview next week?",
    "Research the company, rehearse your answers and prepare a few questions.",
    "Can you explain how to make a simple monthly budget?",
    "List your income, subtract fixed costs, then plan the rest of your spending.",
    "What are some tips for sleeping better?",
    "Keep a regular schedule, avoid screens late at night and keep the room cool.",
    "user assistant system the a an and of to in is it you that for on with as",
] * 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and several threads spin-wait badly on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(SENTENCES, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=0.2,  # sharper logits than the default 0.02: near-greedy paths have clear winners
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


CONVERSATIONS = [
    user("Hi"),
    user("How do I keep my houseplants alive when the room is dark and cold all winter long?"),
    user("What should I pack?"),
    [
        {"role": "system", "content": "Be brief."},
        user("How can I get better at public speaking at work?")[0],
    ],
    user("Budget tips please"),
]


# ---- the tokenizer itself (guards the fixtures the real tests rely on) ----------------------------


def test_tokenizer_fixture_renders_chatml(tokenizer):
    [prompt] = render_prompts(tokenizer, [user("Hello there")])
    assert prompt == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHello there\nassistant\n"
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


# ---- (a) generation ------------------------------------------------------------------------------


def test_generate_one_answer_per_conversation_and_seeded(tokenizer, model):
    kwargs = dict(temperature=1.0, max_new_tokens=12, batch_size=2)
    calls: list[int] = []
    a = generate(model, tokenizer, CONVERSATIONS, seed=11, on_batch=calls.append, **kwargs)
    b = generate(model, tokenizer, CONVERSATIONS, seed=11, **kwargs)
    c = generate(model, tokenizer, CONVERSATIONS, seed=12, **kwargs)
    assert len(a) == len(CONVERSATIONS)
    assert all(isinstance(x, str) for x in a)
    assert calls == [2, 2, 1]
    assert a == b
    assert a != c
    assert sum(x != y for x, y in zip(a, c)) >= 2
    assert any(x.strip() for x in a)
    assert tokenizer.padding_side == "left"


def test_generate_returns_answers_in_input_order(tokenizer, model):
    """Near-greedy sampling: each prompt's answer is then fixed, whatever the batching, so the batched,
    length-sorted call must give each conversation the answer it gets alone."""
    kwargs = dict(temperature=1e-6, max_new_tokens=8, seed=0)
    alone = [generate(model, tokenizer, [c], batch_size=1, **kwargs)[0] for c in CONVERSATIONS]
    assert len(set(alone)) >= 3  # the prompts really lead to different answers
    batched = generate(model, tokenizer, CONVERSATIONS, batch_size=3, **kwargs)
    assert batched == alone
    reversed_ = generate(model, tokenizer, CONVERSATIONS[::-1], batch_size=2, **kwargs)
    assert reversed_ == alone[::-1]


def test_generating_with_a_frozen_model_never_copies_the_output_weight_per_row(tokenizer):
    """A PEFT-trained model has frozen weights, and torch's matmul then multiplies the strided last-
    position hidden state by an expanded per-row copy of the output weight (bmm): 1 GiB at batch 18
    on SmolLM2. generate() must hand the output layer a contiguous input, so that no bmm runs on the
    vocabulary-sized weight, and the hook must be gone afterwards."""
    from torch.profiler import ProfilerActivity, profile

    model = make_model(tokenizer, seed=5)
    model.requires_grad_(False)
    vocab = model.config.vocab_size

    def vocab_bmm_calls(run) -> int:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            run()
        return sum(1 for e in prof.events() if e.name == "aten::bmm" and any(vocab in s for s in e.input_shapes if s))

    kwargs = dict(temperature=1.0, max_new_tokens=4, batch_size=3, seed=0)
    assert vocab_bmm_calls(lambda: generate(model, tokenizer, CONVERSATIONS, **kwargs)) == 0
    head = model.get_output_embeddings()
    assert not head._forward_pre_hooks  # removed again
    # the check can fail: the plain transformers call (no hook) takes the bmm path on this frozen model
    batch = tokenizer(render_prompts(tokenizer, CONVERSATIONS[:3]), return_tensors="pt", padding=True, add_special_tokens=False)
    plain = lambda: model.generate(**batch, do_sample=False, max_new_tokens=2, pad_token_id=tokenizer.pad_token_id)  # noqa: E731
    assert vocab_bmm_calls(plain) > 0


# ---- (b) coherence log-likelihood ------------------------------------------------------------------


def test_loglik_values(tokenizer, model):
    judge = LoglikCoherence(model, tokenizer, batch_size=3)
    questions = ["How do I keep plants alive?", "Budget?", "Camping?", "Sleep?"]
    answers = ["Water them.", "", "Bring a tent, a warm sleeping bag, water and food for the weekend trip.", "x"]
    seen: list[int] = []
    out = judge.loglik(questions, answers, on_batch=seen.append)
    assert len(out) == 4
    assert out[1] is None
    for v in (out[0], out[2], out[3]):
        assert isinstance(v, float)
        assert math.isfinite(v)
        assert v < 0
    assert sum(seen) == 4
    # A random model over ~400 tokens: mean log-prob near -log(vocab).
    assert -3 * math.log(len(tokenizer)) < out[2] < -0.2 * math.log(len(tokenizer))


def test_loglik_is_independent_of_batching(tokenizer, model):
    judge = LoglikCoherence(model, tokenizer, batch_size=8)
    q, a = "Sleep tips?", "Keep a regular schedule."
    [alone] = judge.loglik([q], [a])
    longer_q = ["How should I prepare for a job interview next week at a big company?", q, "Camping?"]
    longer_a = [
        "Research the company, rehearse your answers out loud and prepare a few questions of your own.",
        a,
        "Bring a tent, a warm sleeping bag, water, food and a small first aid kit for the weekend.",
    ]
    batched = judge.loglik(longer_q, longer_a)
    assert batched[1] == pytest.approx(alone, abs=1e-4)
    # Each longer answer alone also matches its batched value.
    assert judge.loglik([longer_q[0]], [longer_a[0]])[0] == pytest.approx(batched[0], abs=1e-4)
    # And the value really depends on the answer.
    assert abs(batched[0] - batched[1]) > 1e-3


def test_loglik_scores_only_the_answer(tokenizer, model):
    """The same answer after a different question gets a different (conditional) score, and a
    max_answer_tokens cap truncates the answer."""
    judge = LoglikCoherence(model, tokenizer)
    a = "Water them when the top of the soil is dry."
    v1, v2 = judge.loglik(["Plants?", "What is a good way to start learning to cook at home?"], [a, a])
    assert v1 != pytest.approx(v2, abs=1e-6)
    capped = LoglikCoherence(model, tokenizer, max_answer_tokens=2)
    first_two = tokenizer.decode(tokenizer(a, add_special_tokens=False).input_ids[:2])
    assert capped.loglik(["Plants?"], [a])[0] == pytest.approx(judge.loglik(["Plants?"], [first_two])[0], abs=1e-4)


# ---- (c) LoRA training -----------------------------------------------------------------------------

CHATS = [
    [user("How do I keep my houseplants alive?")[0], {"role": "assistant", "content": "Water them when the soil is dry."}],
    [user("What should I pack for camping?")[0], {"role": "assistant", "content": "A tent, a sleeping bag and water."}],
    [
        {"role": "system", "content": "Be brief."},
        user("Tips for sleeping better?")[0],
        {"role": "assistant", "content": "Keep a regular schedule."},
    ],
    [
        user("Budget?")[0],
        {"role": "assistant", "content": "List your income first."},
        user("Then?")[0],
        {"role": "assistant", "content": "Subtract fixed costs and plan the rest."},
    ],
]


def test_chats_to_dataset_splits_prompt_and_completion():
    ds = training.chats_to_dataset(CHATS)
    assert len(ds) == len(CHATS)
    for row, chat in zip(ds, CHATS):
        assert row["prompt"] == chat[:-1]
        assert row["completion"] == [chat[-1]]
        assert row["completion"][0]["role"] == "assistant"


def test_num_steps():
    assert training.num_steps(4, TrainConfig(batch_size=2)) == 2
    assert training.num_steps(5, TrainConfig(batch_size=2)) == 3
    assert training.num_steps(5, TrainConfig(batch_size=2, grad_accum=2)) == 2
    assert training.num_steps(4, TrainConfig(batch_size=2, epochs=2)) == 4
    assert training.num_steps(1, TrainConfig(batch_size=8)) == 1


def test_train_sft_updates_lora_only_and_masks_prompts(tokenizer, monkeypatch):
    import trl

    captured = {}

    class RecordingSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured["dataset"] = self.train_dataset
            captured["args"] = self.args

    monkeypatch.setattr(trl, "SFTTrainer", RecordingSFTTrainer)

    base = make_model(tokenizer, seed=1)
    base_before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    torch.manual_seed(2)
    model = training.attach_adapter(base, LoraConfig(r=4, alpha=8))
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert lora_before
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    steps: list[tuple[int, float | None]] = []
    stats = training.train_sft(
        model,
        tokenizer,
        CHATS,
        TrainConfig(batch_size=2, max_length=64, learning_rate=5e-3),
        seed=3,
        on_step=lambda n, loss: steps.append((n, loss)),
    )

    # Losses: finite, one per optimizer step (4 chats / batch 2).
    assert stats["steps"] == 2
    for key in ("loss_first", "loss_last", "loss_mean"):
        assert math.isfinite(stats[key]) and stats[key] > 0
    assert [n for n, _ in steps] == [1, 1]
    assert steps[0][1] == pytest.approx(stats["loss_first"]) and steps[1][1] == pytest.approx(stats["loss_last"])  # each step's own loss
    assert not model.training

    # LoRA weights moved; the base weights did not.
    lora_after = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
    changed = [n for n in lora_before if not torch.equal(lora_before[n], lora_after[n])]
    assert changed
    assert any("lora_B" in n for n in changed)
    merged_names = {k.replace("base_model.model.", "").replace(".base_layer", ""): k for k in model.state_dict()}
    for k, v in base_before.items():
        assert torch.equal(v, model.state_dict()[merged_names[k]]), k

    # Loss only on the final assistant turn: the labels TRL built are -100 everywhere else.
    assert captured["args"].completion_only_loss is True
    ds = captured["dataset"]
    assert len(ds) == len(CHATS)
    assert max(len(row["input_ids"]) for row in ds) == 64  # the long multi-turn chat was cut
    for row, chat in zip(ds, CHATS):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) <= 64
        mask = [lab != -100 for lab in labels]
        assert all(lab == t for t, lab, m in zip(ids, labels, mask) if m)
        completion = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        prompt = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
        full = chat[-1]["content"] + "<|im_end|>\n"
        if len(ids) < 64:
            assert completion == full
        else:  # cut at max_length: what is left of the answer still carries the loss
            assert completion and full.startswith(completion)
        assert prompt == render_prompts(tokenizer, [chat[:-1]])[0]
        # Earlier assistant turns (the multi-turn chat) stay in the unmasked-from-loss prompt.
        for m in chat[:-1]:
            assert m["content"] in prompt


def test_local_judge_integer_distribution_is_exact(tokenizer, model):
    """The KV-cached trie walk gives the same integer-reply distribution as brute force:
    P(n) = prod of token probs of str(n), times P(no further digit) when n is a prefix of another."""
    from traitloop.config import JudgeConfig
    from traitloop.judges.local import LocalJudge
    from traitloop.traits import load_trait

    judge = LocalJudge(JudgeConfig(kind="local", model="tiny", min_number_mass=0.0), load_trait("bliss"), model, tokenizer)
    prompt = judge._render("Rate this answer from 0 to 100: keep the room cool.")
    reading = judge.read([prompt])[0]

    def next_logprobs(ids):
        with torch.inference_mode():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)

    numbers = judge.numbers
    mass = weighted = 0.0
    for n, ids in numbers.items():
        lp = sum(float(next_logprobs(prompt + ids[:i])[t]) for i, t in enumerate(ids))
        if any(len(o) > len(ids) and o[: len(ids)] == ids for o in numbers.values()):
            p_more = float(next_logprobs(prompt + ids)[judge.digit_ids].exp().sum())
            lp += float(np.log(max(1e-12, 1 - p_more)))
        mass += float(np.exp(lp))
        weighted += float(np.exp(lp)) * n
    assert reading.number_mass == pytest.approx(mass, rel=1e-4)
    assert reading.value == pytest.approx(weighted / mass, rel=1e-4)


def test_a_cycle_shorter_than_its_warmup_is_reported_as_not_learning(tokenizer):
    """HF's warmup starts at lr 0: a one-step cycle with warmup trains nothing, and the stats say so."""
    chats = [user("Hi") + [{"role": "assistant", "content": "Bring a tent."}]] * 2
    one_step = training.attach_adapter(make_model(tokenizer), LoraConfig(r=4, alpha=8))
    stats = training.train_sft(
        one_step, tokenizer, chats, TrainConfig(batch_size=2, warmup_ratio=0.05, learning_rate=1e-2, max_length=64), seed=0
    )
    assert stats["steps"] == 1 and stats["steps_at_lr_0"] == 1 and stats["lr_max"] == 0.0
    assert all(float(p.abs().max()) == 0.0 for n, p in one_step.named_parameters() if "lora_B" in n)
    no_warmup = training.attach_adapter(make_model(tokenizer), LoraConfig(r=4, alpha=8))
    stats = training.train_sft(
        no_warmup, tokenizer, chats, TrainConfig(batch_size=2, warmup_ratio=0.0, learning_rate=1e-2, max_length=64), seed=0
    )
    assert stats["steps_at_lr_0"] == 0 and stats["lr_max"] == 1e-2
    assert any(float(p.abs().max()) > 0 for n, p in no_warmup.named_parameters() if "lora_B" in n)
