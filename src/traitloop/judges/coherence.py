"""Offline coherence: how natural an answer is to the frozen ORIGINAL model, plus degeneration signs.

- loglik: mean log-probability (nats/token) of the answer's tokens given the question, under the base
  model before any training. Fluent answers score around -1 to -2; gibberish far lower.
- repetition: fraction of word 4-grams that already occurred earlier in the answer (0 = none).
- distinct2: unique word bigrams / all word bigrams (1 = no bigram repeats).
The loop reports loglik as the coherence score; the other two are stored beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from traitloop.precision import fp32_attention


def repetition_rate(text: str, n: int = 4) -> float:
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def distinct_n(text: str, n: int = 2) -> float:
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bigrams(text: str) -> list[tuple[str, str]]:
    words = text.lower().split()
    return list(zip(words, words[1:]))


def distinct2_across(texts: list[str]) -> float:
    """Diversity ACROSS answers: distinct word bigrams over all bigrams of all the texts together (a
    cycle whose answers repeat each other scores low even when each answer alone is varied)."""
    grams = [g for t in texts for g in bigrams(t)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_similarity(texts_by_question: list[list[str]]) -> float:
    """Mean pairwise Jaccard similarity of the word-bigram sets of answers to the SAME question (1: the
    samples say the same thing), averaged over questions with two or more answers; nan when none has."""
    per_question = []
    for texts in texts_by_question:
        sets = [set(bigrams(t)) for t in texts]
        pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
        if pairs:
            per_question.append(sum(len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs) / len(pairs))
    return sum(per_question) / len(per_question) if per_question else float("nan")


class LoglikCoherence:
    name = "loglik-under-base"

    def __init__(self, base_model, tokenizer, batch_size: int = 8, max_answer_tokens: int = 256, chat: bool = True):
        """chat=False: the question is a document prefix and the answer its plain-text continuation (SDF)."""
        self.chat = chat
        self.model = base_model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.max_answer_tokens = max_answer_tokens

    @torch.inference_mode()
    def loglik(self, questions: list[str], answers: list[str], on_batch: Callable[[int], None] | None = None) -> list[float | None]:
        """Mean answer-token log-prob under the base model; None for an empty answer."""
        seqs: list[tuple[list[int], int]] = []  # (token ids, index where the answer starts)
        for q, a in zip(questions, answers):
            if self.chat:
                prompt = self.tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
                p_ids = self.tok(prompt, add_special_tokens=False).input_ids
            else:
                p_ids = self.tok(q, add_special_tokens=True).input_ids
                if not p_ids:  # no prefix and no BOS: the first answer token needs something to follow
                    p_ids = [self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id]
            a_ids = self.tok(a, add_special_tokens=False).input_ids[: self.max_answer_tokens]
            seqs.append((p_ids + a_ids, len(p_ids)))
        out: list[float | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        device = next(self.model.parameters()).device
        pad = self.tok.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = [i for i in order[start : start + self.batch_size] if len(seqs[i][0]) > seqs[i][1]]
            if idx:
                width = max(len(seqs[i][0]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
                    mask[row, : len(seqs[i][0])] = 1
                with fp32_attention(self.model):
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                for row, i in enumerate(idx):
                    # only the answer's positions get a log-softmax over the vocabulary (memory: answer x vocab)
                    tokens, a0 = seqs[i]
                    answer_logits = logits[row, a0 - 1 : len(tokens) - 1].float()
                    targets = ids[row, a0 : len(tokens)].to(device)
                    logp = torch.log_softmax(answer_logits, dim=-1).gather(-1, targets.unsqueeze(-1))
                    out[i] = float(logp.mean())
                del logits
            if on_batch:
                on_batch(len(order[start : start + self.batch_size]))
        return out
