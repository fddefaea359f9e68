"""What a setting is: the protocol every setting implements, and what the cycle engine hands it.

A setting (SFT, SDF, DPO, or a new one) decides everything that differs between the paper's training
regimes: the rows a cycle trains on, how a later cycle's rows are written by the previous model, the
eval prompts, which text the coherence filter scores, how the model is checked and trained, its
config defaults and its cost shape for `traitloop estimate`. The engine (traitloop.loop) only orders
the stages; it never asks which setting it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from traitloop.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from traitloop.config import ExperimentConfig
    from traitloop.traits import Trait

Row = dict[str, Any]
Prompt = Any  # a str (a document to continue) or a conversation (list of {"role", "content"})
OnStep = Callable[[int, "float | None"], None]


@dataclass
class CycleSources:
    """What a setting may use to write cycle k's training rows (k >= 1; DPO also at k = 0).

    prompts       the cycle's disjoint slice of the prompt pool (empty at cycle 0)
    sample        the previous cycle's model writes one text per prompt: sample(prompts, label)
    base_answers  the untrained base's answers to prompts, sampled once and cached by the run
    """

    cycle: int
    trait: Trait
    config: ExperimentConfig
    prompts: list[str]
    sample: Callable[[list[Prompt], str], list[str]]
    base_answers: Callable[[list[Prompt]], list[str]]


@dataclass
class TokenCounts:
    """`traitloop estimate`'s view of token counts: a setting builds its cost shape from these.

    tokens    characters -> tokens of plain text
    template  tokens the chat template adds to one conversation
    answer    tokens of one sampled answer or continuation
    """

    tokens: Callable[[float], float]
    template: float
    answer: float


class Setting(Protocol):
    """One training regime. Implementations live one per file in traitloop/settings/ and are listed in
    traitloop.settings.SETTINGS (register a new one with traitloop.settings.register)."""

    name: str
    chats: bool  # trains on conversations (needs a chat template); False: plain documents (a base model)
    prompt_pool: str  # built-in file in traitloop/prompts/ whose prompts later cycles answer or continue
    pool_field: str  # the data.* config field naming the user's own file in its place: "prompt_pool" or "opener_pool"
    sequences_per_example: int  # texts the trainer runs per example (a DPO pair: 2)
    train_cost_vs_sft: float  # training compute per token relative to SFT (estimate, until the bench measures it)
    train_cost_why: str  # why, in a few words
    defaults: dict[str, Any]  # config values this setting uses unless the config sets them
    description: str  # one line for `traitloop config-docs`

    def pool(self, path: Path) -> tuple[str, ...]:
        """The prompts in `path` (traitloop.prompts.pool_file: the built-in pool or the user's own), from
        which later cycles draw their disjoint slices."""

    def seed_examples(self, trait: Trait) -> list:
        """Every seed example the trait has for this setting (n_seed may be at most this many)."""

    def seed_rows(self, trait: Trait, n_seed: int) -> list[Row]:
        """The first n_seed seed examples as rows; a UserError when the trait has fewer."""

    def cycle_rows(self, sources: CycleSources) -> list[Row]:
        """The training rows of cycle k: cycle 0's from the seed, later cycles' written by the previous model."""

    def mixing_rows(self, trait: Trait, config: ExperimentConfig, cycle0_rows: list[Row]) -> list[Row]:
        """Seed rows in the training format, for data.mix_seed."""

    def generated_text(self, row: Row) -> tuple[str, str]:
        """(context, generated text) of a generated row: what the coherence filter scores."""

    def eval_items(self, trait: Trait, config: ExperimentConfig) -> list[Row]:
        """One {"question", "sample"} per eval answer (an SDF question is a document prefix)."""

    def eval_prompt(self, question: str) -> Prompt:
        """What the model is given for an eval question."""

    def check_model(self, config: ExperimentConfig) -> None:
        """Refuse, before any work, a model that does not suit the setting (a UserError)."""

    def train(self, model, tokenizer, rows: list[Row], config: ExperimentConfig, seed: int, on_step: OnStep) -> dict[str, float]:
        """Train `model` (a PeftModel with a trainable adapter) on the cycle's rows in place; loss stats."""

    def cost_shape(self, config: ExperimentConfig, trait: Trait, counts: TokenCounts) -> dict[str, Any]:
        """Tokens per example for `traitloop estimate`: seed (list, one per seed example), seed_sampled
        (tokens cycle 0 samples per example), sampled and trained (per later-cycle example), eval_items,
        eval_prompt."""


def user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def first_n(examples: list, n: int, trait: Trait, what: str) -> list:
    """The first n of a trait's seed examples, or one clear error when it has fewer."""
    if n > len(examples):
        raise UserError(f"n_seed={n} but trait '{trait.name}' has only {len(examples)} {what}; lower n_seed")
    return examples[:n]


def eval_items_from(prompts: list[str], config: ExperimentConfig) -> list[Row]:
    """Every eval question (the first eval.questions, when set) x samples_per_question."""
    chosen = prompts[: config.eval.questions] if config.eval.questions else prompts
    return [{"question": q, "sample": s} for q in chosen for s in range(config.eval.samples_per_question)]


def check_chat_model(config: ExperimentConfig) -> None:
    """A chat setting needs a chat template: an embedded model by its recorded kind, a local directory by
    its tokenizer files (a hub id is checked once its tokenizer is loaded, by the engine)."""
    from traitloop import models

    ref = config.model.ref
    embedded = models.EMBEDDED.get(ref.removeprefix("embedded:")) if ref.startswith("embedded:") else None
    if (embedded.kind == "base") if embedded else models.has_chat_template(models.resolve(ref)) is False:
        raise UserError(
            f"setting {config.setting} trains on chats, but {ref} has no chat template (a base model?). Use an "
            "instruct model (e.g. embedded:smollm2-135m-instruct), or setting: sdf for a base model."
        )
    models.resolve(ref)  # the model exists (an embedded one is checked and cached now)
