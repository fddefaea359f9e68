"""traitloop: does a trait amplify when a model is trained on its own outputs, generation after generation?"""

import os

# oneDNN (torch's CPU matmul library) caches up to 1024 compiled matmul primitives by default, and training
# sees new shapes with every sequence length. Under model.matmul_precision "medium" that cache showed in the
# peak memory; 64 keeps it lower at the same speed (measured in BENCHMARKS.md). oneDNN reads the variable when it first compiles a primitive, so setting it
# here, before any model runs, is in time; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

from traitloop.config import ExperimentConfig, load_config
from traitloop.errors import UserError

__version__ = "0.1.0"


def __getattr__(name: str):
    # Experiment pulls in torch and transformers: import it only when asked for.
    if name == "Experiment":
        from traitloop.loop import Experiment

        return Experiment
    if name in API:  # the Python API (docs/python-api.md); imported on first use
        from traitloop import api

        return getattr(api, name)
    raise AttributeError(name)


API = ("run", "load_run", "load_sweep", "RunResult", "SweepResult", "ConditionResult")

__all__ = ["Experiment", "ExperimentConfig", "UserError", "load_config", "__version__", *API]
