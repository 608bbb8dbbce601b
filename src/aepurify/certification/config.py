"""Certification configs (YAML), validated with pydantic, every name and parameter checked before
any model trains. One config is one smoothed classifier::

    name: certify-mnist-sigma0.5
    dataset: mnist
    n_test: 200
    classifier: {arch: lenet, train: {epochs: 2}}
    purifier:                       # null: plain randomized smoothing
      name: magnet
      train: {epochs: 2, lr: 0.01}
      denoiser: {objective: stability, mse_epochs: 2}   # a Gaussian denoiser at sigma
    sigma: 0.5
    n: 10000
    radii: [0, 0.25, 0.5, 0.75, 1.0, 1.5]
    attack: {steps: 20, noise_draws: 16, predict_n: 1000}

``aepurify certify CONFIG --out DIR`` trains or reuses the models (the model cache keys the
denoiser on its objective, sigma and, for the classifier objectives, the classifier) and runs
:func:`aepurify.certify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from ..data import DATASETS
from ..entry_points import check_entry_point
from ..errors import ConfigError
from ..evaluation.config_entries import ClassifierEntry, PurifierEntry, _Strict
from ..evaluation.config_file import first_error, read_config_data
from ..models import CLASSIFIERS
from ..purifiers import PURIFIERS
from ..training.gaussian_denoiser import GaussianDenoiser
from ..utils import check_device_name
from .run import DEFAULT_RADII, CertifySettings
from .smoothadv import SmoothAdvSettings

# PurifierEntry fields that belong to the attack grid of ``evaluate``, not to a certification.
GRID_ONLY = ("threat_models", "eot_samples", "n_eval")


class DenoiserEntry(PurifierEntry):
    """The purifier of a smoothed classifier: a :class:`PurifierEntry` (registered name,
    checkpoint or entry point) plus ``denoiser``, which trains a registered purifier as a
    Gaussian denoiser at the run's sigma (:class:`GaussianDenoiser`: objective ``mse``,
    ``stability`` or ``classification``, optional MSE warm start) instead of with its own
    recipe."""

    denoiser: GaussianDenoiser | None = None

    @model_validator(mode="after")
    def _certify_fields(self) -> DenoiserEntry:
        for name in GRID_ONLY:
            if getattr(self, name) is not None:
                raise ValueError(f"{name} belongs to evaluate's attack grid; a certification "
                                 "attacks the smoothed classifier with SmoothAdv (attack:)")
        if self.denoiser is not None and self.entry_point is not None:
            raise ValueError("denoiser trains a registered purifier; an entry point's purifier "
                             "trains with its own fit")
        if self.denoiser is not None and self.checkpoint is not None:
            raise ValueError("denoiser trains the purifier; a checkpoint brings trained weights")
        return self


class CertifyConfig(_Strict):
    """A certification run (see the module docstring for an example).

    Attributes:
        name: report title.
        dataset: data set registry name (test split; the models train on its training split).
        data_dir: folder with the data files (else --data-dir, AEPURIFY_DATA, cache).
        seed: seeds the noise draws, the attack and model training.
        n_test: certify the first n_test test images.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        classifier: f (a :class:`ClassifierEntry`, as in ``evaluate``).
        purifier: D (:class:`DenoiserEntry`), or None for plain randomized smoothing.
        sigma, n, n0, alpha, radii, attack, max_pixels, precision: as
            :class:`CertifySettings` (precision: the counting passes', part of what is
            certified).
    """

    name: str = "certify"
    dataset: str
    data_dir: str | None = None
    seed: int = 0
    n_test: int = Field(200, ge=1)
    device: str = "auto"
    classifier: ClassifierEntry
    purifier: DenoiserEntry | None = None
    sigma: float = Field(gt=0)
    n: int = Field(100_000, ge=1)
    n0: int = Field(100, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    radii: list[float] = Field(default_factory=lambda: list(DEFAULT_RADII), min_length=1)
    attack: SmoothAdvSettings = Field(default_factory=SmoothAdvSettings)
    max_pixels: int | None = Field(None, ge=1)
    precision: str = "fp32"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        try:
            return check_device_name(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def settings(self) -> CertifySettings:
        """The certification settings (validated: radii >= 0)."""
        try:
            return CertifySettings(sigma=self.sigma, n=self.n, n0=self.n0, alpha=self.alpha,
                                   radii=self.radii, attack=self.attack,
                                   max_pixels=self.max_pixels, seed=self.seed,
                                   precision=self.precision)
        except ValidationError as exc:
            raise ConfigError(first_error(exc)) from None

    @property
    def denoiser(self) -> GaussianDenoiser | None:
        """The purifier's denoiser settings at the run's sigma (None: none)."""
        if self.purifier is None or self.purifier.denoiser is None:
            return None
        return self.purifier.denoiser.at(self.sigma)

    def check_names(self) -> None:
        """Check every registry name and parameter before any work.

        Raises:
            ConfigError: the first unknown name or bad parameter, naming where.
        """
        DATASETS.get(self.dataset)
        checks: list[tuple[str, Any]] = [("classifier", self.classifier)]
        if self.purifier is not None:
            checks.append(("purifier", self.purifier))
        for where, entry in checks:
            registry, name = ((CLASSIFIERS, entry.arch) if where == "classifier"
                              else (PURIFIERS, entry.name))
            try:
                if name is not None:
                    registry.check_params(name, entry.params)
                else:
                    check_entry_point(entry.entry_point, entry.kwargs, where)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        self.settings()
        if self.denoiser is not None:  # a sigma of its own that disagrees raised just now
            from ..purifiers import create_purifier
            from ..training.gaussian_denoiser import check_denoiser_purifier
            from ..utils import preserved_rng

            entry = self.purifier
            assert entry is not None and entry.name is not None
            with preserved_rng():  # built to read its properties, before anything trains
                built = create_purifier(entry.name, self.dataset, **entry.params)
            name = entry.name
            try:
                check_denoiser_purifier(built, name)
            except ConfigError as exc:
                raise ConfigError(f"purifier.denoiser: {exc}") from None


def load_certify_config(path: str | Path, overrides: dict[str, Any] | None = None
                        ) -> CertifyConfig:
    """Read and validate a certification config; ``overrides`` as ``evaluate``'s ``--set``
    (dotted paths, e.g. ``{"sigma": 0.25, "purifier.denoiser.objective": "mse"}``; ``purifier``
    set to None gives plain randomized smoothing).

    Raises:
        ConfigError: missing file, unreadable YAML, bad override path, invalid entries.
    """
    data = read_config_data(path, overrides)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = CertifyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_error(exc)}") from None
    try:
        config.check_names()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config
