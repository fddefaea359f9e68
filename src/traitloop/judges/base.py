"""The small protocol every trait judge implements, so API and local LLM judges plug in beside the probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Score:
    """One judged answer. value is 0-100, or None when the judge could not score it (reason says why)."""

    value: float | None
    judge: str
    reason: str = ""


class Judge(Protocol):
    name: str

    def score(self, questions: list[str], answers: list[str]) -> list[Score]:
        """One Score per (question, answer), in order."""
        ...

    def info(self) -> dict[str, Any]:
        """Identity and validity of the judge (model, accuracy...), recorded in every run."""
        ...
