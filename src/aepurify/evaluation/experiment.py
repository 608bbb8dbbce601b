"""The registry and training side of ``evaluate``: from a config to ready models, test images and
the planned cells (a :class:`~aepurify.evaluation.run.Workload`), and the run record.

This is the only stage that reads registry names and trains or loads models; the stages after
it (run, summarise and check, report) see modules, tensors, rows and a record dict.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..allocator import allocator_record
from ..data import ImageDataset, dataset_spec, load_dataset
from ..precision import resolve_precision
from ..purifiers import Purifier, create_purifier, purifier_class
from ..training import Trained, get_classifier, get_purifier
from ..training.entry_models import get_entry_classifier, get_entry_purifier
from ..utils import pick_device, seed_everything
from ..version import code_version
from .cells import Cell
from .config import ClassifierEntry, ExperimentConfig, PurifierEntry
from .detector_setup import DefenseDetectors, build_detectors, held_out, reads_purifier
from .plan import plan_grid
from .run import Workload
from .store import CLEAN


@dataclass
class Experiment:
    """A config made ready: data, trained models, the planned cells.

    Attributes:
        config: the validated config.
        out_dir: output folder.
        device: where models run.
        test: the first ``n_test`` test images.
        train: returns the training split (loaded on first call).
        classifiers: classifier label -> trained classifier.
        source: the transfer source classifier, if any.
        purifiers: (classifier label, purifier label) -> ready purifier.
        workload: what the run stage reads (the same models as modules, the test images on
            the device, the planned cells).
        skipped: (purifier, threat model, reason) of combinations that do not apply.
        detectors: (classifier label, purifier label) -> the calibrated detectors of a defense
            that rejects.
    """

    config: ExperimentConfig
    out_dir: Path
    device: torch.device
    test: ImageDataset
    train: Callable[[], ImageDataset]
    classifiers: dict[str, Trained]
    source: Trained | None
    purifiers: dict[tuple[str, str], Trained]
    workload: Workload
    skipped: list[dict[str, str]] = field(default_factory=list)
    detectors: dict[tuple[str, str], DefenseDetectors] = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        """The planned rows, in run order."""
        return self.workload.cells


def _lazy(fn: Callable[[], ImageDataset]) -> Callable[[], ImageDataset]:
    cache: list[ImageDataset] = []

    def get() -> ImageDataset:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def _get_classifier(entry: ClassifierEntry, config: ExperimentConfig, exp_args: dict) -> Trained:
    if entry.entry_point is not None:
        return get_entry_classifier(entry.entry_point, entry.kwargs, config.dataset,
                                    sample=exp_args["test_data"].tensors(slice(0, 8))[0],
                                    mean=entry.mean, std=entry.std, pretrained=entry.pretrained,
                                    settings=entry.train, **exp_args)
    return get_classifier(entry.arch, config.dataset, params=entry.params, settings=entry.train,
                          checkpoint=entry.checkpoint, **exp_args)


def _get_purifier(p: PurifierEntry, config: ExperimentConfig, clf: Trained, x: torch.Tensor,
                  common: dict[str, Any]) -> Trained:
    settings = p.train
    if reads_purifier(p):  # its detectors' calibration images stay out of its training
        settings = held_out(settings, p.calibration_images, common["train_data"])
    if p.entry_point is not None:
        return get_entry_purifier(p.entry_point, p.kwargs, config.dataset, sample=x,
                                  label=p.row_label, differentiable=p.differentiable,
                                  stochastic=p.stochastic, settings=settings, classifier=clf,
                                  seed=config.seed, **common)
    return get_purifier(p.name, config.dataset, params=p.params, settings=settings,  # type: ignore[arg-type]
                        checkpoint=p.checkpoint, classifier=clf, **common)


def _needs_classifier(p: PurifierEntry) -> bool:
    """Whether each classifier gets its own copy (trained against it); an entry point's
    purifier is built per classifier, as its factory may return one that trains against it."""
    return p.entry_point is not None or purifier_class(p.name).needs_classifier  # type: ignore[arg-type]


def prepare(config: ExperimentConfig, out_dir: str | Path, *, data_dir: str | Path | None = None,
            cache_dir: str | Path | None = None, device: str | None = None) -> Experiment:
    """Load data, train or reuse every model, and plan the cells of the grid.

    Raises:
        DataError, CheckpointError, ConfigError: bad data, checkpoints or config.
    """
    dev = pick_device(device or config.device)
    data_dir = data_dir if data_dir is not None else config.data_dir
    seed_everything(config.seed)
    full_test = load_dataset(config.dataset, "test", data_dir)
    test = full_test.first(config.n_test)
    train = _lazy(lambda: load_dataset(config.dataset, "train", data_dir))
    # a classifier trained here records its accuracy on the whole test split, not on n_test
    common = {"train_data": train, "test_data": full_test, "cache_dir": cache_dir, "device": dev,
              "data_dir": data_dir}
    classifiers = {c.row_label: _get_classifier(c, config, common) for c in config.classifiers}
    source = (_get_classifier(config.transfer_source, config, common)
              if config.transfer_source is not None else None)
    purifiers: dict[tuple[str, str], Trained] = {}
    first = next(iter(classifiers))
    x, y = test.tensors(slice(None), dev)
    pur_args = {"train_data": train, "cache_dir": cache_dir, "device": dev, "data_dir": data_dir}
    for clf_label, clf in classifiers.items():
        if config.include_undefended:
            purifiers[(clf_label, CLEAN)] = Trained(create_purifier("none").to(dev), "none",
                                                    "untrained", None, {})
        for p in config.purifiers:
            if clf_label != first and not _needs_classifier(p):
                purifiers[(clf_label, p.row_label)] = purifiers[(first, p.row_label)]
                continue
            purifiers[(clf_label, p.row_label)] = _get_purifier(p, config, clf, x, pur_args)
    precision = resolve_precision(config.precision, dev)
    for t in purifiers.values():
        t.module.set_precision(precision)  # inner optimisations (APuDAE's refinement)
    detectors = {(clf_label, p.row_label): build_detectors(
        config, p, purifiers[(clf_label, p.row_label)], clf, train, dev,
        {"cache_dir": cache_dir, "data_dir": data_dir})
        for clf_label, clf in classifiers.items() for p in config.purifiers if p.detectors}
    plan = plan_grid(config, classifiers, purifiers, source, len(test), precision,
                     {k: d.key for k, d in detectors.items()})
    workload = Workload(
        x, y, list(test.classes), {label: t.module for label, t in classifiers.items()},
        {key: t.module for key, t in purifiers.items()},  # type: ignore[misc]
        dev, config.batch_size, config.seed, plan.cells,
        source.module if source is not None else None, precision,
        {k: d.detectors for k, d in detectors.items()})
    return Experiment(config, Path(out_dir), dev, test, train, classifiers, source, purifiers,
                      workload, plan.skipped, detectors)


def run_record(exp: Experiment, argv: list[str] | None = None) -> dict[str, Any]:
    """What makes the run reproducible: seed, config, code version, environment, models.

    Besides the whole config it names what the report shows at the top level (``name``,
    ``dataset``, ``classifiers``), so the report stage reads a record, not a config.
    """
    spec = dataset_spec(exp.config.dataset)
    models: dict[str, Any] = {}
    for label, clf in exp.classifiers.items():
        models[f"classifier:{label}"] = model_record(clf)
    if exp.source is not None:
        models["transfer_source"] = model_record(exp.source)
    for (clf_label, label), pur in exp.purifiers.items():
        name = f"purifier:{label}" if len(exp.classifiers) == 1 else f"purifier:{clf_label}/{label}"
        models[name] = model_record(pur)
    detectors: dict[str, Any] = {}
    for (clf_label, label), found in exp.detectors.items():
        name = label if len(exp.classifiers) == 1 else f"{clf_label}/{label}"
        detectors[name] = found.calibration
        for det, ae in found.autoencoders.items():
            models[f"detector-autoencoder:{name}/{det}"] = model_record(ae)
    return {
        "name": exp.config.name,
        "dataset": exp.config.dataset,
        "classifiers": list(exp.classifiers),
        "config": exp.config.model_dump(mode="json"),
        "seed": exp.config.seed,
        "code_version": code_version(),
        "command": " ".join(argv if argv is not None else sys.argv),
        "python": platform.python_version(), "torch": torch.__version__,
        "device": str(exp.device), "platform": platform.platform(),
        "precision": exp.workload.precision,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "allocator": allocator_record(),
        "dataset_note": spec.note,
        "test_images": len(exp.test), "test_source": exp.test.source,
        "models": models,
        "detectors": detectors,
        "skipped": exp.skipped,
    }


def model_record(t: Trained) -> dict[str, Any]:
    """A model's entry in the run record: key, origin, checkpoint, training metrics,
    hyper-parameters and (for a purifier) its declared properties."""
    record = {"key": t.key, "origin": t.origin, "path": str(t.path) if t.path else None,
              "metrics": t.config.get("metrics"), "hparams": getattr(t.module, "hparams", {}),
              "properties": t.module.properties() if isinstance(t.module, Purifier) else None}
    if t.config.get("entry_point"):  # a user's factory: which one, and what the probes found
        record["entry_point"] = t.config["entry_point"]
        if t.config.get("properties"):
            record["probed"] = t.config["properties"]
    return record
