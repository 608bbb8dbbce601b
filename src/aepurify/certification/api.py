"""``aepurify.certify``: a lower bound beside the upper bound for a purifier in front of a
classifier, through (denoised) randomized smoothing."""

from __future__ import annotations

import contextlib
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from ..allocator import allocator_record
from ..audit.inputs import prepare_inputs
from ..errors import ConfigError
from ..evaluation.lock import output_lock
from ..evaluation.store import ResultStore
from ..purifiers import Purifier
from ..utils import pick_device
from ..version import code_version
from .bracket import bracket
from .result import CertifyResult
from .run import DEFAULT_RADII, CertifySettings, run_defense
from .smoothadv import SmoothAdvSettings, attack_needs_bpda
from .smoothing import SmoothedClassifier, draws_per_call

RUN_FILE = "certify.db"


def certify(classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
            purifier: Purifier | Callable[[torch.Tensor], Any] | None,
            x: torch.Tensor, y: torch.Tensor, *, sigma: float, n: int = 100_000, n0: int = 100,
            alpha: float = 0.001, radii: Sequence[float] = DEFAULT_RADII,
            attack: SmoothAdvSettings | dict[str, Any] | bool | None = True,
            out: str | Path | None = None, device: str = "auto", seed: int = 0,
            max_pixels: int | None = None, precision: str = "fp32", dataset: str = "certify",
            name: str | None = None, record: dict[str, Any] | None = None) -> CertifyResult:
    """Certified accuracy (a lower bound) beside attacked accuracy (an upper bound) of the
    smoothed classifier ``g(x) = argmax_c P[f(D(clip(x + delta, 0, 1))) = c]``,
    ``delta ~ N(0, sigma^2 I)``, per L2 radius.

    Lower bound: Cohen, Rosenfeld and Kolter's CERTIFY (ICML 2019) per image: ``n0`` draws pick
    the top class cA, ``n`` fresh draws bound P[f = cA] from below (Clopper-Pearson, confidence
    1 - alpha), giving the radius ``sigma * Phi^-1(pA_low)`` or ABSTAIN. Upper bound: SmoothAdv
    (Salman et al., NeurIPS 2019), L2 PGD on the average softmax over noise draws, each example
    judged by PREDICT (an abstention counts as an error). With a purifier this is denoised
    smoothing (Salman et al., NeurIPS 2020); train it as a Gaussian denoiser at ``sigma``
    (:mod:`aepurify.training.gaussian_denoiser`). The noisy image is clipped to [0, 1] before D
    and f (the certificate holds for any base classifier, so for f o D o clip). The check fails
    where certified accuracy exceeds attacked accuracy beyond what abstentions and the 2 alpha
    failure probability allow (:mod:`aepurify.certification.bracket`): a bug in a bound.

    Args:
        classifier: f, an ``nn.Module`` (or callable) mapping (N, C, H, W) in [0, 1] to logits
            (N, K); wrapped with :func:`aepurify.as_classifier` as in :func:`aepurify.audit`.
        purifier: D, a Purifier or any callable (N, C, H, W) in [0, 1] -> the same; None:
            plain randomized smoothing. A purifier that is not differentiable is attacked
            through its BPDA surrogate.
        x: images (N, C, H, W), float in [0, 1]; y: labels (N,) in [0, K).
        sigma: noise standard deviation, pixels in [0, 1] (> 0).
        n, n0, alpha: CERTIFY's estimation draws, selection draws and failure probability
            (Cohen et al.'s 100,000, 100 and 0.001).
        radii: L2 radii (pixels in [0, 1]) of the table.
        attack: :class:`SmoothAdvSettings` or its fields as a dict; True: the defaults; False
            or None: no attack (certified accuracy only).
        out: folder for certify.db (resumable), certify.csv, attacked.csv, summary.csv,
            certified.png, report.md, report.html and run.json; None: nothing written.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        seed: seeds every noise draw (replayable per image, see :mod:`.smoothing`).
        max_pixels: pixel values per call of D and f (None: by device, as EOT).
        precision: the base classifier's arithmetic when counting (CERTIFY, PREDICT): ``fp32``,
            ``bf16`` (autocast, channels-last: 3 to 4x faster on an AMX CPU, and a certificate
            of the bf16 network, not of the fp32 one) or ``auto``.
        dataset, name: labels of the report; record: extra entries for run.json.

    Returns:
        :class:`~aepurify.certification.CertifyResult`.

    Raises:
        InputError: x not a float (N, C, H, W) tensor in [0, 1]; y not labels in [0, K).
        ConfigError: a classifier returning probabilities or not (N, K) logits; a purifier that
            changes the shape or leaves [0, 1]; sigma, n, n0, alpha, radii or attack settings
            out of range.
        OutputLockedError: another run writes to ``out``.
    """
    settings = make_settings(sigma=sigma, n=n, n0=n0, alpha=alpha, radii=list(radii),
                             attack=attack, max_pixels=max_pixels, seed=seed,
                             precision=precision)
    dev = pick_device(device)
    with _folder(out) as folder:
        return run_certification(classifier, purifier, x, y, settings, folder,
                                 keep=out is not None, device=dev, dataset=dataset, name=name,
                                 record=record)


def run_certification(classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                      purifier: Purifier | Callable[[torch.Tensor], Any] | None,
                      x: torch.Tensor, y: torch.Tensor, settings: CertifySettings,
                      folder: Path, *, keep: bool, device: torch.device,
                      dataset: str = "certify", name: str | None = None,
                      record: dict[str, Any] | None = None) -> CertifyResult:
    """:func:`certify` with validated settings, in ``folder`` (whose lock the caller holds):
    the run file there, and the report files too when ``keep``."""
    seed = settings.seed
    inputs = prepare_inputs(classifier, purifier, x, y, device, seed)
    smoothed = SmoothedClassifier(inputs.classifier, inputs.purifier, settings.sigma,
                                  settings.max_pixels, settings.counting(device))
    bpda = not inputs.undefended and attack_needs_bpda(inputs.purifier)
    labels = (inputs.classifier_label, inputs.purifier_label)
    keys = {"classifier": inputs.classifier_key, "purifier": inputs.purifier_key}
    with ResultStore(folder / RUN_FILE) as store:
        run = run_defense(smoothed, inputs.x, inputs.y, settings, store, keys, labels, bpda=bpda)
    rows = bracket(run, settings.radii, settings.sigma, settings.alpha)
    defense = (f"{labels[0]} (plain randomized smoothing)" if inputs.undefended
               else f"{labels[1]} in front of {labels[0]}")
    budget = smoothed.pixel_budget(device)
    rec = {"name": name or f"certify {defense}", "dataset": dataset, "defense": defense,
           "classifier": labels[0], "purifier": labels[1], "settings": settings.model_dump(),
           "predict_n": settings.predict_n, "test_images": int(inputs.x.shape[0]), "seed": seed,
           "code_version": code_version(), "command": " ".join(sys.argv),
           "python": platform.python_version(), "torch": torch.__version__,
           "device": str(device), "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "pixel_budget": budget,
           "draws_per_call": draws_per_call(tuple(inputs.x.shape[1:]), budget),
           "attack_backward": "bpda (surrogate)" if bpda else "exact",
           "counting_precision": smoothed.precision,
           "attack_precision": settings.attack.arithmetic(device), "keys": keys,
           "allocator": allocator_record(),
           "seconds": run.seconds, **(record or {})}
    result = CertifyResult(run, rows, settings, rec)
    if keep:
        result.save(folder)
    return result


def make_settings(*, attack: SmoothAdvSettings | dict[str, Any] | bool | None,
                  **fields: Any) -> CertifySettings:
    """:class:`CertifySettings` from keyword values, with one-line errors.

    Raises:
        ConfigError: a value out of range (names the field).
    """
    if attack is True:
        attack = SmoothAdvSettings()
    elif attack in (False, None):
        attack = SmoothAdvSettings(enabled=False)
    try:
        return CertifySettings(attack=attack, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


@contextlib.contextmanager
def _folder(out: str | Path | None) -> Iterator[Path]:
    """The output folder under its lock, or a temporary folder for the run file."""
    if out is not None:
        with output_lock(out):
            yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="aepurify-certify-") as tmp:
        yield Path(tmp)
