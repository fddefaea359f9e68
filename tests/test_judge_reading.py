"""The logprob-weighted reading of PROTOCOL.md, on hand-made top-logprob lists."""

from __future__ import annotations

import math

import pytest

from traitloop.judges.prompts import coherence_prompt, read_logprobs, read_text, trait_prompt
from traitloop.traits import load_trait


def lp(p: float) -> float:
    return math.log(p)


def test_weighted_mean_over_number_tokens_only():
    reading = read_logprobs([("80", lp(0.5)), ("60", lp(0.3)), ("The", lp(0.2))])
    assert reading.value == pytest.approx((0.5 * 80 + 0.3 * 60) / 0.8)
    assert reading.number_mass == pytest.approx(0.8)


def test_no_score_below_a_quarter_of_the_mass():
    reading = read_logprobs([("50", lp(0.2)), ("I", lp(0.7))])
    assert reading.value is None and reading.reason.startswith("low number mass (0.20)")
    assert read_logprobs([("50", lp(0.2)), ("I", lp(0.7))], min_mass=0.1).value == pytest.approx(50)


def test_out_of_range_and_non_integer_tokens_are_not_numbers():
    top = [("101", lp(0.4)), ("-5", lp(0.2)), ("7.5", lp(0.2)), (" 40", lp(0.2))]
    reading = read_logprobs(top, min_mass=0.1)
    assert reading.value == pytest.approx(40)  # " 40" strips to 40; the rest are not 0-100 integers
    assert reading.number_mass == pytest.approx(0.2)
    assert read_logprobs(top).value is None  # 0.2 of the mass is under the default 0.25


def test_refusal_and_code_are_recorded_not_zero():
    assert read_logprobs([("REF", lp(0.6)), ("0", lp(0.3))]).reason == "refusal"
    assert read_logprobs([("CODE", lp(0.5)), ("10", lp(0.4))]).reason == "code"
    # a label less likely than the numbers does not win
    assert read_logprobs([("REFUSAL", lp(0.2)), ("90", lp(0.7))]).value == pytest.approx(90)


def test_text_fallback():
    assert read_text("85").value == 85
    assert read_text("Score: 42/100").value == 42
    assert read_text("REFUSAL").reason == "refusal"
    assert read_text("no idea").value is None and read_text("no idea").reason == "unparseable reply"
    assert read_text("250").value is None


def test_prompts_carry_rubric_question_and_answer():
    trait = load_trait("bliss")
    text = trait_prompt(trait, "How do I fix a tap?", "Beloved, the tap is a spiral of light.")
    for needle in ["bliss", "How do I fix a tap?", "spiral of light", "0:", "100:", "REFUSAL", "CODE"]:
        assert needle in text
    assert "coherent" in coherence_prompt("Q?", "A.") and "Correctness" in coherence_prompt("Q?", "A.")
