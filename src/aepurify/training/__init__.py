"""Training loops and the train-or-reuse model cache."""

from .cache import Trained, get_classifier, get_purifier, model_cache_dir
from .loops import accuracy, fit_classifier, fit_purifier, run_minibatches
from .settings import TrainSettings

__all__ = ["TrainSettings", "Trained", "get_classifier", "get_purifier", "model_cache_dir",
           "accuracy", "fit_classifier", "fit_purifier", "run_minibatches"]
