"""The entries of an experiment config: classifiers, purifiers and attacks (see
:mod:`aepurify.evaluation.config` for the whole config).

A classifier or purifier entry names a registered model (``arch:`` / ``name:``) or the user's
own factory (``entry_point: "package.module:factory"`` with ``kwargs:``; see
:mod:`aepurify.entry_points`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..entry_points import factory_label
from ..training.settings import TrainSettings
from ..utils import parse_eps


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_source(kind: str, registered: str, value: str | None, entry_point: str | None,
                params: dict[str, Any], kwargs: dict[str, Any], checkpoint: str | None) -> None:
    """Exactly one of a registry name and an entry point; params go with the first, kwargs
    with the second."""
    if (value is None) == (entry_point is None):
        raise ValueError(f"a {kind} entry needs either {registered} (a registered name) or "
                         "entry_point ('package.module:factory'), not both")
    if entry_point is not None and params:
        raise ValueError("params are for registered models; an entry point's factory takes "
                         "kwargs")
    if entry_point is None and kwargs:
        raise ValueError(f"kwargs are for an entry point's factory; a registered {kind} takes "
                         "params")
    if entry_point is not None and checkpoint is not None:
        raise ValueError("an entry point builds its own model; checkpoint is for registered "
                         "models")


class ClassifierEntry(_Strict):
    """The classifier under defense (or the transfer source).

    Attributes:
        arch: classifier registry name (or give ``entry_point``).
        entry_point: ``"package.module:factory"``: a factory returning an ``nn.Module`` that maps
            images to logits (wrapped with :func:`aepurify.as_classifier`, which reads the
            number of classes from a forward pass on the test images).
        kwargs: the factory's keyword arguments.
        mean, std: the normalisation ``as_classifier`` puts in front of an entry point's module
            (None: the module normalises itself, or needs none).
        pretrained: an entry point's module comes with its weights and is not trained (also
            when the module has ``trainable = False``); otherwise it is trained with ``train``
            and cached under a key that includes the entry point and kwargs.
        label: the ``classifier`` column of result rows (default: arch, or the factory's name).
        params: architecture keyword arguments (registered classifiers).
        checkpoint: load this checkpoint instead of training.
        train: training settings (quick settings in the demo).
    """

    arch: str | None = None
    entry_point: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    pretrained: bool = False
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)

    @model_validator(mode="after")
    def _source(self) -> ClassifierEntry:
        _one_source("classifier", "arch", self.arch, self.entry_point, self.params, self.kwargs,
                    self.checkpoint)
        return self

    @property
    def row_label(self) -> str:
        if self.label:
            return self.label
        return self.arch if self.arch is not None else factory_label(self.entry_point or "")


class AutoencoderEntry(_Strict):
    """The autoencoder a detector reads when it is not the purifier itself (MagNet's MNIST
    detector II: a second autoencoder without pooling): a registered purifier, trained (or
    loaded) and cached like a purifier entry.

    Attributes:
        name: purifier registry name (one with a reconstruction error).
        params: its keyword arguments.
        checkpoint: load this checkpoint instead of training.
        train: training settings.
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)


class DetectorEntry(_Strict):
    """A detector on a purifier entry (MagNet; :mod:`aepurify.detectors`): a score per image and
    a threshold fixed on clean held-out training images at ``false_positive_rate``.

    Attributes:
        name: detector registry name: ``reconstruction`` (params ``p``: 1 or 2) or
            ``divergence`` (params ``temperature``).
        label: the detector's name in reports (default: ``reconstruction-l2``,
            ``divergence-t10``).
        params: the detector's options.
        autoencoder: the autoencoder whose reconstruction the score reads (default: the
            purifier of the entry, which then must have a reconstruction error).
        false_positive_rate: the fraction of clean calibration images the threshold rejects
            (MagNet: 0.001 per detector).
        calibration_images: the threshold is set on the last this-many images of the training
            split; the entry's purifier and the detector's autoencoder train on the images
            before them only (their ``train.max_images`` is capped), so the calibration images
            are held out.
    """

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    autoencoder: AutoencoderEntry | None = None
    false_positive_rate: float = Field(0.001, gt=0, lt=1)
    calibration_images: int = Field(5000, ge=1)

    @property
    def row_label(self) -> str:
        if self.label:
            return self.label
        if self.name == "reconstruction":
            return f"reconstruction-l{float(self.params.get('p', 1)):g}"
        if self.name == "divergence":
            return f"divergence-t{float(self.params.get('temperature', 1)):g}"
        return self.name


class PurifierEntry(_Strict):
    """One purifier of the grid.

    Attributes:
        name: purifier registry name (or give ``entry_point``).
        entry_point: ``"package.module:factory"``: a factory returning a
            :class:`~aepurify.purifiers.Purifier` (a trainable one is trained with ``train``
            and cached under a key that includes the entry point) or any callable mapping images
            (N, C, H, W) in [0, 1] to the same (wrapped with :func:`aepurify.as_purifier`).
        kwargs: the factory's keyword arguments.
        differentiable, stochastic: declared properties of an entry point's callable; None:
            probed on the test images (and reported).
        label: the ``purifier`` column of result rows (default: name, or the factory's name);
            distinguishes two settings of one purifier, e.g. ``jpeg-q10`` and ``jpeg-q70``.
        params: purifier keyword arguments (registered purifiers).
        checkpoint: load this checkpoint instead of training.
        train: training settings for trainable purifiers.
        threat_models: overrides the config's list for this purifier.
        eot_samples: EOT draws for this purifier (default: config, then the purifier's own).
        n_eval: evaluations of every example for a random purifier (N-evaluation; default: the
            config's, else 10 for a random purifier, 1 for a deterministic one).
        detectors: detectors that make the defense reject (:class:`DetectorEntry`); its rows
            then count rejection MagNet's way (a clean image is correct only if accepted and
            classified correctly, an adversarial one if rejected or classified correctly), and
            the ``detector-aware`` threat model applies.
    """

    name: str | None = None
    entry_point: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    differentiable: bool | None = None
    stochastic: bool | None = None
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    threat_models: list[str] | None = None
    eot_samples: int | None = Field(None, ge=1)
    n_eval: int | None = Field(None, ge=1)
    detectors: list[DetectorEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _source(self) -> PurifierEntry:
        _one_source("purifier", "name", self.name, self.entry_point, self.params, self.kwargs,
                    self.checkpoint)
        if self.entry_point is None and (self.differentiable is not None or
                                         self.stochastic is not None):
            raise ValueError("differentiable and stochastic are declared for an entry point; a "
                             "registered purifier declares its own")
        labels = [d.row_label for d in self.detectors]
        if len(set(labels)) != len(labels):
            raise ValueError(f"detector labels must be unique; got {labels} (give each a label)")
        return self

    @property
    def calibration_images(self) -> int:
        """Training images held out for the detectors' thresholds (0 without detectors)."""
        return max((d.calibration_images for d in self.detectors), default=0)

    @property
    def row_label(self) -> str:
        if self.label:
            return self.label
        return self.name if self.name is not None else factory_label(self.entry_point or "")


class AttackEntry(_Strict):
    """One attack with its budgets.

    Attributes:
        name: attack registry name.
        label: the ``attack`` column of result rows (default: name).
        norm: ``linf`` or ``l2``.
        eps: budgets on the [0, 1] pixel scale (numbers or fractions such as ``8/255``).
        params: the attack's options (steps, step size, ...).
        restarts: runs per example; an example counts as robust only if it survives all.
        n_test: attack only the first n_test test images (an expensive attack on fewer images;
            the row's ``n`` says how many).
        threat_models: run this attack under these threat models (the most specific list wins:
            the attack's, else the purifier's, else the config's).
        purifiers: restrict this attack to these purifier labels (``none`` is the undefended
            classifier); lets a config give an expensive purifier cheaper attack settings.
    """

    name: str
    label: str | None = None
    norm: Literal["linf", "l2"] = "linf"
    eps: list[float] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    restarts: int = Field(1, ge=1)
    n_test: int | None = Field(None, ge=1)
    threat_models: list[str] | None = None
    purifiers: list[str] | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> list[float]:
        values = value if isinstance(value, list) else [value]
        out = [parse_eps(v) for v in values]
        if any(v < 0 for v in out):
            raise ValueError("epsilons must be >= 0")
        return out

    @property
    def row_label(self) -> str:
        return self.label or self.name
