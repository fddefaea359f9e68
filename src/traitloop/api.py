"""The Python API: run an experiment, or load a finished run or sweep, and get typed results back.

    traitloop.run(config_or_path, **overrides) -> RunResult     (what `traitloop run` does)
    traitloop.load_run(DIR) -> RunResult
    traitloop.load_sweep(DIR) -> SweepResult

Overrides are config keys as keyword arguments; a nested key is written with `__` for each dot
(train__learning_rate=1e-4), or as a dotted key in an unpacked dict (**{"train.learning_rate": 1e-4}).
Values are Python values, used as they are (no YAML parsing). docs/python-api.md has a worked example.

Runs are read through the store (traitloop.store.RunStore) and judged as the report judges them
(traitloop.report_data: run_summary for one run's verdict, summarize for a sweep's conditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitloop.config import ExperimentConfig, _deep_merge, build_config, read_yaml_mapping
from traitloop.errors import UserError


@dataclass
class RunResult:
    """One run: per-cycle scores (scores.csv), the untrained base model's, the verdict and where things are."""

    name: str
    run_dir: Path  # absolute
    config: dict[str, Any] = field(repr=False)  # config.yaml as written (a password in a server URL masked: redact_url)
    scores: list[dict[str, Any]] = field(repr=False)  # one dict per cycle, scores.csv's columns (store.SCORES_COLUMNS)
    base: dict[str, Any] | None = field(repr=False)  # the untrained base model's metrics, or None when it was not evaluated
    verdict: str = ""  # amplified | decayed | static | inconclusive (traitloop.verdicts)
    rule: str = ""  # why: the criterion that decided it, in words
    summary: dict[str, Any] = field(default_factory=dict, repr=False)  # report_data.run_summary: intervals, p-values, idempotence, ...
    judge_warning: str = ""  # non-empty when the judge is not valid (or not measured) for this trait: verdict exploratory

    @property
    def scores_csv(self) -> Path:
        return self.run_dir / "scores.csv"

    @property
    def figure(self) -> Path | None:
        """figures/trait_coherence.png, or None when it has not been drawn."""
        from traitloop.store import RunStore

        path = RunStore(self.run_dir).figure_path()
        return path if path.is_file() else None

    @property
    def trait(self) -> list[float]:
        """The trait score (0-100) of every cycle, from cycle 0."""
        return [float(r["trait_mean"]) for r in self.scores]

    def eval_rows(self, cycle: int) -> list[dict[str, Any]]:
        """A cycle's answers with their scores (eval.jsonl; cycle -1 = the base model), [] when it has none."""
        from traitloop.store import RunStore

        return RunStore(self.run_dir).eval_rows(cycle) or []

    def frame(self):
        """The per-cycle scores as a pandas DataFrame (needs pandas)."""
        return _pandas().DataFrame(self.scores)


@dataclass
class ConditionResult:
    """Runs of one condition (equal configs but the seed) and their verdict across seeds."""

    label: str  # the config keys that set it apart, as the report names it ("all runs" when there is one condition)
    trait: str
    runs: list[str]
    verdict: str  # replicated amplification | replicated decay | static | not replicated | inconclusive | insufficient seeds (k of n)
    reason: str
    summary: dict[str, Any] = field(repr=False)  # report_data.condition_summary: intervals over seeds, MDE, noise


@dataclass
class SweepResult:
    """Every run below a directory, grouped into conditions."""

    root: Path
    runs: list[RunResult]
    conditions: list[ConditionResult]
    skipped: list[str]  # runs left out (no finished cycle yet), with the reason

    def run(self, name: str) -> RunResult:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"no run {name!r} in {self.root}; runs: {', '.join(r.name for r in self.runs)}")

    def frame(self):
        """One row per run x cycle: run, condition, seed, the cycle's scores and the run's verdict (needs pandas)."""
        label = {name: c.label for c in self.conditions for name in c.runs}
        rows = [
            {"run": r.name, "condition": label.get(r.name, ""), "seed": r.config.get("seed"), **s, "verdict": r.verdict}
            for r in self.runs
            for s in r.scores
        ]
        return _pandas().DataFrame(rows)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("frame() needs pandas: pip install pandas (or use .scores, a list of dicts)") from None
    return pandas


# ---- running -------------------------------------------------------------------------------------------
def overrides_dict(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"train__learning_rate": 1e-4, "eval.samples_per_question": 2} -> nested config keys."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.replace("__", ".").split(".")
        if not all(parts):
            raise UserError(f"override {key!r}: a config key like cycles, train__learning_rate or 'train.learning_rate'")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key!r}: '{part}' is also set as a value; set '{part}' or its keys, not both")
        node[parts[-1]] = value
    return nested


def make_config(config_or_path: str | Path | dict[str, Any] | ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    """A validated config from a YAML path, a mapping or an ExperimentConfig, with overrides applied."""
    if isinstance(config_or_path, ExperimentConfig):
        data, source = config_or_path.model_dump(mode="json"), "config"
    elif isinstance(config_or_path, dict):
        data, source = config_or_path, "config"
    elif isinstance(config_or_path, (str, Path)):
        data, source = read_yaml_mapping(config_or_path), str(config_or_path)
    else:
        raise UserError(f"run(): give a config path, a mapping or an ExperimentConfig, not a {type(config_or_path).__name__}")
    return build_config(_deep_merge(data, overrides_dict(overrides)), source=source)


def run(
    config_or_path: str | Path | dict[str, Any] | ExperimentConfig, *, force: bool = False, quiet: bool = False, **overrides: Any
) -> RunResult:
    """Run (or resume) one experiment as `traitloop run` does: every cycle, scores.csv, the figure; then its result.

    overrides: config keys, `__` for each dot (train__learning_rate=1e-4) or dotted in a dict
    (**{"train.learning_rate": 1e-4}). force: move an old run made with another config aside.
    quiet: no progress bars. Bad input is a traitloop.UserError."""
    from traitloop.loop import Experiment
    from traitloop.progress import Reporter
    from traitloop.report import plot_trait_coherence

    config = make_config(config_or_path, **overrides)
    experiment = Experiment(config, force=force, reporter=Reporter(enabled=not quiet))
    rows = experiment.run()
    plot_trait_coherence(rows, experiment.store.figure_path(), experiment.title(), base=experiment.base_metrics)
    return load_run(config.run_dir)


# ---- loading -------------------------------------------------------------------------------------------
def _result(run, summary: dict[str, Any]) -> RunResult:
    from traitloop.report_data import judge_warning

    return RunResult(
        name=run.name,
        run_dir=run.path.resolve(),  # absolute: the result stays valid when the working directory changes
        config=run.config,
        scores=run.rows,
        base=run.base,
        verdict=summary["verdict"]["verdict"],
        rule=summary["verdict"]["rule"],
        summary=summary,
        judge_warning=judge_warning([run]),
    )


def load_run(run_dir: str | Path) -> RunResult:
    """A finished (or partly finished) run directory, with its verdict as `traitloop run` prints it."""
    from traitloop.report_data import load_collection, run_summary

    path = Path(run_dir)
    if path.is_dir() and not (path / "scores.csv").is_file():
        raise UserError(
            f"{path} is not a run directory with scores.csv (a sweep? use traitloop.load_sweep); a run writes it when it finishes"
        )
    run = load_collection([path], path.name).runs[0]
    return _result(run, run_summary(run))


def load_sweep(root: str | Path) -> SweepResult:
    """Every run under `root` (a sweep directory, or one run), its conditions and their verdicts across seeds."""
    from traitloop.report_data import load_collection, summarize

    root = Path(root)
    collection = load_collection([root], root.name)
    summary = summarize(collection)
    by_name = {s["run"]: s for s in summary["runs"]}
    runs = [_result(r, by_name[r.name]) for r in collection.runs]
    conditions = [
        ConditionResult(label=c["label"], trait=c["trait"], runs=c["runs"], verdict=c["overall"], reason=c["reason"], summary=c)
        for c in summary["conditions"]
    ]
    return SweepResult(root=root, runs=runs, conditions=conditions, skipped=collection.skipped)
