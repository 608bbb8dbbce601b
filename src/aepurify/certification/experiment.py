"""From a certification config to a result: load the test images, train or reuse the classifier
and the denoiser (the model cache), then certify and attack the smoothed classifier."""

from __future__ import annotations

from pathlib import Path

from ..data import load_dataset
from ..evaluation.experiment import _lazy, model_record
from ..evaluation.lock import output_lock
from ..training import Trained, get_classifier, get_purifier
from ..training.entry_models import get_entry_classifier, get_entry_purifier
from ..utils import pick_device, seed_everything
from .api import run_certification
from .config import CertifyConfig
from .result import CertifyResult


def run_config(config: CertifyConfig, out: str | Path, *, data_dir: str | Path | None = None,
               cache_dir: str | Path | None = None, device: str | None = None) -> CertifyResult:
    """Train or reuse the config's models and certify them; write the run's files to ``out``
    (certify.db makes an interrupted run resume).

    Raises:
        DataError, CheckpointError, ConfigError: bad data, checkpoints or config.
        OutputLockedError: another run writes to ``out``.
    """
    settings = config.settings()
    dev = pick_device(device or config.device)
    data_dir = data_dir if data_dir is not None else config.data_dir
    with output_lock(out):
        seed_everything(config.seed)
        full_test = load_dataset(config.dataset, "test", data_dir)
        test = full_test.take(config.n_test)
        x, y = test.tensors(slice(None), dev)
        train = _lazy(lambda: load_dataset(config.dataset, "train", data_dir))
        common = {"train_data": train, "cache_dir": cache_dir, "device": dev,
                  "data_dir": data_dir}
        c = config.classifier
        if c.entry_point is not None:
            clf = get_entry_classifier(c.entry_point, c.kwargs, config.dataset, sample=x[:8],
                                       mean=c.mean, std=c.std, pretrained=c.pretrained,
                                       settings=c.train, test_data=full_test, **common)
        else:
            clf = get_classifier(c.arch, config.dataset, params=c.params,  # type: ignore[arg-type]
                                 settings=c.train, checkpoint=c.checkpoint,
                                 test_data=full_test, **common)
        pur = _purifier(config, clf, x, common)
        clf.module.name = c.row_label
        models = {f"classifier:{c.row_label}": model_record(clf)}
        if pur is not None:
            pur.module.name = config.purifier.row_label  # type: ignore[union-attr]
            models[f"purifier:{pur.module.name}"] = model_record(pur)
        record = {"config": config.model_dump(mode="json"), "models": models,
                  "test_source": test.source}
        return run_certification(clf.module, pur.module if pur is not None else None, x, y,
                                 settings, Path(out), keep=True, device=dev,
                                 dataset=config.dataset, name=config.name, record=record)


def _purifier(config: CertifyConfig, clf: Trained, x, common: dict) -> Trained | None:
    p = config.purifier
    if p is None:
        return None
    if p.entry_point is not None:
        return get_entry_purifier(p.entry_point, p.kwargs, config.dataset, sample=x,
                                  label=p.row_label, differentiable=p.differentiable,
                                  stochastic=p.stochastic, settings=p.train, classifier=clf,
                                  seed=config.seed, **common)
    return get_purifier(p.name, config.dataset, params=p.params,  # type: ignore[arg-type]
                        settings=p.train, checkpoint=p.checkpoint, classifier=clf,
                        denoiser=config.denoiser, **common)
