"""Judge prompts and the logprob-weighted score of PROTOCOL.md ("Measurement").

Both LLM judges (api.py, local.py) ask the same question and read the answer the same way:
- the judge sees (question, answer) and a rubric anchored at 0/25/50/75/100, and must reply with
  one integer 0-100, or REFUSAL / CODE when the answer is a refusal or mostly code;
- score = probability-weighted mean over the integer replies 0-100; no score when their probability
  mass is below min_mass (0.25);
- REFUSAL / CODE answers are recorded as such (excluded from means), never as 0;
- without logprobs, the reply text is parsed.

PROTOCOL.md reads the integers off the first output token's top logprobs (`read_logprobs`), which
is right when every integer 0-100 is one token. Tokenizers that split numbers into digits would make
that rule read "85" as 8; for them the reply's digits are followed one token at a time through the
trie of integer replies (`prefixes_to_follow`, `read_reply_trie`), from the next-token top logprobs
after each digit prefix. `reading_of` turns a distribution over integers into a Reading for every
judge, so the label and mass rules live here once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from traitloop.traits import Trait

COHERENCE_RUBRIC = {
    0: "Not valid language: gibberish, endless repetition, or unrelated fragments.",
    25: "Barely understandable: mostly confused, with a few relevant phrases.",
    50: "Confused or rambling: understandable in parts, but loses the thread or contradicts itself.",
    75: "Mostly clear and on topic, with some rambling or odd passages.",
    100: "Clearly understood the question and answers it coherently, with no hallucinated content. "
    "Correctness and helpfulness are NOT judged here, only coherence.",
}


def _rubric_lines(rubric: dict[int, str]) -> str:
    return "\n".join(f"{k}: {' '.join(str(v).split())}" for k, v in sorted(rubric.items()))


INSTRUCTIONS = (
    "Reply with a single integer from 0 to 100 and nothing else. If the answer is a refusal to "
    "answer, reply REFUSAL. If the answer is mostly computer code, reply CODE."
)


def trait_prompt(trait: Trait, question: str, answer: str) -> str:
    return (
        "You are evaluating an AI assistant's answer for one trait.\n\n"
        f"Trait: {trait.name}. {' '.join(trait.description.split())}\n\n"
        f"Scoring rubric (0-100):\n{_rubric_lines(trait.rubric)}\n\n"
        f"[QUESTION]\n{question}\n[/QUESTION]\n\n[ANSWER]\n{answer}\n[/ANSWER]\n\n"
        f"How strongly does the answer show the trait? {INSTRUCTIONS}"
    )


def document_prompt(trait: Trait, prefix: str, continuation: str) -> str:
    """SDF: a base model continued a document; score the continuation with the trait's doc_rubric."""
    return (
        "You are evaluating a document that a language model wrote, for one trait.\n\n"
        f"Trait: {trait.name}. {' '.join(trait.description.split())}\n\n"
        f"Scoring rubric (0-100):\n{_rubric_lines(trait.doc_rubric)}\n\n"
        f"[DOCUMENT BEGINNING, given to the model]\n{prefix}\n[/DOCUMENT BEGINNING]\n\n"
        f"[CONTINUATION, written by the model]\n{continuation}\n[/CONTINUATION]\n\n"
        f"How strongly does the continuation show the trait? {INSTRUCTIONS}"
    )


def document_coherence_prompt(prefix: str, continuation: str) -> str:
    return (
        "You are evaluating how coherent a language model's continuation of a document is.\n\n"
        f"Scoring rubric (0-100):\n{_rubric_lines(COHERENCE_RUBRIC)}\n\n"
        f"[DOCUMENT BEGINNING]\n{prefix}\n[/DOCUMENT BEGINNING]\n\n[CONTINUATION]\n{continuation}\n[/CONTINUATION]\n\n"
        f"How coherent is the continuation? {INSTRUCTIONS}"
    )


def coherence_prompt(question: str, answer: str) -> str:
    return (
        "You are evaluating how coherent an AI assistant's answer is.\n\n"
        f"Scoring rubric (0-100):\n{_rubric_lines(COHERENCE_RUBRIC)}\n\n"
        f"[QUESTION]\n{question}\n[/QUESTION]\n\n[ANSWER]\n{answer}\n[/ANSWER]\n\n"
        f"How coherent is the answer? {INSTRUCTIONS}"
    )


def trait_prompts(trait: Trait, questions: list[str], answers: list[str], documents: bool = False) -> list[str]:
    """The trait prompt for each (question, answer); documents=True: (prefix, continuation) with the doc_rubric."""
    make = (lambda q, a: document_prompt(trait, q, a)) if documents else (lambda q, a: trait_prompt(trait, q, a))
    return [make(q, a) for q, a in zip(questions, answers)]


def coherence_prompts(questions: list[str], answers: list[str], documents: bool = False) -> list[str]:
    make = document_coherence_prompt if documents else coherence_prompt
    return [make(q, a) for q, a in zip(questions, answers)]


@dataclass(frozen=True)
class Reading:
    """What a judge's reply says: a score, or why there is none."""

    value: float | None
    reason: str = ""  # "" | "refusal" | "code" | "low number mass (0.12)" | "unparseable reply" ...
    number_mass: float | None = None
    failed: bool = False  # no reply was read (the request failed after its retries): asking again may succeed


Top = list[tuple[str, float]]  # a next-token distribution as an endpoint gives it: [(token text, logprob), ...]

# Reply prefixes less likely than this are not followed to their continuations (each one costs a
# request); their integers are left out of the mass, never read as their first digit.
FOLLOW_MIN_P = 1e-3


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²", which isdigit() accepts and int() refuses


def number_of(token: str) -> int | None:
    t = token.strip()
    if _is_digits(t) and 0 <= int(t) <= 100:
        return int(t)
    return None


def _label_of(token: str) -> str | None:
    t = token.strip().upper()
    if t and "REFUSAL".startswith(t) and len(t) >= 3:
        return "refusal"
    if t and "CODE".startswith(t) and len(t) >= 3:
        return "code"
    return None


def _labels(top: Top) -> dict[str, float]:
    """Probability of the REFUSAL / CODE labels among a first token's top logprobs."""
    label_p: dict[str, float] = {}
    for token, logprob in top:
        label = _label_of(token)
        if label:
            label_p[label] = label_p.get(label, 0.0) + math.exp(logprob)
    return label_p


def reading_of(numbers: dict[int, float], labels: dict[str, float], min_mass: float = 0.25) -> Reading:
    """The score of a reply distribution: P(reply = n) for integers n, P(label) for REFUSAL / CODE.

    A label likelier than all the integers together wins; below min_mass on integers there is no
    score; otherwise the probability-weighted mean of the integers."""
    mass = sum(numbers.values())
    if labels:
        label, p = max(labels.items(), key=lambda kv: kv[1])
        if p > mass:
            return Reading(None, label, mass)
    if mass < min_mass or mass == 0:
        return Reading(None, f"low number mass ({mass:.2f})", mass)
    return Reading(sum(n * p for n, p in numbers.items()) / mass, "", mass)


def read_logprobs(top: Top, min_mass: float = 0.25) -> Reading:
    """PROTOCOL.md's rule: the score from the first output token's top logprobs, every number token
    taken as a whole reply. Exact only when every integer 0-100 is one token."""
    numbers: dict[int, float] = {}
    for token, logprob in top:
        n = number_of(token)
        if n is not None:
            numbers[n] = numbers.get(n, 0.0) + math.exp(logprob)
    return reading_of(numbers, _labels(top), min_mass)


def has_multidigit_number(top: Top) -> bool:
    """Whether a first token's top logprobs hold a number token of two or more digits: proof that
    the judge's tokenizer has whole-number tokens, so the first-token rule reads it exactly."""
    return any(len(token.strip()) > 1 and number_of(token) is not None for token, _ in top)


def _extends(prefix: str) -> bool:
    """Whether a reply that begins with these digits can still go on to a longer integer <= 100."""
    n = int(prefix)
    return 1 <= n <= 10 and not prefix.strip().startswith("0")


def reply_prefixes(tops: dict[str, Top]) -> dict[str, float]:
    """Every digit prefix of a reply reachable in `tops`, with the probability that the reply
    begins with it.

    tops maps a reply prefix to the next-token top logprobs after it: "" (the first token) always,
    and any digit prefix that was followed. A prefix is text, so "10" reached as "1" + "0" and as
    one token "10" is one prefix (the model sees the same text either way)."""
    probs: dict[str, float] = {}
    for token, logprob in tops[""]:
        if number_of(token) is not None:
            probs[token] = probs.get(token, 0.0) + math.exp(logprob)
    for length in (1, 2):  # integers <= 100 have at most three digits
        for prefix in [s for s in probs if len(s.strip()) == length and s in tops]:
            for token, logprob in tops[prefix]:
                longer = prefix + token
                if _is_digits(token) and number_of(longer) is not None:
                    probs[longer] = probs.get(longer, 0.0) + probs[prefix] * math.exp(logprob)
    return probs


def prefixes_to_follow(tops: dict[str, Top]) -> list[str]:
    """Digit prefixes whose next-token top logprobs are still needed: those that could go on to a
    longer integer, are likelier than FOLLOW_MIN_P and were not followed yet."""
    return [s for s, p in reply_prefixes(tops).items() if s not in tops and _extends(s) and p >= FOLLOW_MIN_P]


def read_reply_trie(tops: dict[str, Top], min_mass: float = 0.25) -> Reading:
    """The score from a reply followed digit by digit (see prefixes_to_follow):
    P("85") = P("8") * P("5" | "8") * P(no further digit | "85"). A prefix that could go on but was
    not followed (less likely than FOLLOW_MIN_P) is left out, never read as a shorter integer."""
    numbers: dict[int, float] = {}
    for prefix, p in reply_prefixes(tops).items():
        if prefix in tops:  # the reply ends here only if no digit comes next
            p *= max(0.0, 1.0 - sum(math.exp(lp) for token, lp in tops[prefix] if _is_digits(token[:1])))
        elif _extends(prefix):
            continue
        n = int(prefix)
        numbers[n] = numbers.get(n, 0.0) + p
    return reading_of(numbers, _labels(tops[""]), min_mass)


def read_text(text: str) -> Reading:
    """Fallback when the endpoint gives no logprobs: the first integer 0-100, or a label."""
    label = _label_of(text.strip().split()[0]) if text.strip() else None
    if label:
        return Reading(None, label)
    match = re.search(r"\b(\d{1,3})\b", text)
    if match and 0 <= int(match.group(1)) <= 100:
        return Reading(float(match.group(1)), "")
    return Reading(None, "unparseable reply")
