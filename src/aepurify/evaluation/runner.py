"""The grid runner: classifier x purifiers x threat models x attacks x epsilons.

Every row is committed to ``DIR/results.db`` as soon as it is done; re-running skips rows that
were finished with the same spec (models, settings, seed), so a killed run resumes and loses
nothing. Gray-box and transfer examples do not depend on the purifier, so they are crafted once
per (attack, epsilon) and evaluated under every purifier.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks import ThreatModel, attack_module, build_attack, resolve_threat_model
from ..data import ImageDataset, dataset_spec, load_dataset
from ..errors import ConfigError, NotApplicableError
from ..purifiers import DefendedClassifier, Purifier, create_purifier
from ..training import Trained, get_classifier, get_purifier
from ..utils import batches, derive_seed, pick_device, progress, seed_everything, stable_hash
from ..version import code_version
from .config import AttackEntry, ExperimentConfig, PurifierEntry
from .store import ResultRow, ResultStore, eps_key

log = logging.getLogger(__name__)

# Bump when the way rows are computed changes, so stale rows are recomputed.
RUNNER_VERSION = 1
CLEAN = "none"


@dataclass
class Cell:
    """A planned row of the grid."""

    purifier: str
    threat_model: ThreatModel | None  # None for clean accuracy
    attack: AttackEntry | None
    eps: float
    key: tuple = ()
    spec_hash: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Crafted without the purifier (gray-box, transfer): shared across purifiers."""
        return self.threat_model is not None and not self.threat_model.uses_purifier_gradients


@dataclass
class Experiment:
    """Everything a run needs, prepared: data, models, the planned cells."""

    config: ExperimentConfig
    out_dir: Path
    device: torch.device
    test: ImageDataset
    classifier: Trained
    source: Trained | None
    purifiers: dict[str, Trained]
    cells: list[Cell]
    skipped: list[dict[str, str]]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels (N,) of ``model`` on images x (N, C, H, W) in [0, 1]."""
    model.eval()
    return torch.cat([model(x[sl]).argmax(1) for sl in batches(x.shape[0], batch_size)])


def craft(attack_fn: Callable[[nn.Module], Any], module: nn.Module, x: torch.Tensor,
          y: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    """Adversarial examples for all of x, batch by batch, with a progress bar."""
    atk = attack_fn(module)
    out = []
    slices = list(batches(x.shape[0], batch_size))
    for sl in progress(slices, desc=desc, unit="batch"):
        out.append(atk(x[sl], y[sl]).detach())
    return torch.cat(out)


def _lazy(fn: Callable[[], ImageDataset]) -> Callable[[], ImageDataset]:
    cache: list[ImageDataset] = []

    def get() -> ImageDataset:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def prepare(config: ExperimentConfig, out_dir: str | Path, *, data_dir: str | Path | None = None,
            cache_dir: str | Path | None = None, device: str | None = None) -> Experiment:
    """Load data, train or reuse every model, and plan the cells of the grid.

    Raises:
        DataError, CheckpointError, ConfigError: bad data, checkpoints or config.
    """
    out = Path(out_dir)
    dev = pick_device(device or config.device)
    data_dir = data_dir if data_dir is not None else config.data_dir
    seed_everything(config.seed)
    test = load_dataset(config.dataset, "test", data_dir).take(config.n_test)
    train = _lazy(lambda: load_dataset(config.dataset, "train", data_dir))
    c = config.classifier
    classifier = get_classifier(c.arch, config.dataset, params=c.params, settings=c.train,
                                checkpoint=c.checkpoint, train_data=train, test_data=test,
                                cache_dir=cache_dir, device=dev)
    source = None
    if config.transfer_source is not None:
        s = config.transfer_source
        source = get_classifier(s.arch, config.dataset, params=s.params, settings=s.train,
                                checkpoint=s.checkpoint, train_data=train, test_data=test,
                                cache_dir=cache_dir, device=dev)
    purifiers: dict[str, Trained] = {}
    if config.include_undefended:
        purifiers[CLEAN] = Trained(create_purifier("none").to(dev), "none", "untrained", None, {})
    for p in config.purifiers:
        purifiers[p.row_label] = get_purifier(
            p.name, config.dataset, params=p.params, settings=p.train, checkpoint=p.checkpoint,
            classifier=classifier, train_data=train, cache_dir=cache_dir, device=dev)
    cells, skipped = plan(config, classifier, source, purifiers, len(test))
    return Experiment(config, out, dev, test, classifier, source, purifiers, cells, skipped)


def plan(config: ExperimentConfig, classifier: Trained, source: Trained | None,
         purifiers: dict[str, Trained], n: int) -> tuple[list[Cell], list[dict[str, str]]]:
    """The cells to compute, in run order, and the combinations skipped (with the reason)."""
    entries: dict[str, PurifierEntry | None] = {p.row_label: p for p in config.purifiers}
    entries.setdefault(CLEAN, None)
    cells: list[Cell] = []
    skipped: list[dict[str, str]] = []
    common = {"v": RUNNER_VERSION, "dataset": config.dataset, "n": n, "seed": config.seed,
              "classifier": classifier.key}

    def threat_models_for(label: str) -> list[str]:
        if label == CLEAN:  # every gradient threat model equals gray-box without a purifier
            return ["gray-box"] + [t for t in config.all_threat_models()
                                   if t.split("+")[0] == "transfer"]
        entry = entries[label]
        return (entry.threat_models if entry and entry.threat_models else config.threat_models)

    for label, trained in purifiers.items():
        cell = Cell(label, None, None, 0.0)
        cell.key = (config.dataset, config.classifier.row_label, label, CLEAN, CLEAN, CLEAN, 0.0)
        cell.spec_hash = stable_hash({**common, "purifier": trained.key})
        cells.append(cell)
    for attack in config.attacks:
        for eps in attack.eps:
            for label, trained in purifiers.items():
                if attack.purifiers is not None and label not in attack.purifiers:
                    continue
                purifier: Purifier = trained.module  # type: ignore[assignment]
                entry = entries.get(label)
                for tm_text in threat_models_for(label):
                    if attack.threat_models and tm_text not in attack.threat_models:
                        continue
                    samples = (entry.eot_samples if entry and entry.eot_samples
                               else config.eot_samples)
                    try:
                        tm = resolve_threat_model(tm_text, purifier, samples)
                    except NotApplicableError as exc:
                        reason = {"purifier": label, "threat_model": tm_text, "reason": str(exc)}
                        if reason not in skipped:
                            skipped.append(reason)
                        continue
                    details = {"attack_params": attack.params, "restarts": attack.restarts,
                               "eot_samples": tm.eot_samples if tm.eot else None,
                               "surrogate": purifier.surrogate_name() if tm.base == "bpda" else None}
                    cell = Cell(label, tm, attack, eps, details=details)
                    cell.key = (config.dataset, config.classifier.row_label, label, tm.name,
                                attack.row_label, attack.norm, eps_key(eps))
                    cell.spec_hash = stable_hash({
                        **common, "purifier": trained.key, "tm": tm.name, "k": tm.eot_samples,
                        "source": source.key if (source and tm.base == "transfer") else None,
                        "attack": attack.name, "norm": attack.norm, "eps": eps_key(eps),
                        "params": attack.params, "restarts": attack.restarts})
                    cells.append(cell)
    # run order: clean rows, then by (attack, eps), shared crafts first, so a shared batch of
    # adversarial examples is made once and dropped before the next one
    order = {id(c): i for i, c in enumerate(cells)}
    cells.sort(key=lambda c: (c.attack is not None,
                              config.attacks.index(c.attack) if c.attack else -1, c.eps,
                              not c.shared, order[id(c)]))
    check_unique_keys(cells)
    return cells, skipped


def run_cells(exp: Experiment, store: ResultStore) -> None:
    """Compute every cell not yet finished in ``store`` (commits after each row)."""
    cfg = exp.config
    x_all, y_all = exp.test.tensors(slice(None), exp.device)
    todo = [c for c in exp.cells if not store.has(c.key, c.spec_hash)]
    if len(todo) < len(exp.cells):
        log.info("resuming: %d of %d rows already finished", len(exp.cells) - len(todo),
                 len(exp.cells))
    shared: dict[tuple, tuple[list[torch.Tensor], float]] = {}
    shared_for: tuple | None = None
    for cell in progress(todo, desc="evaluate", total=len(todo), leave=True, unit="row"):
        trained = exp.purifiers[cell.purifier]
        defended = DefendedClassifier(exp.classifier.module, trained.module).eval()
        start = time.perf_counter()
        if cell.attack is None:
            seed_everything(derive_seed(cfg.seed, "eval", cell.key))
            correct = (predict(defended, x_all, cfg.batch_size) == y_all).cpu().numpy()
            seconds = time.perf_counter() - start
        else:
            attack, tm = cell.attack, cell.threat_model
            assert tm is not None
            group = (cfg.attacks.index(attack), eps_key(cell.eps))
            if group != shared_for:  # a new (attack, eps): drop the previous shared examples
                shared.clear()
                shared_for = group
            if cell.shared and (tm.base, *group) in shared:
                advs, craft_seconds = shared[(tm.base, *group)]
            else:
                advs, craft_seconds = _craft_cell(exp, cell, defended, x_all, y_all)
                if cell.shared:
                    shared[(tm.base, *group)] = (advs, craft_seconds)
            eval_start = time.perf_counter()
            correct = np.ones(len(y_all), dtype=bool)
            for r, x_adv in enumerate(advs):
                seed_everything(derive_seed(cfg.seed, "eval", cell.key, r))
                correct &= (predict(defended, x_adv, cfg.batch_size) == y_all).cpu().numpy()
            seconds = craft_seconds + time.perf_counter() - eval_start
        c = cell.key
        store.put(ResultRow(*c[:6], eps=c[6], n=len(correct), accuracy=float(correct.mean()),
                            seconds=seconds, correct=correct, spec_hash=cell.spec_hash,
                            details=cell.details))


def _craft_cell(exp: Experiment, cell: Cell, defended: DefendedClassifier, x: torch.Tensor,
                y: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """Adversarial examples of one cell, one tensor per restart, and the seconds it took."""
    cfg, attack, tm = exp.config, cell.attack, cell.threat_model
    assert attack is not None and tm is not None
    start = time.perf_counter()
    if tm.base == "adaptive":
        purifier = defended.purifier

        def attack_fn(_: nn.Module):
            return purifier.adaptive_attack(attack.name, defended, cell.eps, attack.norm,  # type: ignore[operator]
                                            **attack.params)
        module: nn.Module = defended
    else:
        module = attack_module(tm, defended, exp.source.module if exp.source else None)

        def attack_fn(m: nn.Module):
            return build_attack(attack.name, m, cell.eps, attack.norm, attack.params)
    owner = "shared" if cell.shared else cell.purifier
    advs = []
    for r in range(attack.restarts):
        seed_everything(derive_seed(cfg.seed, "craft", tm.name, owner, attack.row_label,
                                    attack.norm, eps_key(cell.eps), r))
        desc = f"{attack.row_label} {attack.norm} eps={cell.eps:.4g} {tm.name} " \
               f"{'' if cell.shared else cell.purifier}".strip()
        advs.append(craft(attack_fn, module, x, y, cfg.batch_size, desc))
    return advs, time.perf_counter() - start


def run_record(exp: Experiment, argv: list[str] | None = None) -> dict[str, Any]:
    """What makes the run reproducible: seed, config, code version, environment, models."""
    spec = dataset_spec(exp.config.dataset)
    return {
        "config": exp.config.model_dump(mode="json"),
        "seed": exp.config.seed,
        "code_version": code_version(),
        "command": " ".join(argv if argv is not None else sys.argv),
        "python": platform.python_version(), "torch": torch.__version__,
        "device": str(exp.device), "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "dataset_note": spec.note,
        "test_images": len(exp.test), "test_source": exp.test.source,
        "models": {
            "classifier": _model_record(exp.classifier),
            **({"transfer_source": _model_record(exp.source)} if exp.source else {}),
            **{f"purifier:{k}": _model_record(v) for k, v in exp.purifiers.items()},
        },
        "skipped": exp.skipped,
    }


def _model_record(t: Trained) -> dict[str, Any]:
    return {"key": t.key, "origin": t.origin, "path": str(t.path) if t.path else None,
            "metrics": t.config.get("metrics"), "hparams": getattr(t.module, "hparams", {}),
            "properties": t.module.properties() if isinstance(t.module, Purifier) else None}


def planned_rows(exp: Experiment, store: ResultStore) -> list[ResultRow]:
    """The finished rows of this experiment's cells, in plan order."""
    return store.rows([c.key for c in exp.cells])


def check_unique_keys(cells: list[Cell]) -> None:
    keys = [c.key for c in cells]
    if len(keys) != len(set(keys)):
        raise ConfigError("two cells of the grid share a row key; give attacks distinct labels")
