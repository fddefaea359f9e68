"""The small protocol every trait judge implements, so API and local LLM judges plug in beside the probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Score:
    """One judged answer. value is 0-100, or None when the judge could not score it (reason says why)."""

    value: float | None
    judge: str
    reason: str = ""
    failed: bool = False  # the judge could not be asked (server error, timeout): asking again may give a score


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, questions: list[str], answers: list[str]) -> list[Score]:
        """One Score per (question, answer), in order."""
        ...

    def info(self) -> dict[str, Any]:
        """Identity and validity of the judge (model, accuracy...), recorded in every run."""
        ...


@runtime_checkable
class CoherenceJudge(Judge, Protocol):
    """An LLM judge that also rates coherence (0-100), for judge.coherence: true."""

    def coherence(self, questions: list[str], answers: list[str]) -> list[Score]: ...


@runtime_checkable
class MeteredJudge(Judge, Protocol):
    """A judge that pays per request: its running usage counts and their estimated cost."""

    usage: dict[str, int]

    def cost(self, usage: dict[str, int] | None = None) -> float: ...
