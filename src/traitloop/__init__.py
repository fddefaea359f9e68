"""traitloop: does a trait amplify when a model is trained on its own outputs, generation after generation?"""

import os

# oneDNN (torch's CPU matmul library) caches up to 1024 compiled matmul primitives by default. Under
# model.matmul_precision "medium" each cached primitive keeps its own bf16 buffers, and training sees a new
# shape for every sequence length, so the cache grew by about 0.5 GiB per run (docs/ARCHITECTURE.md,
# "Memory"). 64 keeps the speed (a step re-creates few primitives) and bounds that memory. oneDNN reads the
# variable when it first compiles a primitive, so setting it here, before any model runs, is in time;
# a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

from traitloop.config import ExperimentConfig, load_config
from traitloop.errors import UserError

__version__ = "0.1.0"


def __getattr__(name: str):
    # Experiment pulls in torch and transformers: import it only when asked for.
    if name == "Experiment":
        from traitloop.loop import Experiment

        return Experiment
    raise AttributeError(name)


__all__ = ["Experiment", "ExperimentConfig", "UserError", "load_config", "__version__"]
