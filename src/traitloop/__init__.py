"""traitloop: does a trait amplify when a model is trained on its own outputs, generation after generation?"""

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
