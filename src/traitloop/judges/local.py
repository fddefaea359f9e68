"""The `local` judge: a transformers model loaded here, with the same prompts as the api judge.

PROTOCOL.md reads the top logprobs of the FIRST output token, which works when every integer 0-100
is one token (as with the large judges the authors used). Many tokenizers (SmolLM2, Llama) split
numbers into digits, so the first token alone would only ever say 0-9. This judge therefore computes
the exact probability of each integer reply: P("85") = P("8") * P("5" | "8") * P(not a digit | "85"),
walking the token trie of the 101 replies with one batched forward pass per trie level; then the
score is the probability-weighted mean, with no score when the mass on integers is below
min_number_mass, and REFUSAL/CODE recorded as such when they are likelier than any number
(prompts.reading_of, shared with the api judge, which follows the same trie over HTTP).
For tokenizers with whole-number tokens this reduces to the first-token rule.
"""

from __future__ import annotations

from typing import Any

import torch

from traitloop.config import JudgeConfig
from traitloop.judges.base import Score
from traitloop.judges.prompts import Reading, coherence_prompts, reading_of, trait_prompts
from traitloop.traits import Trait


class LocalJudge:
    def __init__(self, config: JudgeConfig, trait: Trait, model=None, tokenizer=None, documents: bool = False):
        from traitloop.models import load_model

        self.config = config
        self.documents = documents  # SDF: (document prefix, continuation) with the trait's doc_rubric
        self.trait = trait
        self.name = config.identity()
        if model is None:
            model, tokenizer = load_model(str(config.model))
        self.model, self.tok = model, tokenizer
        self.numbers = {n: self.tok(str(n), add_special_tokens=False).input_ids for n in range(101)}
        digit_ids = {i for ids in self.numbers.values() for i in ids}
        self.digit_ids = torch.tensor(sorted(digit_ids))
        self.labels = {
            "refusal": self.tok("REFUSAL", add_special_tokens=False).input_ids[0],
            "code": self.tok("CODE", add_special_tokens=False).input_ids[0],
        }

    def info(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "kind": "local",
            "model": self.config.model,
            "method": "exact probability of each integer reply 0-100 (digit-by-digit), probability-weighted",
            "min_number_mass": self.config.min_number_mass,
        }

    def score(self, questions: list[str], answers: list[str]) -> list[Score]:
        return self._score(trait_prompts(self.trait, questions, answers, self.documents), answers)

    def coherence(self, questions: list[str], answers: list[str]) -> list[Score]:
        return self._score(coherence_prompts(questions, answers, self.documents), answers)

    def _score(self, prompts: list[str], answers: list[str]) -> list[Score]:
        out: list[Score] = []
        bs = self.config.batch_size
        for start in range(0, len(prompts), bs):
            chunk = prompts[start : start + bs]
            readings = self.read([self._render(p) for p in chunk])
            for reading, answer in zip(readings, answers[start : start + bs]):
                if not answer.strip():
                    reading = Reading(None, "empty answer")
                out.append(Score(reading.value, self.name, reading.reason))
        return out

    def _render(self, prompt: str) -> list[int]:
        text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        return self.tok(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def _prefix_logprobs(self, prompt: list[int], prefixes: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        """Next-token log-probabilities after prompt + prefix, for every prefix.

        The prompt is encoded once; each group of equal-length prefixes is then one small forward
        pass over a copy of the prompt's KV cache, repeated once per prefix in the group."""
        import copy

        device = next(self.model.parameters()).device
        out = self.model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        logp = {(): torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()}
        by_length: dict[int, list[tuple[int, ...]]] = {}
        for prefix in prefixes:
            if prefix:
                by_length.setdefault(len(prefix), []).append(prefix)
        for length, group in sorted(by_length.items()):
            cache = copy.deepcopy(out.cache)
            cache.batch_repeat_interleave(len(group))
            ids = torch.tensor(group, device=device)
            positions = torch.arange(len(prompt), len(prompt) + length, device=device).expand(len(group), -1)
            logits = self.model(input_ids=ids, cache=cache, position_ids=positions, use_cache=True).logits[:, -1]
            for prefix, row in zip(group, torch.log_softmax(logits.float(), dim=-1).cpu()):
                logp[prefix] = row
        return logp

    def read(self, prompt_ids: list[list[int]]) -> list[Reading]:
        """Exact integer-reply distribution for each rendered prompt."""
        # next-token distributions after every proper prefix of some number's tokens ('' included)
        prefixes = sorted({tuple(ids[:i]) for ids in self.numbers.values() for i in range(len(ids))}, key=len)
        readings = []
        for prompt in prompt_ids:
            logp = self._prefix_logprobs(prompt, prefixes)
            readings.append(self._reading(logp))
        return readings

    def _reading(self, logp: dict[tuple[int, ...], torch.Tensor]) -> Reading:
        numbers: dict[int, float] = {}
        for n, ids in self.numbers.items():
            lp = sum(float(logp[tuple(ids[:i])][token]) for i, token in enumerate(ids))
            key = tuple(ids)
            if key in logp:  # the reply could go on with another digit: it must stop here
                p_more = float(torch.logsumexp(logp[key][self.digit_ids], dim=0).exp())
                lp += float(torch.log(torch.tensor(max(1e-12, 1.0 - p_more))))
            numbers[n] = float(torch.tensor(lp).exp())
        labels = {name: float(logp[()][tid].exp()) for name, tid in self.labels.items()}
        return reading_of(numbers, labels, self.config.min_number_mass)
