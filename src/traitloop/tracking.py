"""Experiment tracking: a run's config, every cycle's metrics and TRL's training curves in trackio, W&B or MLflow.

One tracking run per `traitloop run` process (config section `tracking`): `start` opens it with the
config as its config / params and the condition as its group, `log_cycle` logs each cycle's metrics
with step = cycle, `finish` closes it (failed when the run raised). The engine (loop.Experiment) calls
them through `SafeTracker`, which catches everything a tracker raises: an unreachable tracker or a
missing library is one warning, and the run goes on untracked with the same results. Tracking is not
science (config.NOT_SCIENCE): it never changes a run's hash, its resume, or its condition.

Resume: every process opens a new tracking run and logs every cycle, including cycles an earlier
process finished (read from their metrics.json), so the newest tracking run of a traitloop run is
always complete; TRL's training curves exist only for the cycles trained in that process.

Training curves (training.report_curves): while a cycle trains, the trainers get report_to = the backend,
and transformers' own callback logs each step into the run opened here (guarded in training.py).

Each library is imported only when its tracker starts (`pip install traitloop[tracking]`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from traitloop.config import ExperimentConfig, TrackingConfig
from traitloop.openai_client import redact_url
from traitloop.training import TrainingCurves, report_curves

log = logging.getLogger(__name__)

Metrics = dict[str, float]


class Tracker(Protocol):
    """What the engine needs from an experiment tracker. report_to: the transformers integration that
    takes TRL's training curves into the same run ("none": no curves)."""

    report_to: str

    def start(self, config: ExperimentConfig) -> None: ...

    def log_cycle(self, k: int, metrics: Metrics) -> None: ...

    def finish(self, ok: bool = True) -> None: ...


# ---- what is logged ---------------------------------------------------------------------------------
def run_name(config: ExperimentConfig) -> str:
    return config.tracking.run_name or config.name


def condition_group(config: ExperimentConfig) -> str:
    """The condition as a short readable name: runs with equal condition dicts (replications that differ
    only in seed, config.condition_dict) share it, so trackers group them together."""
    digest = hashlib.sha256(json.dumps(config.condition_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.setting}-{Path(config.trait).name}-{digest}"


def group(config: ExperimentConfig) -> str:
    return config.tracking.group or condition_group(config)


def run_config(config: ExperimentConfig) -> dict[str, Any]:
    """The tracking run's config: the whole experiment config (its server URLs hold no credentials: the config
    refuses them, config.no_credentials) plus what identifies the run and its condition."""
    return {
        **config.model_dump(mode="json"),
        "run_dir": str(Path(config.run_dir).resolve()),
        "science_hash": config.science_hash(),
        "condition": condition_group(config),
    }


def cycle_metrics(metrics: dict[str, Any], record: dict[str, Any]) -> Metrics:
    """One cycle's numbers for a tracker, from its metrics.json (`metrics`: trait and coherence means and
    intervals, diversity, n_* counts, judge_usage) and its manifest record (`record`: timings_s, the data
    policy's kept / dropped counts, the training stats). Nested numbers are flattened with "/", text and
    non-finite values are left out."""
    out: Metrics = {}
    for key, value in metrics.items():
        if key != "cycle":
            _put(out, key, value)
    _put(out, "time_s", record.get("timings_s"))
    _put(out, "training", record.get("train"))
    for key, value in record.items():  # counts: n_new, n_accumulated, n_seed_mixed, n_train_examples, ...
        if key.startswith("n_") and key not in out:
            _put(out, key, value)
    if "judge_usage" not in metrics:
        _put(out, "judge_usage", record.get("judge_usage"))
    return out


def stored_cycle_metrics(store, k: int) -> Metrics:
    """cycle_metrics of a finished cycle in a RunStore."""
    return cycle_metrics(store.metrics(k), store.manifest().get("cycles", {}).get(str(k), {}))


def _put(out: Metrics, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for sub, v in value.items():
            _put(out, f"{key}/{sub}", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[key] = value


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys with text values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


# ---- the trackers -----------------------------------------------------------------------------------
class NoTracker:
    """backend: none."""

    report_to = "none"

    def start(self, config: ExperimentConfig) -> None:
        pass

    def log_cycle(self, k: int, metrics: Metrics) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


class TrackioTracker:
    """A trackio run in project `tracking.project` (stored under TRACKIO_DIR, by default ~/.cache/huggingface/
    trackio; `trackio show` opens the dashboard), grouped by condition."""

    def __init__(self, settings: TrackingConfig):
        self.settings = settings
        self.report_to = "trackio" if settings.training_curves else "none"

    def start(self, config: ExperimentConfig) -> None:
        import trackio

        self.trackio = trackio
        with contextlib.redirect_stdout(sys.stderr):  # trackio prints its notes; stdout is the CLI's
            self.run = trackio.init(
                project=self.settings.project, name=run_name(config), group=group(config), config=run_config(config), embed=False
            )

    def log_cycle(self, k: int, metrics: Metrics) -> None:
        self.run.log(metrics, step=k)

    def finish(self, ok: bool = True) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            if self.trackio.context_vars.current_run.get() is self.run:
                self.trackio.finish()
            else:
                self.run.finish()


class WandbTracker:
    """A Weights & Biases run (WANDB_MODE=offline writes it under WANDB_DIR for a later `wandb sync`). Its
    cycle metrics are plotted against the metric `cycle`, TRL's curves against `train/global_step` (W&B's
    own step counts every log call, so it is not the cycle)."""

    def __init__(self, settings: TrackingConfig):
        self.settings = settings
        self.report_to = "wandb" if settings.training_curves else "none"
        self.defined: set[str] = set()

    def start(self, config: ExperimentConfig) -> None:
        import wandb

        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
        if not offline and not wandb.login(prompt=False, verify=False):  # never wait at a login prompt
            raise RuntimeError("not logged in to W&B: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline")
        settings = {} if "WANDB_INIT_TIMEOUT" in os.environ else {"init_timeout": 30}
        self.run = wandb.init(
            project=self.settings.project,
            name=run_name(config),
            group=group(config),
            config=run_config(config),
            job_type="traitloop-run",
            reinit="finish_previous",  # the global run, which transformers' callback logs into
            settings=wandb.Settings(**settings),
        )
        self.run.define_metric("cycle")
        self.run.define_metric("train/global_step")
        self.run.define_metric("train/*", step_metric="train/global_step")

    def log_cycle(self, k: int, metrics: Metrics) -> None:
        for key in metrics.keys() - self.defined:
            self.run.define_metric(key, step_metric="cycle")
            self.defined.add(key)
        self.run.log({"cycle": k, **metrics})

    def finish(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class MlflowTracker:
    """An MLflow run in experiment `tracking.project`, with the config as params (dotted keys) and the group
    as tag traitloop.group. An http(s) tracking URI must accept a connection within a few seconds, and
    MLflow's own HTTP retries are shortened (MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT, unless set)."""

    connect_timeout_s = 5.0

    def __init__(self, settings: TrackingConfig):
        self.settings = settings
        self.report_to = "mlflow" if settings.training_curves else "none"

    def start(self, config: ExperimentConfig) -> None:
        uri = self.settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            _check_reachable(uri, self.connect_timeout_s)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        import mlflow

        self.mlflow = mlflow
        if self.settings.tracking_uri:
            mlflow.set_tracking_uri(self.settings.tracking_uri)
        mlflow.set_experiment(self.settings.project)
        tags = {"traitloop.group": group(config), "traitloop.condition": condition_group(config), "traitloop.run_dir": str(config.run_dir)}
        run = mlflow.start_run(run_name=run_name(config), tags=tags, nested=mlflow.active_run() is not None)
        self.run_id = run.info.run_id
        limit = mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
        params = [(k, v) for k, v in _flat(run_config(config)).items() if len(v) <= limit]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(params[i : i + 100]), run_id=self.run_id)

    def log_cycle(self, k: int, metrics: Metrics) -> None:
        clean = {re.sub(r"[^0-9A-Za-z_\-. :/]", "_", key): value for key, value in metrics.items()}
        self.mlflow.log_metrics(clean, step=k, run_id=self.run_id)

    def finish(self, ok: bool = True) -> None:
        status = "FINISHED" if ok else "FAILED"
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run(status=status)
        else:
            self.mlflow.MlflowClient().set_terminated(self.run_id, status=status)


def _check_reachable(uri: str, timeout: float) -> None:
    """An http(s) tracking server must accept a TCP connection, or the run would wait on MLflow's retries."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"MLflow tracking server {redact_url(uri)} is unreachable ({err})") from None


BACKENDS: dict[str, type] = {"none": NoTracker, "trackio": TrackioTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def make_tracker(settings: TrackingConfig) -> Tracker:
    """The tracker of config section `tracking` (not started)."""
    cls = BACKENDS[settings.backend]
    return cls() if cls is NoTracker else cls(settings)


# ---- the engine's view: nothing a tracker does can stop or change a run --------------------------------
class SafeTracker:
    """A tracker whose every call is caught: the first failure is one warning (through the reporter, else a
    logging warning), and from then on the run is untracked (a no-op; the broken run is not finished, as
    finishing it could wait on the same unreachable server)."""

    def __init__(self, tracker: Tracker, reporter=None):
        self.tracker = tracker
        self.reporter = reporter
        self.live = not isinstance(tracker, NoTracker)
        self.training_curves: TrainingCurves | None = None

    def warn(self, message: str) -> None:
        try:
            if self.reporter is None:
                raise RuntimeError("no reporter")
            from rich.markup import escape

            self.reporter.log(f"[yellow]warning:[/yellow] tracking: {escape(message)}")
        except Exception:
            log.warning("tracking: %s", message)

    def _call(self, what: str, call) -> None:
        if not self.live:
            return
        try:
            call()
        except Exception as err:
            self.live = False
            if self.training_curves is not None:
                self.training_curves.failed = True
            name = type(self.tracker).__name__
            why = f"{type(err).__name__}: {err}" if not isinstance(err, ImportError) else f"{err} (pip install traitloop[tracking])"
            self.warn(f"{name} failed to {what} ({why}); the run goes on untracked")

    def start(self, config: ExperimentConfig) -> None:
        self._call("start", lambda: self.tracker.start(config))
        report_to = getattr(self.tracker, "report_to", "none")
        if self.live and report_to != "none":
            self.training_curves = TrainingCurves(report_to, self.warn)

    def log_cycle(self, k: int, metrics: Metrics) -> None:
        self._call(f"log cycle {k}", lambda: self.tracker.log_cycle(k, metrics))

    def log_stored_cycle(self, store, k: int) -> None:
        """log_cycle with the cycle's metrics as the run directory holds them (metrics.json, manifest)."""
        if self.live:
            self._call(f"log cycle {k}", lambda: self.tracker.log_cycle(k, stored_cycle_metrics(store, k)))

    def finish(self, ok: bool = True) -> None:
        self._call("finish", lambda: self.tracker.finish(ok))
        self.live = False

    @contextlib.contextmanager
    def tracking(self, config: ExperimentConfig) -> Iterator[SafeTracker]:
        """start ... finish, also when the block raises (then the tracking run is marked failed)."""
        self.start(config)
        ok = False
        try:
            yield self
            ok = True
        finally:
            self.finish(ok)

    def curves(self):
        """The block in which a cycle trains: TRL's training curves go to the tracking run."""
        return report_curves(self.training_curves if self.live else None)


def tracker_for(settings: TrackingConfig, tracker: Tracker | None = None, reporter=None) -> SafeTracker:
    """The engine's tracker: `tracker` if given (tests, notebooks), else the config's; made safe."""
    return tracker if isinstance(tracker, SafeTracker) else SafeTracker(tracker or make_tracker(settings), reporter)
