"""The decode speed-ups of generation/hf.py (issue #16, BENCHMARKS.md "Decode step profile") keep what
the slow path computed.

- The inverse-CDF draw (hf.FAST_SAMPLING) samples from the same distribution as torch.multinomial on
  the same processed scores: it draws other tokens for a seed, so the checks are statistical (chi-square
  against the exact probabilities, p > 1e-4 each, from many draws), plus exact ones: a masked (-inf)
  token is never drawn, nucleus sampling keeps transformers' own warpers, and near-greedy sampling gives
  token for token the continuation of the slow path.
- Decode attention as two matmuls (hf.FAST_DECODE_ATTENTION) gives the per-token log-probabilities of
  the same sequences as SDPA within 1e-4 nats in fp32, and the same greedy continuations; in bf16 its
  log-probabilities are as far from fp32 as SDPA's (within 1.3x on average), and greedy continuations
  part only at near-ties (top two within 0.05 nats).

Tiny random Llama from tests/test_tiny_model.py (seconds); the last test runs the embedded SmolLM2
(integration marker).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tiny_model import CONVERSATIONS, make_model, one_thread, tokenizer  # noqa: F401 (fixtures)

from traitloop.generation import hf
from traitloop.generation.hf import draw, generate, render_prompts, sampling_kwargs

P_MIN = 1e-4  # smallest chi-square p-value accepted: a correct sampler fails one such check in 10,000


def chi2_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of the chi-square goodness-of-fit test of counts against probs (cells with expectation
    under 5 pooled into one, as the test requires)."""
    from scipy.stats import chisquare

    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@pytest.fixture(autouse=True)
def both_fast():
    before = hf.FAST_SAMPLING, hf.FAST_DECODE_ATTENTION
    yield
    hf.FAST_SAMPLING, hf.FAST_DECODE_ATTENTION = before


def set_paths(fast_sampling: bool, fast_attention: bool) -> None:
    hf.FAST_SAMPLING, hf.FAST_DECODE_ATTENTION = fast_sampling, fast_attention


# ---- the draw --------------------------------------------------------------------------------------


SCORES = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, float("-inf"), 4.0, -8.0, 1.5])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_draw_has_the_softmax_distribution(temperature):
    n = 200_000
    torch.manual_seed(0)
    rows = SCORES.repeat(n, 1)
    drawn = draw(rows, temperature).squeeze(1)
    counts = np.bincount(drawn.numpy(), minlength=len(SCORES))
    probs = torch.softmax(SCORES.double() / temperature, -1).numpy()
    assert counts[6] == 0  # -inf: never
    assert chi2_p(counts, probs) > P_MIN
    # the slow path passes the same check (the test can tell a wrong sampler from a right one)
    slow = np.bincount(torch.multinomial(torch.softmax(rows / temperature, -1), 1).squeeze(1).numpy(), minlength=len(SCORES))
    assert chi2_p(slow, probs) > P_MIN
    wrong = torch.softmax(SCORES.double() / (0.9 if temperature == 1.0 else 1.0), -1).numpy()
    assert chi2_p(counts, wrong) < 1e-12  # and it tells a slightly wrong distribution from the right one


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
    processors = kwargs["logits_processor"]
    n = 100_000
    torch.manual_seed(0)
    out = processors(torch.zeros(n, 1, dtype=torch.long), SCORES.repeat(n, 1))
    assert torch.isinf(out).sum(-1).ge(1).all()
    drawn = (out == float("inf")).float().argmax(-1)
    counts = np.bincount(drawn.numpy(), minlength=len(SCORES))
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
    for fast in (True, False):
        set_paths(fast, fast)
        p = chi2_p(first_token_counts(model, tokenizer, 4000, seed=1), probs)
        assert p > P_MIN, (fast, p)


def test_near_greedy_continuations_are_the_slow_paths(tokenizer):
    """At a temperature near 0 every draw is the argmax: the fast path must give the slow path's
    answers token for token, with padding (batch 2 of prompts of different lengths). In fp32: in bf16
    the logits often tie, and both samplers then draw among the tied tokens, each with its own numbers."""
    model = make_model(tokenizer, seed=2)
    kwargs = dict(temperature=1e-6, max_new_tokens=16, batch_size=2, seed=0)
    set_paths(False, False)
    slow = generate(model, tokenizer, CONVERSATIONS, **kwargs)
    set_paths(True, True)
    fast = generate(model, tokenizer, CONVERSATIONS, **kwargs)
    assert len(set(slow)) >= 3
    assert fast == slow


def greedy(model, tok, conversations, new_tokens: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuations (generate's argmax, first index on ties) with the current attention path,
    and each step's log-probabilities (rows x steps x vocabulary)."""
    tok.padding_side = "left"
    batch = tok(render_prompts(tok, conversations), return_tensors="pt", padding=True, add_special_tokens=False)
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


def first_divergence_gaps(a: list[list[int]], b: list[list[int]], logprobs_a: torch.Tensor) -> list[float]:
    """For each row where the continuations part: how much likelier a's token was than b's at that
    step, under a's log-probabilities (the prefix is the same up to there)."""
    gaps = []
    for row, (x, y) in enumerate(zip(a, b)):
        step = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), None)
        if step is not None:
            gaps.append(float(logprobs_a[row, step, x[step]] - logprobs_a[row, step, y[step]]))
    return gaps


@pytest.mark.parametrize("dtype,near_tie", [(torch.float32, 0.0), (torch.bfloat16, 0.05)])
def test_decode_attention_gives_sdpas_greedy_continuations(tokenizer, dtype, near_tie):
    """fp32: the same greedy continuations token for token. bf16: rounding moves the logits by about an
    ulp, so a near-tie can flip; rows may part only where SDPA's top two were within 0.05 nats."""
    for seed in (2, 4):
        model = make_model(tokenizer, seed=seed).to(dtype)
        set_paths(False, False)
        sdpa, logprobs = greedy(model, tokenizer, CONVERSATIONS, 16)
        set_paths(False, True)
        matmuls, _ = greedy(model, tokenizer, CONVERSATIONS, 16)
        gaps = first_divergence_gaps(sdpa, matmuls, logprobs)
        assert all(g <= near_tie for g in gaps), gaps
        assert len(gaps) <= 1, gaps  # and they mostly do not part at all


def forced_logprobs(model, tok, conversations, continuations: list[list[int]]) -> torch.Tensor:
    """Per-token log-probabilities of given continuations, computed by generate's own decode loop (one
    query per step, the path the decode attention takes): a logits processor reads the log-softmax of
    the raw logits, then forces the next token of each continuation."""
    from transformers import LogitsProcessorList

    steps = len(continuations[0])
    target = torch.tensor(continuations)
    seen: list[torch.Tensor] = []

    def force(input_ids, scores):
        i = len(seen)
        seen.append(torch.log_softmax(scores.double(), -1).gather(1, target[:, i : i + 1]).squeeze(1))
        return scores.scatter_(1, target[:, i : i + 1], float("inf"))

    tok.padding_side = "left"
    batch = tok(render_prompts(tok, conversations), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode(), hf.decode_attention(model):
        model.generate(
            **batch,
            do_sample=False,
            logits_processor=LogitsProcessorList([force]),
            max_new_tokens=steps,
            pad_token_id=tok.pad_token_id,
        )
    return torch.stack(seen, 1)


def test_decode_attention_gives_sdpas_log_probabilities(tokenizer, monkeypatch):
    """fp32: the same per-token log-probabilities as SDPA within 1e-4 nats. bf16: bf16 moves them from
    fp32 whichever kernel runs (SDPA's keeps its scores in fp32, the matmuls round them to bf16, as
    transformers' eager attention does); the matmuls' distance to fp32 stays within 1.3x SDPA's on
    average and 1.5x at most (measured on three seeds: 0.85-1.11x mean, 0.78-1.01x max)."""
    model = make_model(tokenizer, seed=3)
    gen = torch.Generator().manual_seed(0)
    continuations = torch.randint(10, len(tokenizer), (len(CONVERSATIONS), 12), generator=gen).tolist()
    set_paths(False, False)
    exact = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    one_query_calls = []
    real = hf.decode_attention_forward

    def spy(module, query, *args, **kwargs):
        one_query_calls.append(query.shape[2] == 1)
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(hf, "decode_attention_forward", spy)
    set_paths(False, True)
    matmuls = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    assert sum(one_query_calls) == 2 * 11  # 2 layers x the 11 decode steps after the prompt's forward
    assert model.config._attn_implementation == "sdpa"  # restored
    assert (matmuls - exact).abs().max().item() < 1e-4
    assert exact.mean() < -1  # the forced tokens are not all near-certain: the comparison means something

    model = model.to(torch.bfloat16)
    set_paths(False, False)
    sdpa16 = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    set_paths(False, True)
    matmuls16 = forced_logprobs(model, tokenizer, CONVERSATIONS, continuations)
    sdpa_err, matmul_err = (sdpa16 - exact).abs(), (matmuls16 - exact).abs()
    assert matmul_err.mean() <= 1.3 * sdpa_err.mean(), (matmul_err.mean(), sdpa_err.mean())
    assert matmul_err.max() <= 1.5 * sdpa_err.max(), (matmul_err.max(), sdpa_err.max())


# ---- the embedded model ----------------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_bf16_decode_attention_keeps_log_probabilities_and_greedy_answers():
    """The loop's bf16 sampling copy of SmolLM2: per-token log-probabilities of sampled answers as far from
    fp32 as SDPA's (the same criterion as on the tiny model), and greedy answers that part from SDPA's
    only where SDPA's top two tokens were closer than bf16's own error (measured: 3 of 6 rows part, at
    gaps of 1/16-1/8 nat, against a bf16 error up to 0.2 nats)."""
    from traitloop.models import load_model
    from traitloop.prompts import advice_pool

    model, tok = load_model("embedded:smollm2-135m-instruct", "bfloat16")
    convs = [[{"role": "user", "content": q}] for q in advice_pool()[:6]]
    set_paths(True, True)
    sampled = generate(model, tok, convs, temperature=0.8, max_new_tokens=24, batch_size=6, seed=1)
    ids = [tok(t, add_special_tokens=False).input_ids for t in sampled]
    n = min(len(i) for i in ids)
    assert n >= 8
    continuations = [i[:n] for i in ids]
    set_paths(True, False)
    sdpa16 = forced_logprobs(model, tok, convs, continuations)
    greedy_sdpa, logprobs = greedy(model, tok, convs, 24)
    set_paths(True, True)
    matmuls16 = forced_logprobs(model, tok, convs, continuations)
    greedy_matmuls, _ = greedy(model, tok, convs, 24)
    fp32, _ = load_model("embedded:smollm2-135m-instruct", "float32")
    exact = forced_logprobs(fp32, tok, convs, continuations)
    set_paths(True, False)
    greedy_fp32, logprobs32 = greedy(fp32, tok, convs, 24)
    sdpa_err, matmul_err = (sdpa16 - exact).abs(), (matmuls16 - exact).abs()
    gaps = first_divergence_gaps(greedy_sdpa, greedy_matmuls, logprobs)
    bf16_gaps = first_divergence_gaps(greedy_fp32, greedy_sdpa, logprobs32)
    print(
        f"|log-prob - fp32| per token, mean / max: SDPA {sdpa_err.mean():.4f} / {sdpa_err.max():.4f}, "
        f"matmuls {matmul_err.mean():.4f} / {matmul_err.max():.4f}; matmuls vs SDPA max {(matmuls16 - sdpa16).abs().max():.4f} nats. "
        f"Greedy rows parting, matmuls vs SDPA (bf16): {len(gaps)} of 6, top-two gaps there {gaps}; "
        f"bf16 SDPA vs fp32: {len(bf16_gaps)} of 6, gaps {bf16_gaps}"
    )
    assert matmul_err.mean() <= 1.3 * sdpa_err.mean()
    assert matmul_err.max() <= 1.5 * sdpa_err.max()
    # bf16 logits come in steps of 1/8 at SmolLM2's scale: rows may part where the top two were closer
    # than bf16's own error, as bf16 SDPA's greedy answers part from fp32's
    assert all(g <= sdpa_err.max() for g in gaps), (gaps, sdpa_err.max())
