"""The work of one smoothed classifier: CERTIFY every image, then attack it at every radius and
judge each adversarial example with PREDICT. Every image's answer is committed to the run's
SQLite file as soon as it is known (keyed by a hash of everything that determines it), so a
killed run resumes where it stopped and a finished one is read back, not recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from ..evaluation.store import ResultStore
from ..precision import Precision, check_precision, resolve_precision
from ..utils import batches, progress_bar, stable_hash
from .cohen import ABSTAIN, check_alpha
from .smoothadv import SmoothAdvSettings, smoothadv, smoothadv_batch_size
from .smoothing import SmoothedClassifier

# The radii of the MNIST table (L2, pixels in [0, 1]).
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


class CertifySettings(BaseModel):
    """What a certification run does (Cohen et al.'s defaults where they have one).

    Attributes:
        sigma: noise standard deviation, pixels in [0, 1].
        n: CERTIFY's estimation draws (100,000 in Cohen et al.).
        n0: CERTIFY's selection draws (100).
        alpha: failure probability of each certificate and each PREDICT answer (0.001).
        radii: L2 radii, pixels in [0, 1], at which certified and attacked accuracy are read.
        attack: the SmoothAdv attack giving the upper bound (:class:`SmoothAdvSettings`).
        max_pixels: pixel values per call of D and f (None: 256 CIFAR-10-sized images on a CPU,
            4,096 on an accelerator, as EOT).
        seed: base seed of every noise draw.
        precision: the base classifier's arithmetic in every counting pass (CERTIFY and
            PREDICT): ``fp32`` (default), ``bf16`` or ``auto`` (bf16 where the hardware runs it
            fast). Part of what is certified (:mod:`.smoothing`); the attack's gradients have
            their own (``attack.precision``).
    """

    model_config = ConfigDict(extra="forbid")

    sigma: float = Field(gt=0)
    n: int = Field(100_000, ge=1)
    n0: int = Field(100, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    radii: list[float] = Field(default_factory=lambda: list(DEFAULT_RADII), min_length=1)
    attack: SmoothAdvSettings = Field(default_factory=SmoothAdvSettings)
    max_pixels: int | None = Field(None, ge=1)
    seed: int = 0
    precision: str = "fp32"

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        return check_precision(value)

    def counting(self, device: torch.device | str) -> Precision:
        """The counting passes' precision on ``device`` (``fp32`` or ``bf16``)."""
        return resolve_precision(self.precision, device)

    @field_validator("radii")
    @classmethod
    def _radii(cls, value: list[float]) -> list[float]:
        if any(not np.isfinite(r) or r < 0 for r in value):
            raise ValueError("radii must be finite and >= 0")
        return sorted(set(float(r) for r in value))

    @property
    def predict_n(self) -> int:
        """PREDICT's draws for the attacked examples."""
        return self.attack.predict_n or self.n


@dataclass
class DefenseRun:
    """Per-image answers of one smoothed classifier (f, D, sigma).

    Attributes:
        classifier, purifier: row labels (purifier ``none``: plain randomized smoothing).
        labels: true labels (N,).
        certificates: CERTIFY per image: ``prediction`` (class or -1), ``radius``,
            ``p_lower``, ``count``, ``top_class``.
        attacked: radius -> PREDICT per image on its adversarial example: ``prediction`` (class
            or -1), ``p_value``, ``inherited`` (broken at a smaller radius: that example lies
            inside this ball too, so it is not attacked again).
        seconds: wall time of the certification and attack phases in this process (0 for a
            phase read back from the run file).
        bpda: whether the attack went through the purifier's surrogate.
    """

    classifier: str
    purifier: str
    labels: np.ndarray
    certificates: list[dict[str, Any]]
    attacked: dict[float, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    bpda: bool = False

    def certified_correct(self, radius: float) -> np.ndarray:
        """(N,) bool: certified with the true class at a radius >= ``radius``."""
        pred = np.array([c["prediction"] for c in self.certificates])
        rad = np.array([c["radius"] for c in self.certificates])
        return (pred == self.labels) & (rad >= radius)

    def attacked_predictions(self, radius: float) -> np.ndarray | None:
        """(N,) PREDICT's answers on the adversarial examples at ``radius`` (None: no attack)."""
        rows = self.attacked.get(radius)
        return None if rows is None else np.array([r["prediction"] for r in rows])


def _specs(settings: CertifySettings, keys: dict[str, str], budget: int,
           device: torch.device) -> tuple[str, str]:
    """Hashes of what determines the certificates and the attacked verdicts."""
    base = {"keys": keys, "sigma": settings.sigma, "seed": settings.seed, "budget": budget}
    counting = settings.counting(device)
    if counting != "fp32":  # fp32 runs keep the keys of earlier versions
        base["precision"] = counting
    cert = stable_hash({**base, "n": settings.n, "n0": settings.n0, "alpha": settings.alpha})
    attack = stable_hash({**base, "attack": settings.attack.model_dump(), "alpha": settings.alpha,
                          "predict_n": settings.predict_n,
                          "arithmetic": settings.attack.arithmetic(device)})
    return cert, attack


def run_defense(smoothed: SmoothedClassifier, x: torch.Tensor, y: torch.Tensor,
                settings: CertifySettings, store: ResultStore, keys: dict[str, str],
                labels: tuple[str, str], bpda: bool = False) -> DefenseRun:
    """CERTIFY every image, then (if enabled) attack and PREDICT at every radius.

    Args:
        smoothed: the smoothed classifier, on x's device.
        x: images (N, C, H, W) in [0, 1], already validated; y: labels (N,).
        settings: sigma (must equal ``smoothed.sigma``), n, n0, alpha, radii, attack, seed.
        store: the run's SQLite file (answers committed image by image).
        keys: what identifies the models and the images (part of every stored answer's key).
        labels: (classifier label, purifier label).
        bpda: attack through the purifier's surrogate.

    Raises:
        ConfigError: settings and smoothed classifier disagree on sigma.
    """
    if abs(settings.sigma - smoothed.sigma) > 1e-12:
        raise ConfigError(f"settings sigma {settings.sigma} != the smoothed classifier's "
                          f"{smoothed.sigma}")
    check_alpha(settings.alpha)
    budget = smoothed.pixel_budget(x.device)
    cert_spec, attack_spec = _specs(settings, keys, budget, x.device)
    y_np = y.cpu().numpy()
    run = DefenseRun(labels[0], labels[1], y_np, [], bpda=bpda)
    start = time.perf_counter()
    run.certificates = _certify_all(smoothed, x, settings, store, cert_spec, labels[1])
    run.seconds["certify"] = round(time.perf_counter() - start, 2)
    if settings.attack.enabled:
        start = time.perf_counter()
        broken = np.zeros(len(y_np), dtype=bool)
        last: list[dict[str, Any]] | None = None
        for radius in settings.radii:
            rows = _attack_radius(smoothed, x, y, radius, settings, store, attack_spec, broken,
                                  last, labels[1], bpda)
            run.attacked[radius] = rows
            broken |= np.array([r["prediction"] for r in rows]) != y_np
            last = rows
        run.seconds["attack"] = round(time.perf_counter() - start, 2)
    return run


def _certify_all(smoothed: SmoothedClassifier, x: torch.Tensor, settings: CertifySettings,
                 store: ResultStore, spec: str, label: str) -> list[dict[str, Any]]:
    out = []
    bar = progress_bar(f"certify {label}", total=x.shape[0], unit="image")
    for i in range(x.shape[0]):
        key = f"certify:{spec}:{i}"
        rec = store.get_meta(key)
        if rec is None:
            c = smoothed.certify(x[i], settings.n0, settings.n, settings.alpha, settings.seed, i)
            rec = {"prediction": c.prediction, "radius": c.radius, "p_lower": c.p_lower,
                   "count": c.count, "top_class": c.top_class}
            store.set_meta(key, rec)
        out.append(rec)
        bar.update(1)
    bar.close()
    return out


def _attack_radius(smoothed: SmoothedClassifier, x: torch.Tensor, y: torch.Tensor,
                   radius: float, settings: CertifySettings, store: ResultStore, spec: str,
                   broken: np.ndarray, last: list[dict[str, Any]] | None, label: str,
                   bpda: bool) -> list[dict[str, Any]]:
    """PREDICT on each image's adversarial example at ``radius`` (the clean image at 0); an
    image broken at a smaller radius keeps that verdict. The batches are fixed by which images
    are left, and a batch's answers are committed together, so a resumed run attacks the same
    batches with the same draws as an uninterrupted one."""
    n = x.shape[0]
    rows: list[dict[str, Any] | None] = [None] * n
    todo = []
    for i in range(n):
        if broken[i] and last is not None:
            rows[i] = {**last[i], "inherited": True}
        else:
            todo.append(i)
    per_batch = smoothadv_batch_size(tuple(x.shape[1:]), settings.attack.noise_draws,
                                     smoothed.pixel_budget(x.device))
    key = f"attack:{spec}:{radius:g}"
    bar = progress_bar(f"attack {label} r={radius:g}", total=len(todo), unit="image")
    for sl in batches(len(todo), per_batch):
        idx = todo[sl]
        stored = store.get_meta(f"{key}:{idx[0]}")
        if stored is None or [r["index"] for r in stored] != idx:
            stored = _attack_batch(smoothed, x, y, idx, radius, settings, bpda, bar.update)
            store.set_meta(f"{key}:{idx[0]}", stored)
        else:
            bar.update(len(idx))
        for rec in stored:
            rows[rec["index"]] = rec
    bar.close()
    assert all(r is not None for r in rows)
    return rows  # type: ignore[return-value]


def _attack_batch(smoothed: SmoothedClassifier, x: torch.Tensor, y: torch.Tensor,
                  idx: list[int], radius: float, settings: CertifySettings, bpda: bool,
                  advance: Callable[[int], Any]) -> list[dict[str, Any]]:
    """SmoothAdv at ``radius`` (none at 0) on images ``idx``, then PREDICT on each example."""
    xb = x[idx]
    if radius > 0:
        xb = smoothadv(smoothed, xb, y[idx], radius, settings.attack, settings.seed, idx[0],
                       bpda=bpda)
    out = []
    for j, i in enumerate(idx):
        p = smoothed.predict(xb[j], settings.predict_n, settings.alpha, settings.seed, i,
                             phase=f"predict-{radius:g}")
        out.append({"index": i, "prediction": p.prediction, "p_value": p.p_value,
                    "inherited": False, "distance": float((xb[j] - x[i]).norm())})
        advance(1)
    return out


def abstained(predictions: np.ndarray) -> np.ndarray:
    """(N,) bool: where an answer is ABSTAIN."""
    return predictions == ABSTAIN
