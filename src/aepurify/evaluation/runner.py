"""The grid runner: classifiers x purifiers x threat models x attacks x epsilons.

Every row is committed to ``DIR/results.db`` as soon as it is done; re-running skips rows that
were finished with the same spec (models, settings, seed), so a killed run resumes and loses
nothing. Gray-box and transfer examples do not depend on the purifier, so they are crafted once
per (classifier, attack, epsilon) and evaluated under every purifier.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks import (Attack, ThreatModel, attack_module, build_attack, check_attack,
                       resolve_threat_model)
from ..checks import validated
from ..data import ImageDataset, dataset_spec, load_dataset
from ..errors import ConfigError, NotApplicableError
from ..purifiers import DefendedClassifier, Purifier, create_purifier, purifier_class
from ..training import Trained, get_classifier, get_purifier
from ..utils import batches, derive_seed, pick_device, progress, seed_everything, stable_hash
from ..version import code_version
from .config import (SANITY_PREFIX, AttackEntry, ClassifierEntry, ExperimentConfig,
                     PurifierEntry)
from .store import ResultRow, ResultStore, eps_key

log = logging.getLogger(__name__)

# Bump when the way rows are computed changes, so stale rows are recomputed.
RUNNER_VERSION = 2
CLEAN = "none"
# adversarial images kept per row for the report's example figures
EXAMPLES_PER_ROW = 4


@dataclass
class Cell:
    """A planned row of the grid.

    Attributes:
        classifier, purifier: labels of the defended classifier's parts.
        threat_model: resolved threat model, None for clean accuracy.
        attack: the attack entry, None for clean accuracy.
        attack_index: position of the attack entry in the config (-1 for clean).
        eps: budget on the [0, 1] scale.
        n: number of test images (the first n).
        key: the row key in the results store.
        spec_hash: hash of everything that determines the row.
        details: facts recorded with the row.
    """

    classifier: str
    purifier: str
    threat_model: ThreatModel | None
    attack: AttackEntry | None
    attack_index: int
    eps: float
    n: int
    key: tuple = ()
    spec_hash: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Crafted without the purifier (gray-box, transfer): shared across purifiers."""
        return self.threat_model is not None and not self.threat_model.uses_purifier_gradients

    @property
    def craft_owner(self) -> tuple[str, str]:
        """Who the examples are crafted for: transfer examples are shared by all classifiers,
        gray-box ones by all purifiers of one classifier, the rest belong to one cell."""
        assert self.threat_model is not None
        if self.threat_model.base == "transfer":
            return ("source", "shared")
        return (self.classifier, "shared" if self.shared else self.purifier)


@dataclass
class Experiment:
    """Everything a run needs, prepared: data, models, the planned cells.

    Attributes:
        config: the validated config.
        out_dir: output folder.
        device: where models run.
        test: the first ``n_test`` test images.
        train: returns the training split (loaded on first call).
        classifiers: classifier label -> trained classifier.
        source: the transfer source classifier, if any.
        purifiers: (classifier label, purifier label) -> ready purifier.
        cells: the planned rows, in run order.
        skipped: (purifier, threat model, reason) of combinations that do not apply.
        failed: rows whose computation raised in this run (``row``, ``error``): not stored, so
            the next run of the same output folder retries them.
    """

    config: ExperimentConfig
    out_dir: Path
    device: torch.device
    test: ImageDataset
    train: Callable[[], ImageDataset]
    classifiers: dict[str, Trained]
    source: Trained | None
    purifiers: dict[tuple[str, str], Trained]
    cells: list[Cell] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def defended(self, classifier: str, purifier: str) -> DefendedClassifier:
        """The defended classifier ``classifier(purifier(x))`` of two labels, in eval mode."""
        return DefendedClassifier(self.classifiers[classifier].module,
                                  self.purifiers[(classifier, purifier)].module).eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted labels (N,) of ``model`` on images x (N, C, H, W) in [0, 1]."""
    model.eval()
    return torch.cat([model(x[sl]).argmax(1) for sl in batches(x.shape[0], batch_size)])


def craft(attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int,
          desc: str) -> torch.Tensor:
    """Adversarial examples for all of x, batch by batch, with a progress bar. x is checked
    once here; the attack's iterations skip the per-call range check (aepurify.checks)."""
    out = []
    slices = list(batches(x.shape[0], batch_size))
    with validated(x):
        for sl in progress(slices, desc=desc, unit="batch"):
            out.append(attack(x[sl], y[sl]).detach())
    return torch.cat(out)


def _lazy(fn: Callable[[], ImageDataset]) -> Callable[[], ImageDataset]:
    cache: list[ImageDataset] = []

    def get() -> ImageDataset:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


def _get_classifier(entry: ClassifierEntry, config: ExperimentConfig, exp_args: dict) -> Trained:
    return get_classifier(entry.arch, config.dataset, params=entry.params, settings=entry.train,
                          checkpoint=entry.checkpoint, **exp_args)


def prepare(config: ExperimentConfig, out_dir: str | Path, *, data_dir: str | Path | None = None,
            cache_dir: str | Path | None = None, device: str | None = None) -> Experiment:
    """Load data, train or reuse every model, and plan the cells of the grid.

    Raises:
        DataError, CheckpointError, ConfigError: bad data, checkpoints or config.
    """
    dev = pick_device(device or config.device)
    data_dir = data_dir if data_dir is not None else config.data_dir
    seed_everything(config.seed)
    test = load_dataset(config.dataset, "test", data_dir).take(config.n_test)
    train = _lazy(lambda: load_dataset(config.dataset, "train", data_dir))
    common = {"train_data": train, "test_data": test, "cache_dir": cache_dir, "device": dev}
    classifiers = {c.row_label: _get_classifier(c, config, common) for c in config.classifiers}
    source = (_get_classifier(config.transfer_source, config, common)
              if config.transfer_source is not None else None)
    purifiers: dict[tuple[str, str], Trained] = {}
    for clf_label, clf in classifiers.items():
        if config.include_undefended:
            purifiers[(clf_label, CLEAN)] = Trained(create_purifier("none").to(dev), "none",
                                                    "untrained", None, {})
        for p in config.purifiers:
            first = next(iter(classifiers))
            if clf_label != first and not purifier_class(p.name).needs_classifier:
                purifiers[(clf_label, p.row_label)] = purifiers[(first, p.row_label)]
                continue
            purifiers[(clf_label, p.row_label)] = get_purifier(
                p.name, config.dataset, params=p.params, settings=p.train,
                checkpoint=p.checkpoint, classifier=clf, train_data=train, cache_dir=cache_dir,
                device=dev)
    exp = Experiment(config, Path(out_dir), dev, test, train, classifiers, source, purifiers)
    exp.cells, exp.skipped = plan(exp)
    return exp


def plan(exp: Experiment) -> tuple[list[Cell], list[dict[str, str]]]:
    """The cells to compute, in run order, and the combinations skipped (with the reason)."""
    config = exp.config
    entries: dict[str, PurifierEntry | None] = {p.row_label: p for p in config.purifiers}
    entries.setdefault(CLEAN, None)
    n_all = len(exp.test)
    cells: list[Cell] = []
    skipped: list[dict[str, str]] = []

    def threat_models_for(label: str) -> list[str]:
        if label == CLEAN:  # every gradient threat model equals gray-box without a purifier
            return ["gray-box"] + [t for t in config.all_threat_models()
                                   if t.split("+")[0] == "transfer"]
        entry = entries[label]
        return entry.threat_models if entry and entry.threat_models else config.threat_models

    def threat_models_of(attack: AttackEntry, label: str) -> list[str]:
        """The most specific list wins: the attack's, else the purifier's, else the config's.
        Without a purifier every attack that sees the model is a gray-box attack."""
        if not attack.threat_models:
            return threat_models_for(label)
        if label != CLEAN:
            return attack.threat_models
        kept = ["gray-box"] if any(t.split("+")[0] != "transfer"
                                   for t in attack.threat_models) else []
        return kept + [t for t in attack.threat_models if t.split("+")[0] == "transfer"]

    for (clf_label, label), trained in exp.purifiers.items():
        clf = exp.classifiers[clf_label]
        common = {"v": RUNNER_VERSION, "dataset": config.dataset, "seed": config.seed,
                  "classifier": clf.key}
        cell = Cell(clf_label, label, None, None, -1, 0.0, n_all)
        cell.key = (config.dataset, clf_label, label, CLEAN, CLEAN, CLEAN, 0.0)
        cell.spec_hash = stable_hash({**common, "n": n_all, "purifier": trained.key})
        cells.append(cell)
        purifier: Purifier = trained.module  # type: ignore[assignment]
        entry = entries.get(label)
        for ai, attack in enumerate(config.all_attacks()):
            if attack.purifiers is not None and label not in attack.purifiers:
                continue
            n = min(attack.n_test or n_all, n_all)
            for tm_text in threat_models_of(attack, label):
                samples = entry.eot_samples if entry and entry.eot_samples else config.eot_samples
                try:
                    tm = resolve_threat_model(tm_text, purifier, samples)
                    check_attack(tm, attack.name, attack.norm, purifier)
                except NotApplicableError as exc:
                    reason = {"purifier": label, "threat_model": tm_text, "reason": str(exc)}
                    if reason not in skipped:
                        skipped.append(reason)
                    continue
                n_cell = n
                if (attack.row_label.startswith(SANITY_PREFIX) and purifier.stochastic
                        and config.sanity.n_test_random is not None):
                    # every gradient of a random purifier costs eot_samples passes
                    n_cell = min(n, config.sanity.n_test_random)
                for eps in attack.eps:
                    details = {"attack_params": attack.params, "restarts": attack.restarts,
                               "eot_samples": tm.eot_samples if tm.eot else None,
                               "surrogate": purifier.surrogate_name() if tm.base == "bpda"
                               else None}
                    cell = Cell(clf_label, label, tm, attack, ai, eps, n_cell, details=details)
                    cell.key = (config.dataset, clf_label, label, tm.name, attack.row_label,
                                attack.norm, eps_key(eps))
                    cell.spec_hash = stable_hash({
                        **common, "n": n_cell, "purifier": trained.key, "tm": tm.name,
                        "k": tm.eot_samples,
                        "source": exp.source.key if (exp.source and tm.base == "transfer")
                        else None,
                        "attack": attack.name, "norm": attack.norm, "eps": eps_key(eps),
                        "params": attack.params, "restarts": attack.restarts})
                    cells.append(cell)
    # Run order: clean rows, then by (attack, eps); within those, shared crafts first, so a
    # shared batch of adversarial examples is made once and dropped before the next one.
    order = {id(c): i for i, c in enumerate(cells)}
    cells.sort(key=lambda c: (c.attack is not None, c.attack_index, c.eps,
                              c.threat_model is not None and c.threat_model.base != "transfer",
                              not c.shared, order[id(c)]))
    keys = [c.key for c in cells]
    if len(keys) != len(set(keys)):
        raise ConfigError("two cells of the grid share a row key; give attacks distinct labels "
                          "or restrict them to distinct purifiers")
    return cells, skipped


def run_cells(exp: Experiment, store: ResultStore) -> None:
    """Compute every cell not yet finished in ``store`` (commits after each row).

    A row whose computation raises (an attack engine's bug, memory) does not end the run: its
    error goes to ``exp.failed`` in one line and its traceback to ``errors.log`` in the output
    folder, the other rows go on, and a rerun retries it. Ctrl-C still stops the run.
    """
    x_all, y_all = exp.test.tensors(slice(None), exp.device)
    todo = [c for c in exp.cells if not store.has(c.key, c.spec_hash)]
    if len(todo) < len(exp.cells):
        log.info("resuming: %d of %d rows already finished", len(exp.cells) - len(todo),
                 len(exp.cells))
    shared = _SharedCrafts()
    for cell in progress(todo, desc="evaluate", total=len(todo), leave=True, unit="row"):
        try:
            row, worst = _compute_cell(exp, cell, x_all[:cell.n], y_all[:cell.n], shared)
        except Exception as exc:  # noqa: BLE001 - recorded, reported, retried on the next run
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            label = " ".join(str(k) for k in cell.key)
            exp.failed.append({"row": label, "error": error})
            log.error("row failed (%s): %s; the run goes on, errors.log has the traceback",
                      label, error)
            with open(exp.out_dir / "errors.log", "a") as f:
                f.write(f"== {label}\n{traceback.format_exc()}\n")
            continue
        if worst is not None:
            store.put_examples(cell.key, worst[:EXAMPLES_PER_ROW].cpu().numpy())
        store.put(row)


@dataclass
class _SharedCrafts:
    """Adversarial examples of the current (attack, eps) group, by craft owner, for the cells
    that may reuse them (see :class:`Cell`); a new group drops the previous one's."""

    group: tuple | None = None
    by_owner: dict[tuple, tuple[list[torch.Tensor], float]] = field(default_factory=dict)

    def enter(self, group: tuple) -> None:
        if group != self.group:
            self.by_owner.clear()
            self.group = group


def _compute_cell(exp: Experiment, cell: Cell, x: torch.Tensor, y: torch.Tensor,
                  shared: _SharedCrafts) -> tuple[ResultRow, torch.Tensor | None]:
    """One row: clean accuracy, or the cell's attack (crafted once per owner and shared, see
    :class:`Cell`) evaluated per restart with the per-example worst case. Returns the row and
    the worst adversarial images (None for a clean row)."""
    cfg = exp.config
    defended = exp.defended(cell.classifier, cell.purifier)
    start = time.perf_counter()
    details = dict(cell.details)
    worst = None
    if cell.attack is None:
        seed_everything(derive_seed(cfg.seed, "eval", cell.key))
        correct = (predict(defended, x, cfg.batch_size) == y).cpu().numpy()
        seconds = time.perf_counter() - start
    else:
        shared.enter((cell.attack_index, eps_key(cell.eps)))
        owner = (cell.threat_model.base, *cell.craft_owner)  # type: ignore[union-attr]
        if owner in shared.by_owner:
            advs, craft_seconds = shared.by_owner[owner]
        else:
            advs, craft_seconds = craft_cell(exp, cell, defended, x, y)
            if cell.shared:
                shared.by_owner[owner] = (advs, craft_seconds)
        eval_start = time.perf_counter()
        correct = np.ones(cell.n, dtype=bool)
        worst = advs[-1].clone()
        for r, x_adv in enumerate(advs):
            seed_everything(derive_seed(cfg.seed, "eval", cell.key, r))
            ok = (predict(defended, x_adv, cfg.batch_size) == y).cpu().numpy()
            newly_broken = torch.from_numpy(correct & ~ok).to(worst.device)
            worst[newly_broken] = x_adv[newly_broken]
            correct &= ok
        details.update(perturbation_size(x, worst))
        seconds = craft_seconds + time.perf_counter() - eval_start
    c = cell.key
    row = ResultRow(*c[:6], eps=c[6], n=len(correct), accuracy=float(correct.mean()),
                    seconds=seconds, correct=correct, spec_hash=cell.spec_hash, details=details)
    return row, worst


def perturbation_size(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Mean L-inf and L2 size of the perturbations, and the L2 size normalised by the image's
    own L2 norm (the x axis of the patch-VAE paper's plots)."""
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)
    return {"mean_linf": float(delta.abs().amax(1).mean()), "mean_l2": float(l2.mean()),
            "mean_rel_l2": float((l2 / x.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())}


def craft_cell(exp: Experiment, cell: Cell, defended: DefendedClassifier, x: torch.Tensor,
               y: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """Adversarial examples of one cell, one tensor per restart, and the seconds it took."""
    cfg, attack, tm = exp.config, cell.attack, cell.threat_model
    assert attack is not None and tm is not None
    start = time.perf_counter()
    if tm.base == "adaptive":
        adaptive = getattr(defended.purifier, "adaptive_attack")
        atk = adaptive(attack.name, defended, cell.eps, attack.norm, **attack.params)
    else:
        module = attack_module(tm, defended, exp.source.module if exp.source else None)
        atk = build_attack(attack.name, module, cell.eps, attack.norm, attack.params)
    owner = cell.craft_owner
    advs = []
    for r in range(attack.restarts):
        seed_everything(derive_seed(cfg.seed, "craft", tm.name, *owner, attack.row_label,
                                    attack.norm, eps_key(cell.eps), r))
        who = "" if cell.shared else f" {cell.purifier}"
        desc = f"{attack.row_label} {attack.norm} eps={cell.eps:.4g} {tm.name}{who}"
        advs.append(craft(atk, x, y, cfg.batch_size, desc))
    return advs, time.perf_counter() - start


def run_record(exp: Experiment, argv: list[str] | None = None) -> dict[str, Any]:
    """What makes the run reproducible: seed, config, code version, environment, models."""
    spec = dataset_spec(exp.config.dataset)
    models: dict[str, Any] = {}
    for label, clf in exp.classifiers.items():
        models[f"classifier:{label}"] = _model_record(clf)
    if exp.source is not None:
        models["transfer_source"] = _model_record(exp.source)
    for (clf_label, label), pur in exp.purifiers.items():
        name = f"purifier:{label}" if len(exp.classifiers) == 1 else f"purifier:{clf_label}/{label}"
        models[name] = _model_record(pur)
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
        "models": models,
        "skipped": exp.skipped,
    }


def _model_record(t: Trained) -> dict[str, Any]:
    return {"key": t.key, "origin": t.origin, "path": str(t.path) if t.path else None,
            "metrics": t.config.get("metrics"), "hparams": getattr(t.module, "hparams", {}),
            "properties": t.module.properties() if isinstance(t.module, Purifier) else None}


def planned_rows(exp: Experiment, store: ResultStore) -> list[ResultRow]:
    """The finished rows of this experiment's cells, in plan order."""
    return store.rows([c.key for c in exp.cells])
