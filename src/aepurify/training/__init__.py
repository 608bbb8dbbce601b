"""Training loops and the train-or-reuse model cache."""

from .cache import get_purifier
from .data_parallel import DataParallel, active_data_parallel, data_parallel
from .loops import accuracy, fit_purifier, run_minibatches
from .model_cache import Trained, get_classifier, model_cache_dir
from .recipes import fit_classifier
from .settings import TrainSettings

__all__ = ["TrainSettings", "Trained", "get_classifier", "get_purifier", "model_cache_dir",
           "accuracy", "fit_classifier", "fit_purifier", "run_minibatches", "DataParallel",
           "data_parallel", "active_data_parallel"]
