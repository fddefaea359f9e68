"""Scorers of answers.

base.py       the Judge protocol and Score
probe.py      offline trait probe (embeddings + logistic regression)
prompts.py    LLM-judge prompts and the logprob-weighted reading of PROTOCOL.md
api.py        OpenAI-compatible endpoint judge (concurrent, retried, cached)
local.py      a transformers model as the judge (exact integer-reply probabilities)
coherence.py  offline coherence: log-likelihood under the frozen base, repetition, distinct-2
"""

from __future__ import annotations

from traitloop.config import JudgeConfig
from traitloop.traits import Trait


def make_judge(config: JudgeConfig, trait: Trait, seed: int = 0, documents: bool = False):
    """The trait judge a config asks for. LLM judges (api, local) also have .coherence().
    documents=True (SDF): LLM judges read (document prefix, continuation) with the trait's doc_rubric;
    the probe reads the text alone either way."""
    if config.kind == "probe":
        from traitloop.judges.probe import ProbeJudge

        return ProbeJudge(trait, seed=seed)
    if config.kind == "api":
        from traitloop.judges.api import ApiJudge

        return ApiJudge(config, trait, documents=documents)
    from traitloop.judges.local import LocalJudge

    return LocalJudge(config, trait, documents=documents)
