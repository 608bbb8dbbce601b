"""``audit``: bring your own classifier and purifier, get one verdict (docs/audit.md).

The audit is a front end of the evaluation stages, not a second runner: it wraps and validates
its inputs, probes the purifier, plans the threat models, builds a
:class:`~aepurify.evaluation.run.Workload` and its cells (:mod:`.suite`), runs them with
:func:`~aepurify.evaluation.run.run_cells` into a results store, and reads the rows with
:func:`~aepurify.evaluation.summary.summarize`, :func:`~aepurify.evaluation.sanity.run_checks`
and the report stage, exactly as ``evaluate`` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..allocator import allocator_record
from ..attacks import default_n_eval, plan_threat_models
from ..errors import AepurifyError, ConfigError
from ..evaluation.cells import DefenseKeys
from ..evaluation.lock import output_lock
from ..evaluation.run import Workload, finished_rows, run_cells
from ..evaluation.sanity import run_checks
from ..evaluation.store import CLEAN, ResultStore, eps_key
from ..evaluation.summary import summarize
from ..evaluation.verdicts import rule_correct
from ..purifiers import Purifier, as_purifier, create_purifier
from ..precision import resolve_precision
from ..utils import pick_device, seed_everything
from ..version import code_version
from .detection import AuditDetectors, DetectorLike, prepare_detectors
from .inputs import PROBE_IMAGES, AuditInputs, prepare_inputs
from .result import AuditResult, SanityItem
from .suite import EOT_SAMPLES, check_version, not_run_reason, plan_cells, sanity_settings

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")
DEFAULT_BATCH = 500


def audit(classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
          purifier: Purifier | Callable[[torch.Tensor], Any] | None,
          x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf", eps: float,
          version: str = "standard", n_eval: int | None = None, out: str | Path | None = None,
          device: str = "auto", seed: int = 0, batch_size: int | None = None,
          dataset: str = "audit", classes: Sequence[str] | None = None,
          precision: str = "fp32", attack_what_stands: bool = True,
          detector: DetectorLike | Sequence[DetectorLike] | None = None,
          calibration: torch.Tensor | None = None,
          false_positive_rate: float = 0.001) -> AuditResult:
    """Audit a purifier in front of a classifier: attack it under every threat model that
    applies, with the attacks of ``version``, and report robust accuracy honestly.

    What it does: wraps the classifier (:func:`aepurify.as_classifier`, the number of classes
    read from a forward pass on x) and the purifier (:func:`aepurify.as_purifier` for a plain
    callable; None audits the undefended classifier); validates x, y and both models once;
    probes what the purifier does not declare (stochastic, differentiable; docs/audit.md);
    picks white-box or BPDA, with EOT for a random purifier
    (:func:`aepurify.attacks.plan_threat_models`); runs the attack suite of ``version``
    (:mod:`aepurify.audit.suite`: ``quick``, ``standard``, ``thorough``) through the same run
    stage as ``evaluate``; judges a random purifier by N-evaluation; runs the gradient-masking
    checks; takes the per-example worst case. As AutoAttack does (Croce and Hein, ICML 2020),
    the attacks after the rows the checks compare run only on the examples every earlier attack
    left correct (for a random purifier: correct in all ``n_eval`` evaluations), and the result
    gives robust accuracy after each attack, cumulatively. With ``detector`` the defense can
    reject: every row counts rejection MagNet's way (a rejected clean image is an error, a
    rejected adversarial image is correct), the clean rejection rate is reported, and the
    ``detector-aware`` threat model (orthogonal PGD, Bryniarski et al. 2022) joins the worst
    case.

    Args:
        classifier: an ``nn.Module`` (or callable) mapping images (N, C, H, W) in [0, 1] to
            logits (N, K); normalisation inside it (or wrap it with ``as_classifier(net,
            mean=..., std=...)`` first).
        purifier: a :class:`~aepurify.purifiers.Purifier`, any callable mapping (N, C, H, W) in
            [0, 1] to the same shape in [0, 1] (tensor or NumPy array), or None.
        x: images (N, C, H, W), float in [0, 1].
        y: labels (N,), integers in [0, K).
        norm: ``linf`` or ``l2``.
        eps: the budget in ``norm`` on the [0, 1] pixel scale (8/255, not 8), > 0.
        version: ``quick``, ``standard`` or ``thorough``.
        n_eval: evaluations of every example for a random purifier (default 10; 1 for a
            deterministic one).
        out: folder for results.db (resumable), results.csv, summary.csv, sanity.csv, report.md,
            report.html and run.json (one run per folder); None: a temporary folder, and
            ``result.save(dir)`` writes the files later.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        seed: base seed (every row derives its own).
        batch_size: images per attack batch (default min(N, 500)).
        dataset: the ``dataset`` column of the rows.
        classes: class names (figures), index = label.
        precision: arithmetic of the attack gradients (:mod:`aepurify.precision`): ``fp32``
            (the default: a third-party module may not run under autocast, or may reshape
            channels-last input with ``view``), ``auto`` or ``bf16`` (bf16 autocast and
            channels-last input, 2 to 4 times faster for conv nets on a CPU with bf16 units or
            a GPU). Verdicts run in fp32 either way.
        attack_what_stands: attack only what still stands (above); False runs every attack on
            every example (the same robust accuracy, up to the attacks' own randomness, at more
            cost).
        detector: a detector of the defense: any callable mapping images (N, C, H, W) in [0, 1]
            to a score per image (N,) (higher: less like a clean image; torch operations, so the
            detector-aware attack can differentiate it), a :class:`aepurify.detectors.Detector`
            (MagNet's reconstruction-error or divergence detector), a ``DetectorSet``, or a list;
            an input is rejected if any fires. With ``purifier=None`` the defense is the
            detector alone.
        calibration: clean held-out images (M, C, H, W) in [0, 1], not the audited ones, on
            which each detector without a threshold gets one, before any attack.
        false_positive_rate: the fraction of the calibration images each threshold rejects
            (MagNet: 0.001; needs M >= 1 / rate).

    Returns:
        :class:`~aepurify.audit.AuditResult`.

    Raises:
        InputError: x not a float (N, C, H, W) tensor in [0, 1]; y not integer labels (N,) in
            [0, K).
        ConfigError: a classifier returning probabilities or not (N, K) logits; a purifier that
            changes the shape or returns values outside [0, 1]; a bad norm, eps, version,
            n_eval, batch size or precision; a detector without calibration images, or with too
            few.
        OutputLockedError: another run writes to ``out``.
    """
    norm, eps, version = _check_options(norm, eps, version, n_eval, batch_size)
    dev = pick_device(device)
    resolved = resolve_precision(precision, dev)
    if detector is not None and purifier is None:  # a detector alone: nothing reformed
        purifier = as_purifier(_unchanged, differentiable=True, stochastic=False,
                               name="detector-only")
    context = output_lock(out) if out is not None else _temporary_folder()
    with context as lock_or_tmp:
        folder = Path(out) if out is not None else Path(lock_or_tmp)
        inputs = prepare_inputs(classifier, purifier, x, y, dev, seed)
        detectors = None
        if detector is not None:
            detectors = prepare_detectors(detector, calibration, false_positive_rate,
                                          inputs.classifier, inputs.purifier,
                                          inputs.x[:PROBE_IMAGES], dev,
                                          batch_size or DEFAULT_BATCH)
        return _run(inputs, folder, norm=norm, eps=eps, version=version, n_eval=n_eval,
                    seed=seed, batch_size=batch_size, dataset=dataset, classes=classes,
                    keep=out is not None, device=dev, precision=resolved,
                    what_stands=attack_what_stands, detectors=detectors)


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    """The images as they are: the purifier of a defense that only detects."""
    return x


@contextlib.contextmanager
def _temporary_folder() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="aepurify-audit-") as tmp:
        yield tmp


def _check_options(norm: str, eps: float, version: str, n_eval: int | None,
                   batch_size: int | None) -> tuple[str, float, str]:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; use linf or l2")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"eps must be a number on the [0, 1] pixel scale; got {eps!r}") from None
    if not eps > 0:
        raise ConfigError(f"eps must be > 0; got {eps}")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"L-inf eps {eps:g} is above 1, the whole [0, 1] pixel range (did you "
                          f"mean {eps:g}/255?)")
    for name, value in (("n_eval", n_eval), ("batch_size", batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
    return norm, eps, check_version(version)


def _run(inputs: AuditInputs, folder: Path, *, norm: str, eps: float, version: str,
         n_eval: int | None, seed: int, batch_size: int | None, dataset: str,
         classes: Sequence[str] | None, keep: bool, device: torch.device,
         precision: str = "fp32", what_stands: bool = True,
         detectors: AuditDetectors | None = None) -> AuditResult:
    n = int(inputs.x.shape[0])
    stochastic = bool(inputs.purifier.stochastic)
    evals = (n_eval or default_n_eval(True)) if stochastic else 1
    if inputs.undefended:
        plan_lines = ["gray-box: no purifier, so every gradient threat model is the same attack "
                      "on the classifier"]
        if version != "quick":
            plan_lines.append("black-box: Square queries the classifier's outputs")
        gradient = ["gray-box"]
    else:
        assert inputs.properties is not None
        tm_plan = plan_threat_models(inputs.properties, fixed_randomness=version == "thorough",
                                     n_eval=evals)
        gradient = tm_plan.names
        plan_lines = tm_plan.lines()
        if stochastic:
            k = EOT_SAMPLES.get(version, inputs.purifier.default_eot_samples)
            plan_lines.append(f"eot: {k} draws per gradient ({version} version)")
    aware = None
    if detectors is not None:
        plan_lines.append(detectors.why)
        if detectors.differentiable:
            aware = "detector-aware" + ("+eot" if stochastic else "")
    keys = DefenseKeys(dataset, seed, inputs.classifier_label, inputs.classifier_key,
                       inputs.purifier_label, inputs.purifier_key, stochastic, evals, precision,
                       detectors_key=detectors.key if detectors is not None else None)
    reference = None
    if not inputs.undefended:
        reference = DefenseKeys(dataset, seed, inputs.classifier_label, inputs.classifier_key,
                                CLEAN, "none", precision=precision)
    plan = plan_cells(version, norm, eps, n, keys, inputs.purifier, gradient, reference,
                      what_stands, aware)
    purifiers = {(inputs.classifier_label, inputs.purifier_label): inputs.purifier}
    if reference is not None:
        purifiers[(inputs.classifier_label, CLEAN)] = create_purifier("none").to(device).eval()
    names = list(classes) if classes is not None else \
        [str(i) for i in range(int(inputs.classifier.num_classes or 0))]
    work = Workload(inputs.x, inputs.y, names, {inputs.classifier_label: inputs.classifier},
                    purifiers, device, batch_size or min(n, DEFAULT_BATCH), seed, plan.cells,
                    precision=precision)
    if detectors is not None:
        work.detectors[(inputs.classifier_label, inputs.purifier_label)] = detectors.detectors
    inputs.purifier.set_precision(precision)
    seed_everything(seed)
    if any(c.after for c in plan.cells):
        plan_lines.append("order: " + ", ".join(sorted({c.attack.label for c in plan.cells
                                                        if c.after and c.attack})) +
                          " attack only the examples every earlier attack left correct"
                          + (f" (all {evals} evaluations)" if evals > 1 else "") +
                          ", as AutoAttack does")
    record = _record(inputs, dataset, version, norm, eps, n, evals, seed, device, plan_lines,
                     plan.skipped)
    record["precision"] = precision
    record["config"]["audit"]["attack_what_stands"] = what_stands
    if detectors is not None:
        record["detectors"] = {inputs.purifier_label: detectors.calibration}
    with ResultStore(folder / "results.db") as store:
        failed = run_cells(work, store, errors_log=folder / "errors.log")
        rows = finished_rows(store, plan.cells)
    if failed:
        raise AepurifyError(f"{len(failed)} attack row(s) failed, first: {failed[0].row}: "
                            f"{failed[0].error}; see {folder / 'errors.log'}")
    record["failed"] = []
    summary = summarize(rows)
    settings = sanity_settings(version, norm, eps, n)
    checks = [c for c in run_checks(rows, settings, work.stochastic())
              if c.purifier == inputs.purifier_label]
    for c in checks:
        reason = not_run_reason(version, c.check)
        if reason is not None:
            c.detail, c.passed, c.finding = reason, None, ""
    result = _result(inputs, rows, summary, checks, record, version=version, norm=norm, eps=eps,
                     n=n, n_eval=evals, seed=seed, device=device, plan_lines=plan_lines,
                     threat_models=plan.threat_models)
    if keep:
        result.out_dir = result.save(folder)
        (folder / "run.json").write_text(json.dumps({**record, "status": "finished"}, indent=2,
                                                    default=str) + "\n")
    return result


def _record(inputs: AuditInputs, dataset: str, version: str, norm: str, eps: float, n: int,
            n_eval: int, seed: int, device: torch.device, plan_lines: list[str],
            skipped: list[dict[str, str]]) -> dict[str, Any]:
    """The run record the report reads (as ``evaluate``'s run.json)."""
    purifier_record: dict[str, Any] = {
        "key": inputs.purifier_key, "origin": "audit",
        "properties": inputs.purifier.properties(),
        "probed": inputs.properties.as_dict() if inputs.properties is not None else None}
    return {
        "name": f"audit of {inputs.purifier_label}" if not inputs.undefended else
        f"audit of {inputs.classifier_label} (undefended)",
        "dataset": dataset, "classifiers": [inputs.classifier_label],
        "config": {"audit": {"version": version, "norm": norm, "eps": eps, "n": n,
                             "n_eval": n_eval, "seed": seed}},
        "seed": seed, "code_version": code_version(), "command": " ".join(sys.argv),
        "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "allocator": allocator_record(),
        "test_images": n, "test_source": dataset,
        "models": {f"classifier:{inputs.classifier_label}": {
            "key": inputs.classifier_key, "origin": "audit",
            "num_classes": inputs.classifier.num_classes},
            f"purifier:{inputs.purifier_label}": purifier_record},
        "skipped": skipped, "audit_plan": plan_lines,
    }


def _result(inputs: AuditInputs, rows: list, summary: list, checks: list, record: dict, *,
            version: str, norm: str, eps: float, n: int, n_eval: int, seed: int,
            device: torch.device, plan_lines: list[str], threat_models: list[str]
            ) -> AuditResult:
    label = inputs.purifier_label
    mine = [r for r in rows if r.purifier == label]
    clean_row = next(r for r in mine if r.attack == CLEAN)
    line = next((s for s in summary if s.purifier == label and eps_key(s.eps) == eps_key(eps)),
                None)
    assert line is not None, "the audit ran no attack at its budget"
    attack_rows = [r for r in mine if r.attack != CLEAN and eps_key(r.eps) == eps_key(eps)]
    by_rule = {}
    if n_eval > 1:
        for rule in ("all_of_n", "majority_vote", "single_draw"):
            survive = np.ones(n, dtype=bool)
            for r in attack_rows:
                survive &= rule_correct(r.correct, r.details, rule)[:n]
            by_rule[rule] = float(survive.mean())
    order = sorted(rows, key=lambda r: r.purifier != label)  # stable: run order within
    still = np.ones(n, dtype=bool)  # what every attack so far at eps left correct
    per_attack = []
    for r in order:
        rec = r.csv_record()
        if "n_eval" in r.details:
            rec.update({k: r.details[k] for k in ("n_eval", "majority_vote", "single_draw")})
        if r.purifier == label and r.attack != CLEAN and eps_key(r.eps) == eps_key(eps):
            still &= r.correct[:n]
            rec["robust_after"] = float(still.mean())
        if "attacked" in r.details:
            rec["attacked"] = r.details["attacked"]
        per_attack.append(rec)
    gray = line.graybox_robust
    return AuditResult(
        clean_accuracy=clean_row.accuracy, graybox_accuracy=None if gray != gray else gray,
        robust_accuracy=line.adaptive_robust, per_attack=per_attack,
        sanity=[SanityItem(c.check, c.passed, c.detail, c.finding) for c in checks],
        threat_models_used=threat_models, properties=inputs.properties, version=version,
        norm=norm, eps=eps, n=n, n_eval=n_eval, seed=seed, device=str(device), plan=plan_lines,
        classifier=inputs.classifier_label, purifier=label,
        num_classes=int(inputs.classifier.num_classes or 0), rows=rows, summary=summary,
        sanity_results=checks, record=record, n_eval_accuracies=by_rule,
        clean_rejection_rate=None if line.clean_rejection_rate != line.clean_rejection_rate
        else line.clean_rejection_rate)
