"""The decode speed-ups of generation/hf.py (issue #16, BENCHMARKS.md "Decode step profile") keep what
the slow path computed. Each has a switch in hf (True by default); the slow path is both off.

- The inverse-CDF draw (hf.FAST_SAMPLING) samples from the same distribution as torch.multinomial on
  the same processed scores. It draws other tokens for a seed, so the checks are statistical (chi-square
  against the exact probabilities, p > 1e-4 each, from many draws; the same check rejects a slightly
  wrong temperature), plus exact ones: a masked (-inf) token is never drawn, nucleus sampling keeps
  transformers' own warpers, and near-greedy sampling gives the slow path's answers token for token.
- Decode attention as two matmuls (hf.FAST_DECODE_ATTENTION) gives the per-token log-probabilities
  of the same sequences within 1e-4 nats of SDPA's in fp32, and the same greedy continuations. In bf16
  its log-probabilities are as far from fp32 as SDPA's own (within 1.3x on average, 1.5x at most), and
  greedy continuations part only where SDPA's top two tokens were closer than bf16 rounding moves them.

Tiny random Llama from tests/test_tiny_model.py (seconds); the last test runs the embedded SmolLM2
(integration marker, about a minute).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tiny_model import CONVERSATIONS, make_model, one_thread, tokenizer  # noqa: F401 (fixtures)

from traitloop.generation import hf
from traitloop.generation.hf import draw, generate, render_prompts, sampling_kwargs

P_MIN = 1e-4  # smallest chi-square p-value accepted: a right sampler fails one such check in 10,000
SWITCHES = ("FAST_SAMPLING", "FAST_DECODE_ATTENTION")


@pytest.fixture(autouse=True)
def restore_switches():
    before = [getattr(hf, s) for s in SWITCHES]
    yield
    for s, v in zip(SWITCHES, before):
        setattr(hf, s, v)


def set_paths(sampling: bool, attention: bool) -> None:
    hf.FAST_SAMPLING, hf.FAST_DECODE_ATTENTION = sampling, attention


SLOW, FAST = (False, False), (True, True)


def chi2_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of the chi-square goodness-of-fit test of counts against probs (cells expecting fewer
    than 5 draws pooled into one, as the test requires)."""
    from scipy.stats import chisquare

    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert len(obs) >= 3  # a test with fewer cells says nothing
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


# ---- the draw --------------------------------------------------------------------------------------


SCORES = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, float("-inf"), 4.0, -8.0, 1.5])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_draw_has_the_softmax_distribution(temperature):
    n = 200_000
    torch.manual_seed(0)
    rows = SCORES.repeat(n, 1)
    counts = np.bincount(draw(rows, temperature).squeeze(1).numpy(), minlength=len(SCORES))
    probs = torch.softmax(SCORES.double() / temperature, -1).numpy()
    assert counts[6] == 0  # -inf: never
    assert chi2_p(counts, probs) > P_MIN
    # the slow path passes the same check, and the check rejects a slightly wrong distribution
    slow = np.bincount(torch.multinomial(torch.softmax(rows / temperature, -1), 1).squeeze(1).numpy(), minlength=len(SCORES))
    assert chi2_p(slow, probs) > P_MIN
    wrong = torch.softmax(SCORES.double() / (0.9 if temperature == 1.0 else 1.0), -1).numpy()
    assert chi2_p(counts, wrong) < 1e-12


def test_draw_is_seeded_and_a_near_zero_temperature_is_the_argmax():
    rows = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)) * 5
    torch.manual_seed(3)
    a = draw(rows, 0.9)
    torch.manual_seed(3)
    assert torch.equal(draw(rows, 0.9), a)
    assert torch.equal(draw(rows, 1e-6).squeeze(1), rows.argmax(-1))
    with pytest.raises(RuntimeError, match="nan"):
        draw(torch.full((2, 5), float("nan")))


def test_the_processors_sample_the_nucleus_like_transformers_warpers(tokenizer):
    """top_p < 1 keeps transformers' Temperature and TopP warpers; the draw then samples what they leave."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    model = make_model(tokenizer)
    kwargs = sampling_kwargs(model, 2.0, 0.8)
    assert kwargs["do_sample"] is False  # generate's greedy step picks the +inf the draw leaves
    n = 100_000
    torch.manual_seed(0)
    out = kwargs["logits_processor"](torch.zeros(n, 1, dtype=torch.long), SCORES.repeat(n, 1))
    assert (out == float("inf")).sum(-1).eq(1).all()
    counts = np.bincount((out == float("inf")).float().argmax(-1).numpy(), minlength=len(SCORES))
    processed = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(2.0)(None, SCORES[None].clone()))[0]
    probs = torch.softmax(processed.double(), -1).numpy()
    assert (probs > 0).sum() == 4 and (counts[probs == 0] == 0).all()  # 4 tokens in the nucleus; the others never
    assert chi2_p(counts, probs) > P_MIN
    # a warper this path does not rebuild keeps the multinomial path
    model.generation_config.min_p = 0.1
    assert sampling_kwargs(model, 0.8, 1.0)["do_sample"] is True


# ---- through generate on the tiny model ------------------------------------------------------------


def first_token_counts(model, tok, n: int, seed: int) -> np.ndarray:
    """The first sampled token of n answers to one prompt at T=0.8, through traitloop's generate (read
    from the token ids model.generate returns, not from the decoded text)."""
    outputs = []
    plain = model.generate

    def recording(**kwargs):
        out = plain(**kwargs)
        outputs.append(out[:, kwargs["input_ids"].shape[1]])
        return out

    model.generate = recording
    try:
        generate(model, tok, [CONVERSATIONS[1]] * n, temperature=0.8, max_new_tokens=1, batch_size=n, seed=seed)
    finally:
        del model.generate
    return np.bincount(torch.cat(outputs).numpy(), minlength=model.config.vocab_size)


def test_generate_draws_the_first_token_from_the_models_distribution(tokenizer):
    """Both paths' first tokens against the exact next-token probabilities of the model's forward."""
    model = make_model(tokenizer)
    [prompt] = render_prompts(tokenizer, [CONVERSATIONS[1]])
    with torch.inference_mode():
        logits = model(**tokenizer(prompt, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    probs = torch.softmax(logits.double() / 0.8, -1).numpy()
    for paths in (FAST, SLOW):
        set_paths(*paths)
        p = chi2_p(first_token_counts(model, tokenizer, 4000, seed=1), probs)
        assert p > P_MIN, (paths, p)


def test_near_greedy_answers_are_the_slow_paths(tokenizer):
    """At a temperature near 0 every draw is the argmax: the fast path must give the slow path's
    answers token for token, with padding (batch 2 of prompts of different lengths). In fp32: in bf16
    the logits often tie, and both samplers then draw among the tied tokens, each with its own numbers."""
    model = make_model(tokenizer, seed=2)
    kwargs = dict(temperature=1e-6, max_new_tokens=16, batch_size=2, seed=0)
    set_paths(*SLOW)
    slow = generate(model, tokenizer, CONVERSATIONS, **kwargs)
    set_paths(*FAST)
    fast = generate(model, tokenizer, CONVERSATIONS, **kwargs)
    assert len(set(slow)) >= 3
    assert fast == slow


def encode(tok, conversations):
    tok.padding_side = "left"
    return tok(render_prompts(tok, conversations), return_tensors="pt", padding=True, add_special_tokens=False)


def forced_logprobs(model, tok, conversations, continuations: list[list[int]]) -> torch.Tensor:
    """Per-token log-probabilities of given continuations (rows x steps), computed by generate's own
    decode loop with the switched-on attention: a logits processor reads the log-softmax of
    the raw logits, then forces the next token of each continuation."""
    from transformers import LogitsProcessorList

    steps = len(continuations[0])
    target = torch.tensor(continuations)
    seen: list[torch.Tensor] = []

    def force(input_ids, scores):
        i = len(seen)
        seen.append(torch.log_softmax(scores.double(), -1).gather(1, target[:, i : i + 1]).squeeze(1))
        return scores.scatter_(1, target[:, i : i + 1], float("inf"))

    batch = encode(tok, conversations)
    with torch.inference_mode(), hf.decode_attention(model):
        model.generate(
            **batch,
            do_sample=False,
            logits_processor=LogitsProcessorList([force]),
            max_new_tokens=steps,
            pad_token_id=tok.pad_token_id,
        )
    return torch.stack(seen, 1)


def greedy(model, tok, conversations, new_tokens: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuations (generate's argmax, the first index on ties) with the switched-on attention,
    and each step's log-probabilities (rows x steps x vocabulary)."""
    batch = encode(tok, conversations)
    with torch.inference_mode(), hf.decode_attention(model):
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=new_tokens,
            pad_token_id=tok.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    logprobs = torch.log_softmax(torch.stack(out.logits, 1).double(), -1)
    return out.sequences[:, batch["input_ids"].shape[1] :].tolist(), logprobs


def parting_gaps(a: list[list[int]], b: list[list[int]], logprobs_a: torch.Tensor) -> list[float]:
    """For each row where two greedy continuations part: how much likelier a's token was than b's at
    that step under a's log-probabilities (the prefix is the same up to there)."""
    gaps = []
    for row, (x, y) in enumerate(zip(a, b)):
        step = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), None)
        if step is not None:
            gaps.append(float(logprobs_a[row, step, x[step]] - logprobs_a[row, step, y[step]]))
    return gaps


def test_decode_attention_keeps_greedy_continuations(tokenizer):
    """fp32: the slow path's greedy continuations token for token. bf16: rows may part only at
    near-ties (the slow path's top two within 0.05 nats; bf16 moves log-probabilities by up to 0.1
    on this model)."""
    for dtype, near_tie in ((torch.float32, 0.0), (torch.bfloat16, 0.05)):
        for seed in (2, 4):
            model = make_model(tokenizer, seed=seed).to(dtype)
            set_paths(*SLOW)
            slow, logprobs = greedy(model, tokenizer, CONVERSATIONS, 16)
            set_paths(False, True)
            fast, _ = greedy(model, tokenizer, CONVERSATIONS, 16)
            gaps = parting_gaps(slow, fast, logprobs)
            assert all(g <= near_tie for g in gaps), (dtype, seed, gaps)
            assert len(gaps) <= 1, (dtype, seed, gaps)  # and they mostly do not part at all


def test_decode_attention_keeps_log_probabilities(tokenizer, monkeypatch):
    """fp32: the slow path's per-token log-probabilities within 1e-4 nats. bf16: bf16 moves them from
    fp32 whichever path runs (SDPA's kernel keeps its scores in fp32, the two matmuls round them to
    bf16, as transformers' eager attention does); the matmuls' distance to fp32 stays within 1.3x
    SDPA's on average and 1.5x at most (three seeds: 0.85-1.11x mean, 0.78-1.01x max)."""
    model = make_model(tokenizer, seed=3)
    gen = torch.Generator().manual_seed(0)
    continuations = torch.randint(10, len(tokenizer), (len(CONVERSATIONS), 12), generator=gen).tolist()
    set_paths(*SLOW)
    exact = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    assert exact.mean() < -1  # the forced tokens are not all near-certain: the comparison means something
    one_query_calls = []
    real = hf.decode_attention_forward

    def spy(module, query, *args, **kwargs):
        one_query_calls.append(query.shape[2] == 1)
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(hf, "decode_attention_forward", spy)
    set_paths(False, True)
    fast = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    assert sum(one_query_calls) == 2 * 11  # 2 layers x the 11 decode steps after the prompt's forward
    assert model.config._attn_implementation == "sdpa"  # restored
    assert (fast - exact).abs().max().item() < 1e-4

    model = model.to(torch.bfloat16)
    set_paths(*SLOW)
    slow16 = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    set_paths(False, True)
    fast16 = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    slow_err, fast_err = (slow16 - exact).abs(), (fast16 - exact).abs()
    assert fast_err.mean() <= 1.3 * slow_err.mean(), (fast_err.mean(), slow_err.mean())
    assert fast_err.max() <= 1.5 * slow_err.max(), (fast_err.max(), slow_err.max())


# ---- the embedded model ----------------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_bf16_fast_path_keeps_log_probabilities_and_greedy_answers():
    """The loop's bf16 sampling copy of SmolLM2, both switches on against both off: per-token
    log-probabilities of sampled answers as far from fp32 as the slow path's (the tiny model's
    criterion), and greedy answers that part from the slow path's only where its top two tokens were
    closer than bf16's own error (decode attention alone, measured: 3 of 6 rows part, at gaps of
    1/16-1/8 nat, against a bf16 error up to 0.2 nats; bf16 itself parts 2 of 6 rows from fp32)."""
    from traitloop.models import load_model
    from traitloop.prompts import advice_pool

    model, tok = load_model("embedded:smollm2-135m-instruct", "bfloat16")
    convs = [[{"role": "user", "content": q}] for q in advice_pool()[:6]]
    set_paths(*FAST)
    sampled = generate(model, tok, convs, temperature=0.8, max_new_tokens=24, batch_size=6, seed=1)
    ids = [tok(t, add_special_tokens=False).input_ids for t in sampled]
    n = min(len(i) for i in ids)
    assert n >= 8
    continuations = [i[:n] for i in ids]
    set_paths(*SLOW)
    slow16 = forced_logprobs(model, tok, convs, continuations)
    greedy_slow, logprobs = greedy(model, tok, convs, 24)
    set_paths(*FAST)
    fast16 = forced_logprobs(model, tok, convs, continuations)
    greedy_fast, _ = greedy(model, tok, convs, 24)
    fp32, _ = load_model("embedded:smollm2-135m-instruct", "float32")
    set_paths(*SLOW)
    exact = forced_logprobs(fp32, tok, convs, continuations)
    greedy_fp32, logprobs32 = greedy(fp32, tok, convs, 24)
    slow_err, fast_err = (slow16 - exact).abs(), (fast16 - exact).abs()
    gaps, bf16_gaps = parting_gaps(greedy_slow, greedy_fast, logprobs), parting_gaps(greedy_fp32, greedy_slow, logprobs32)
    print(
        f"|log-prob - fp32| per token, mean / max: slow path {slow_err.mean():.4f} / {slow_err.max():.4f}, "
        f"fast path {fast_err.mean():.4f} / {fast_err.max():.4f}; fast vs slow max {(fast16 - slow16).abs().max():.4f} nats. "
        f"Greedy rows parting, fast vs slow (bf16): {len(gaps)} of 6, top-two gaps there {gaps}; "
        f"slow bf16 vs fp32: {len(bf16_gaps)} of 6, gaps {bf16_gaps}"
    )
    assert fast_err.mean() <= 1.3 * slow_err.mean()
    assert fast_err.max() <= 1.5 * slow_err.max()
    # bf16 logits come in steps of 1/8 at SmolLM2's scale: rows may part where the top two were closer
    # than bf16's own error, as bf16's greedy answers part from fp32's
    assert all(g <= slow_err.max() for g in gaps), (gaps, slow_err.max())
