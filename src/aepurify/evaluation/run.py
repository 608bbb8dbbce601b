"""Stage 2: run cells and store their rows.

Every row is committed to the results store as soon as it is done; re-running skips rows that
were finished with the same spec hash, so a killed run resumes and loses nothing. Gray-box and
transfer examples do not depend on the purifier, so they are crafted once per (classifier,
attack, epsilon) and evaluated under every purifier.

The stage reads a :class:`Workload` (test images, ready models by label, device, batch size,
seed, planned cells) and nothing else: no config, no registry. ``evaluate`` builds one from a
config (:func:`aepurify.evaluation.experiment.prepare`); the audit builds one from in-memory
modules; a distributed run passes each rank its share of the cells and its own store.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attacks import Attack, attack_arithmetic, attack_module, build_attack
from ..attacks.detector_aware import make_detector_aware
from ..checks import validated
from ..detectors import DetectingClassifier, DetectorSet
from ..precision import autocast, channels_last_weights, with_precision
from ..purifiers import DefendedClassifier, Purifier
from ..utils import batches, derive_seed, progress, seed_everything
from .cells import Cell
from .rejection import DetectionCounts, judge_rejecting
from .store import ResultRow, ResultStore, eps_key
from .verdicts import Verdict, judge

log = logging.getLogger(__name__)

# adversarial images kept per row for the report's example figures
EXAMPLES_PER_ROW = 4


@dataclass
class Workload:
    """Everything the run stage needs, ready.

    Attributes:
        x: test images (N, C, H, W) in [0, 1], on ``device``; a cell uses the first ``n``.
        y: their labels (N,), int64, on ``device``.
        classes: class names, index = label (figure captions).
        classifiers: classifier label -> classifier (logits (N, K)), eval mode.
        purifiers: (classifier label, purifier label) -> purifier; ``none`` is the undefended
            classifier (an identity purifier).
        device: where the models and images are.
        batch_size: images per attack batch.
        seed: base seed; every row derives its own from it and its key.
        cells: the planned cells, in run order.
        source: the classifier transfer attacks craft on, if any.
        precision: the resolved precision (``bf16`` or ``fp32``) of attack gradients; verdicts
            run in fp32 (:mod:`aepurify.precision`).
        detectors: (classifier label, purifier label) -> calibrated detectors, for the defenses
            that reject (their rows count rejection, see :mod:`.rejection`).
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    classifiers: dict[str, nn.Module]
    purifiers: dict[tuple[str, str], Purifier]
    device: torch.device
    batch_size: int
    seed: int
    cells: list[Cell] = field(default_factory=list)
    source: nn.Module | None = None
    precision: str = "fp32"
    detectors: dict[tuple[str, str], DetectorSet] = field(default_factory=dict)

    def defended(self, classifier: str, purifier: str) -> DefendedClassifier:
        """The defended classifier ``classifier(purifier(x))`` of two labels, in eval mode: a
        :class:`~aepurify.detectors.DetectingClassifier` where the defense has detectors."""
        clf, pur = self.classifiers[classifier], self.purifiers[(classifier, purifier)]
        detectors = self.detectors.get((classifier, purifier))
        if detectors is not None:
            return DetectingClassifier(clf, pur, detectors).eval()
        return DefendedClassifier(clf, pur).eval()

    def stochastic(self) -> dict[str, bool]:
        """Purifier label -> declared stochastic (what the EOT sanity check needs)."""
        return {label: bool(p.stochastic) for (_, label), p in self.purifiers.items()}


@dataclass
class FailedRow:
    """A cell whose computation raised: not stored, so the next run retries it.

    Attributes:
        row: the row key as text (``dataset classifier purifier threat_model attack norm eps``).
        error: the exception's type and the first line of its message.
    """

    row: str
    error: str


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


def run_cells(work: Workload, store: ResultStore, cells: list[Cell] | None = None, *,
              errors_log: Path | None = None) -> list[FailedRow]:
    """Compute every cell not yet finished in ``store`` (commits after each row).

    A row whose computation raises (an attack engine's bug, memory) does not end the run: its
    error is returned in one line and logged, its traceback appended to ``errors_log``, the
    other rows go on, and a rerun retries it. Ctrl-C still stops the run.

    Args:
        work: the models, images and settings.
        store: where finished rows are looked up and written.
        cells: the cells to run, in order (default: all of ``work.cells``); a distributed run
            passes each rank its share.
        errors_log: file the tracebacks of failed rows are appended to.

    Returns:
        The rows that failed in this call.
    """
    cells = work.cells if cells is None else cells
    todo = [c for c in cells if not store.has(c.key, c.spec_hash)]
    log_resume(len(cells) - len(todo), len(cells))
    failed: list[FailedRow] = []
    shared = _SharedCrafts()
    for cell in progress(todo, desc="evaluate", total=len(todo), leave=True, unit="row"):
        try:
            row, worst = compute_cell(work, cell, shared, standing(store, cell))
        except Exception as exc:  # noqa: BLE001 - recorded, reported, retried on the next run
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            label = " ".join(str(k) for k in cell.key)
            failed.append(FailedRow(label, error))
            log.error("row failed (%s): %s; the run goes on, errors.log has the traceback",
                      label, error)
            if errors_log is not None:
                with open(errors_log, "a") as f:
                    f.write(f"== {label}\n{traceback.format_exc()}\n")
            continue
        if worst is not None:
            store.put_examples(cell.key, worst[:EXAMPLES_PER_ROW].cpu().numpy())
        store.put(row)
    return failed


def log_resume(finished: int, total: int) -> None:
    """``resuming: k of n rows already finished``, when some are (a plain run's store, or rank
    0 of a distributed run for the whole grid)."""
    if finished:
        log.info("resuming: %d of %d rows already finished", finished, total)


def finished_rows(store: ResultStore, cells: list[Cell]) -> list[ResultRow]:
    """The rows of ``cells`` that ``store`` holds, in the cells' order (failed ones missing)."""
    return store.rows([c.key for c in cells])


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


def standing(store: ResultStore, cell: Cell) -> np.ndarray | None:
    """For a cell that attacks only what still stands (``cell.after``): which of its ``n``
    examples every earlier row it follows left correct, (n,) bool; None for a whole cell.

    Raises:
        RuntimeError: a row it follows is missing (it failed in this run): the cell fails too,
            and a rerun retries both in order.
    """
    if not cell.after:
        return None
    rows = store.rows(cell.after)
    if len(rows) < len(cell.after):
        raise RuntimeError(f"{len(cell.after) - len(rows)} earlier row(s) it follows failed "
                           "(it attacks only what they left correct); a rerun retries them")
    alive = np.ones(cell.n, dtype=bool)
    for row in rows:
        alive &= row.correct[:cell.n]
    return alive


def compute_cell(work: Workload, cell: Cell, shared: _SharedCrafts | None = None,
                 alive: np.ndarray | None = None) -> tuple[ResultRow, torch.Tensor | None]:
    """One row: clean accuracy, or the cell's attack (crafted once per owner and shared, see
    :class:`Cell`) evaluated per restart with the per-example worst case.

    Args:
        alive: for a cell that follows earlier rows (:func:`standing`), the examples (n,) bool
            they left correct: only those are attacked, the rest count as broken, and the row
            records ``attacked`` (how many were).

    Returns:
        The row and the worst adversarial images (n, C, H, W) in [0, 1] (None for a clean row
        and for a row that attacked only some examples).
    """
    shared = shared if shared is not None else _SharedCrafts()
    x, y = work.x[:cell.n], work.y[:cell.n]
    defended = work.defended(cell.classifier, cell.purifier)
    start = time.perf_counter()
    details = dict(cell.details)
    worst = None
    if cell.attack is None:
        correct, verdict, counts = _classify(work, cell, defended, x, y, derive_seed(
            work.seed, "eval", cell.key))
        seconds = time.perf_counter() - start
    elif alive is not None:
        correct, verdict, counts = np.zeros(cell.n, dtype=bool), None, None
        index = np.flatnonzero(alive)
        details["attacked"] = int(index.size)
        if index.size:
            pick = torch.from_numpy(index).to(x.device)
            advs, _ = craft_cell(work, cell, defended, x[pick], y[pick])
            ok, verdict, kept, counts = _worst_of_restarts(work, cell, defended, advs, y[pick])
            correct[index] = ok
            verdict = verdict.spread(index, cell.n) if verdict is not None else None
            details.update(perturbation_size(x[pick], kept))
        elif cell.n_eval > 1:  # nothing left to attack: the rules' verdicts say so too
            empty = np.zeros(0, dtype=bool)
            verdict = Verdict(cell.n_eval, empty, empty, empty).spread(index, cell.n)
        seconds = time.perf_counter() - start
    else:
        shared.enter((cell.attack_index, eps_key(cell.eps)))
        owner = (cell.threat_model.base, *cell.craft_owner)  # type: ignore[union-attr]
        if owner in shared.by_owner:
            advs, craft_seconds = shared.by_owner[owner]
        else:
            advs, craft_seconds = craft_cell(work, cell, defended, x, y)
            if cell.shared:
                shared.by_owner[owner] = (advs, craft_seconds)
        eval_start = time.perf_counter()
        correct, verdict, worst, counts = _worst_of_restarts(work, cell, defended, advs, y)
        details.update(perturbation_size(x, worst))
        seconds = craft_seconds + time.perf_counter() - eval_start
    if verdict is not None:
        details.update(verdict.details())
    if counts is not None:
        details.update(counts.details(adversarial=cell.attack is not None))
        if alive is not None:  # counted over the examples it attacked only
            details["detection"]["over"] = "attacked"
    c = cell.key
    row = ResultRow(*c[:6], eps=c[6], n=len(correct), accuracy=float(correct.mean()),
                    seconds=seconds, correct=correct, spec_hash=cell.spec_hash, details=details)
    return row, worst


def _worst_of_restarts(work: Workload, cell: Cell, defended: DefendedClassifier,
                       advs: list[torch.Tensor], y: torch.Tensor
                       ) -> tuple[np.ndarray, Verdict | None, torch.Tensor,
                                  DetectionCounts | None]:
    """Classify each restart's adversarial images and keep the per-example worst case: which
    examples (k,) survive every restart, their verdict (a random purifier), per example the
    images of the first restart that broke it (else the last restart's), and the detection
    counts of those images (a defense that rejects)."""
    correct = np.ones(y.shape[0], dtype=bool)
    worst = advs[-1].clone()
    verdict, counts = None, None
    for r, x_adv in enumerate(advs):
        ok, v, c = _classify(work, cell, defended, x_adv, y,
                             derive_seed(work.seed, "eval", cell.key, r))
        verdict = v if verdict is None or v is None else verdict & v
        broken = correct & ~ok
        counts = c if counts is None or c is None else counts.where(broken, c)
        newly_broken = torch.from_numpy(broken).to(worst.device)
        worst[newly_broken] = x_adv[newly_broken]
        correct &= ok
    return correct, verdict, worst, counts


def _classify(work: Workload, cell: Cell, defended: DefendedClassifier, x: torch.Tensor,
              y: torch.Tensor, seed: int
              ) -> tuple[np.ndarray, Verdict | None, DetectionCounts | None]:
    """Which images (N,) the defended classifier gets right: once, for a deterministic
    purifier; for a random one, every image ``cell.n_eval`` times with fresh draws, correct only
    if all are (N-evaluation; the verdict keeps single-draw and majority vote as well). A
    defense that rejects is judged MagNet's way (:mod:`.rejection`), with its detection
    counts."""
    if isinstance(defended, DetectingClassifier):
        return judge_rejecting(defended, x, y, adversarial=cell.attack is not None,
                               n_eval=cell.n_eval, seed=seed, batch_size=work.batch_size)
    if not defended.purifier.stochastic:
        seed_everything(seed)
        return (predict(defended, x, work.batch_size) == y).cpu().numpy(), None, None
    verdict = judge(defended, x, y, n_eval=cell.n_eval, seed=seed, batch_size=work.batch_size)
    return verdict.all_of_n, verdict, None


def perturbation_size(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Mean L-inf and L2 size of the perturbations, and the L2 size normalised by the image's
    own L2 norm (the x axis of the patch-VAE paper's plots)."""
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)
    return {"mean_linf": float(delta.abs().amax(1).mean()), "mean_l2": float(l2.mean()),
            "mean_rel_l2": float((l2 / x.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())}


def craft_cell(work: Workload, cell: Cell, defended: DefendedClassifier, x: torch.Tensor,
               y: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """Adversarial examples of one cell, one tensor per restart, and the seconds it took."""
    attack, tm = cell.attack, cell.threat_model
    assert attack is not None and tm is not None
    start = time.perf_counter()
    # Attack gradients in the workload's precision (bf16 where the hardware runs it fast): the
    # module the attack differentiates runs under autocast and returns fp32 logits, so the
    # attack's own arithmetic stays fp32; an adaptive or detector-aware attack (the project's
    # own code) runs whole under autocast. The verdict (_classify) runs outside, in fp32.
    # A gradient-free attack (Square) decides by its queries' outputs alone, like a verdict, and
    # gray-box and transfer attacks differentiate a classifier without the purifier: those stay
    # fp32 (attacks.base.attack_arithmetic says why).
    arithmetic = attack_arithmetic(attack.name, tm.base, work.precision)
    own = tm.base in ("adaptive", "detector-aware")
    precision = autocast(arithmetic if own else "fp32", work.device)
    if tm.base == "adaptive":
        adaptive = getattr(defended.purifier, "adaptive_attack")
        atk = adaptive(attack.name, defended, cell.eps, attack.norm, **attack.params)
    elif tm.base == "detector-aware":  # thresholds fixed at calibration, before any attack
        atk = make_detector_aware(attack.name, defended, cell.eps, attack.norm,
                                  tm.eot_samples, **attack.params)
    else:
        module = with_precision(attack_module(tm, defended, work.source), arithmetic)
        atk = build_attack(attack.name, module, cell.eps, attack.norm, attack.params)
    owner = cell.craft_owner
    advs = []
    for r in range(attack.restarts):
        seed_everything(derive_seed(work.seed, "craft", tm.name, *owner, attack.label,
                                    attack.norm, eps_key(cell.eps), r))
        who = "" if cell.shared else f" {cell.purifier}"
        desc = f"{attack.label} {attack.norm} eps={cell.eps:.4g} {tm.name}{who}"
        # under bf16 the weights are channels-last while crafting (inputs repeated for EOT
        # lose the layout the attack module gives them), NCHW again for the verdict
        models = [defended.classifier, defended.purifier, work.source]
        with precision, channels_last_weights([m for m in models if m is not None],
                                              arithmetic == "bf16"):
            advs.append(craft(atk, x, y, batch_size=work.batch_size, desc=desc))
    return advs, time.perf_counter() - start
