"""Cells: the units of work of an evaluation, one per result row.

A cell says which defended classifier (labels), which threat model, attack and epsilon, on how
many images, under which row key, and carries the hash of everything that determines its row,
so the run stage can skip a row the store already holds with the same hash (a resumed run). It
holds no model and no config: planners (:func:`aepurify.evaluation.plan.plan_grid` for a config,
the audit for an attack-suite version) build cells with :class:`DefenseKeys` and put them in
run order with :func:`order_cells`; the run stage takes any list of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..attacks import CLASSIFIER_ONLY, ThreatModel
from ..errors import ConfigError
from ..utils import stable_hash
from .store import CLEAN, eps_key

# Bump when the way rows are computed changes, so stale rows are recomputed.
RUNNER_VERSION = 2


@dataclass(frozen=True)
class AttackSpec:
    """One attack as the run stage needs it.

    Attributes:
        name: attack registry name (``pgd``, ``apgd-ce``, ...).
        label: the ``attack`` column of its rows.
        norm: ``linf`` or ``l2``.
        params: the attack's options (steps, step size, ...).
        restarts: runs per example; an example is robust only if it survives all.
        index: position in the planner's attack list: cells of one (index, eps) share crafted
            examples, and run order groups them.
    """

    name: str
    label: str
    norm: str
    params: dict[str, Any] = field(default_factory=dict)
    restarts: int = 1
    index: int = 0


@dataclass
class Cell:
    """A planned row of the grid.

    Attributes:
        classifier, purifier: labels of the defended classifier's parts.
        threat_model: resolved threat model, None for clean accuracy.
        attack: the attack, None for clean accuracy.
        eps: budget on the [0, 1] scale.
        n: number of test images (the first n).
        key: the row key in the results store.
        spec_hash: hash of everything that determines the row.
        details: facts recorded with the row.
        n_eval: evaluations of every example for the verdict (N-evaluation): above 1 only for a
            random purifier, whose example then counts as correct only if every evaluation is.
        after: keys of earlier rows of the same defense and budget: the cell attacks only the
            examples every one of them left correct and counts the others as broken
            (AutoAttack's order, :func:`attack_what_stands`); empty: every example.
    """

    classifier: str
    purifier: str
    threat_model: ThreatModel | None
    attack: AttackSpec | None
    eps: float
    n: int
    key: tuple = ()
    spec_hash: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    n_eval: int = 1
    after: tuple[tuple, ...] = ()

    @property
    def attack_index(self) -> int:
        """The attack's position in the planner's list (-1 for clean accuracy)."""
        return -1 if self.attack is None else self.attack.index

    @property
    def shared(self) -> bool:
        """Crafted without the purifier (gray-box, transfer) on every example: shared across
        purifiers (a cell that attacks only what earlier rows left crafts its own)."""
        return self.threat_model is not None and not self.threat_model.uses_purifier_gradients \
            and not self.after

    @property
    def craft_owner(self) -> tuple[str, str]:
        """Who the examples are crafted for: transfer examples are shared by all classifiers,
        gray-box ones by all purifiers of one classifier, the rest belong to one cell."""
        assert self.threat_model is not None
        if self.threat_model.base == "transfer":
            return ("source", "shared")
        return (self.classifier, "shared" if self.shared else self.purifier)


@dataclass(frozen=True)
class DefenseKeys:
    """What the cells of one defended classifier are keyed and hashed by.

    Attributes:
        dataset: data set name (the ``dataset`` column).
        seed: the run's base seed.
        classifier, purifier: the row labels.
        classifier_key, purifier_key: hashes of what determines each model's weights (a model
            cache key; for an in-memory model, a hash of its state).
        stochastic: the purifier is random: its rows are judged by N-evaluation, and
            ``n_eval`` enters their hashes (a deterministic purifier's hashes do not change).
        n_eval: evaluations of every example of a random purifier (1 for a deterministic one).
        precision: the resolved precision of attack gradients and inner optimisations
            (:mod:`aepurify.precision`); ``bf16`` enters the hashes (fp32 rows keep theirs).
        detectors_key: hash of the defense's detectors (kinds, options, autoencoders,
            false-positive rates and thresholds); None for a defense that does not reject (whose
            hashes then do not change).
    """

    dataset: str
    seed: int
    classifier: str
    classifier_key: str
    purifier: str
    purifier_key: str
    stochastic: bool = False
    n_eval: int = 1
    precision: str = "fp32"
    detectors_key: str | None = None

    def __post_init__(self) -> None:
        if self.n_eval < 1 or (self.n_eval > 1 and not self.stochastic):
            raise ConfigError(f"{self.purifier}: n_eval {self.n_eval} needs a random purifier "
                              "(a deterministic one is evaluated once)")

    def _common(self, n: int) -> dict[str, Any]:
        common = {"v": RUNNER_VERSION, "dataset": self.dataset, "seed": self.seed,
                  "classifier": self.classifier_key, "n": n, "purifier": self.purifier_key}
        if self.stochastic:
            common["n_eval"] = self.n_eval
        if self.precision != "fp32":
            common["precision"] = self.precision
        if self.detectors_key is not None:
            common["detectors"] = self.detectors_key
        return common

    def clean_cell(self, n: int) -> Cell:
        """The clean-accuracy cell on the first ``n`` images."""
        cell = Cell(self.classifier, self.purifier, None, None, 0.0, n, n_eval=self.n_eval)
        cell.key = (self.dataset, self.classifier, self.purifier, CLEAN, CLEAN, CLEAN, 0.0)
        cell.spec_hash = stable_hash(self._common(n))
        return cell

    def attack_cell(self, tm: ThreatModel, attack: AttackSpec, eps: float, n: int, *,
                    surrogate: str | None = None, source_key: str | None = None) -> Cell:
        """The cell of ``attack`` at ``eps`` under ``tm`` on the first ``n`` images.

        Args:
            surrogate: name of the purifier's BPDA surrogate (recorded for bpda rows, and for
                detector-aware rows of a purifier that is not differentiable).
            source_key: model key of the transfer source (hashed into transfer rows).
        """
        details = {"attack": attack.name, "attack_params": attack.params,
                   "restarts": attack.restarts,
                   "eot_samples": tm.eot_samples if tm.eot else None,
                   "surrogate": surrogate if tm.base in ("bpda", "detector-aware") else None}
        cell = Cell(self.classifier, self.purifier, tm, attack, eps, n, details=details,
                    n_eval=self.n_eval)
        cell.key = (self.dataset, self.classifier, self.purifier, tm.name, attack.label,
                    attack.norm, eps_key(eps))
        spec = {**self._common(n), "tm": tm.name, "k": tm.eot_samples,
                "source": source_key if tm.base == "transfer" else None,
                "attack": attack.name, "norm": attack.norm, "eps": eps_key(eps),
                "params": attack.params, "restarts": attack.restarts}
        if self.precision != "fp32" and tm.base in CLASSIFIER_ONLY:
            spec["gradients"] = "fp32"  # rows crafted with bf16 gradients by earlier versions
        cell.spec_hash = stable_hash(spec)
        return cell


def order_cells(cells: list[Cell]) -> list[Cell]:
    """``cells`` in run order: clean rows, then by (attack, eps); within those, shared crafts
    first, so a shared batch of adversarial examples is made once and dropped before the next
    one. Deterministic: the same cells in the same order give the same result.

    Raises:
        ConfigError: two cells share a row key.
    """
    order = {id(c): i for i, c in enumerate(cells)}
    ordered = sorted(cells, key=lambda c: (
        c.attack is not None, c.attack_index, c.eps,
        c.threat_model is not None and c.threat_model.base != "transfer",
        not c.shared, order[id(c)]))
    keys = [c.key for c in ordered]
    if len(keys) != len(set(keys)):
        raise ConfigError("two cells of the grid share a row key; give attacks distinct labels "
                          "or restrict them to distinct purifiers")
    return ordered


def attack_what_stands(cells: list[Cell], follows: Callable[[Cell], bool]) -> list[Cell]:
    """AutoAttack's practice (Croce and Hein, ICML 2020): each attack runs only on the
    examples that every earlier attack left correct. Every attack cell for which ``follows``
    is true gets as ``after`` the keys of all attack cells before it in ``cells`` (run order)
    of the same classifier, purifier, norm and budget, on at least as many images; its row
    then holds the robust accuracy after it and every earlier attack (cumulative), and its
    hash those of the rows it follows. Cells that do not follow stay whole (every example).

    Args:
        cells: the planned cells, in run order (after :func:`order_cells`).
        follows: which cells attack only what still stands.

    Returns:
        ``cells``, changed in place.
    """
    earlier: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        if cell.attack is None:
            continue
        before = earlier[(cell.classifier, cell.purifier, cell.attack.norm, eps_key(cell.eps))]
        prior = [c for c in before if c.n >= cell.n]
        if follows(cell) and prior:
            cell.after = tuple(c.key for c in prior)
            cell.spec_hash = stable_hash({"cell": cell.spec_hash,
                                          "after": [c.spec_hash for c in prior]})
            cell.details["after"] = [f"{c.key[3]} / {c.key[4]}" for c in prior]
        before.append(cell)
    return cells
