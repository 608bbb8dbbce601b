"""Experiment configs (YAML), validated with pydantic; every name is checked against its registry
before any work starts, so a typo costs one line of error, not a half-finished run.

A config describes the grid classifier x purifiers x threat models x attacks x epsilons::

    name: demo-mnist
    dataset: mnist
    n_test: 1000
    classifier: {arch: lenet, train: {epochs: 2}}
    purifiers:
      - {name: magnet, train: {epochs: 3}}
      - {name: jpeg, params: {quality: 50}, threat_models: [gray-box, bpda]}
    threat_models: [gray-box, white-box, bpda]
    attacks:
      - {name: fgsm, norm: linf, eps: [0.1, 0.2, 0.3]}
      - {name: pgd, norm: linf, eps: [0.1, 0.2, 0.3], params: {steps: 20}}

Epsilons may be written as fractions (``8/255``); they are on the [0, 1] pixel scale.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..attacks import ATTACKS, parse_threat_model
from ..data import DATASETS
from ..errors import ConfigError
from ..models import CLASSIFIERS
from ..purifiers import PURIFIERS
from ..utils import check_device_name, parse_eps
from .config_entries import (AttackEntry, AutoencoderEntry, ClassifierEntry, DetectorEntry,
                             PurifierEntry, _Strict)
from .store import SANITY_PREFIX

__all__ = ["ExperimentConfig", "ClassifierEntry", "PurifierEntry", "AttackEntry",
           "DetectorEntry", "AutoencoderEntry", "SanitySettings", "AnalysisEntry"]


def check_detector_names(detector: DetectorEntry, entry: PurifierEntry) -> None:
    """The detector's registry name, its autoencoder's, and that the autoencoder it reads (its
    own, else the entry's registered purifier) has a reconstruction error.

    Raises:
        ConfigError: an unknown name, or a purifier without a reconstruction error.
    """
    from ..detectors import DETECTORS

    DETECTORS.get(detector.name)
    source = detector.autoencoder.name if detector.autoencoder is not None else entry.name
    if source is None:  # an entry point: known once it is built
        return
    cls = PURIFIERS.get(source)
    if not cls.reconstructs:
        where = "its autoencoder" if detector.autoencoder is not None else "the purifier"
        raise ConfigError(f"{where} {source!r} has no reconstruction error, so it cannot feed "
                          f"a detector (use an autoencoder: magnet, apudae, feature-dae, hgd, "
                          f"vae, patch-vae, s2snet)")


class SanitySettings(_Strict):
    """Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness").

    When enabled, the runner adds PGD rows with ``steps`` iterations (and the first with
    ``restarts`` restarts), a Square row under ``black-box`` and a PGD row at ``large_eps``, all
    on the first ``n_test`` images under each purifier's ``threat_model`` (``strongest``: white-box
    where exact, else bpda, plus eot for a random purifier). The checks read those rows and the
    grid's gray-box / transfer / white-box rows and land in ``sanity.csv`` and the report.

    Attributes:
        enabled: add the sanity rows and checks.
        norm: norm of the sanity attacks.
        eps: budget of the iteration and Square checks (default: the largest budget of that norm
            among the config's attacks).
        large_eps: a budget at which accuracy must fall to about 0 (default 1.0 for L-inf, where
            any image is reachable, 60 for L2).
        n_test: images for the sanity attacks.
        n_test_random: images for the sanity attacks on a random (stochastic) purifier, where EOT
            makes every gradient cost ``eot_samples`` passes (default: ``n_test``).
        steps: PGD iteration counts to compare (more must not raise accuracy).
        restarts: restarts of the first PGD (more must not raise accuracy).
        square_queries: queries of the Square attack.
        threat_model: threat model of the gradient sanity attacks.
        tolerance: accuracy difference tolerated before a comparison check fails.
        large_eps_max_accuracy: accuracy at ``large_eps`` above which that check fails.
        min_eot_samples: EOT draws a random purifier needs for its adaptive accuracy to count.
    """

    enabled: bool = False
    norm: Literal["linf", "l2"] = "linf"
    eps: float | None = Field(None, gt=0)
    large_eps: float | None = Field(None, gt=0)
    n_test: int = Field(100, ge=1)
    n_test_random: int | None = Field(None, ge=1)
    steps: list[int] = Field(default_factory=lambda: [10, 100], min_length=2)
    restarts: int = Field(5, ge=1)
    square_queries: int = Field(1000, ge=1)
    threat_model: str = "strongest"
    tolerance: float = Field(0.03, ge=0)
    large_eps_max_accuracy: float = Field(0.1, ge=0, le=1)
    min_eot_samples: int = Field(20, ge=1)

    @field_validator("eps", "large_eps", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        return None if value is None else parse_eps(value)


class AnalysisEntry(_Strict):
    """An analysis run after the grid (a registry name and its options)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(_Strict):
    """A whole evaluation grid (see the module docstring for an example).

    Attributes:
        name: experiment name (report title).
        dataset: data set registry name, or an image folder
            ``{kind: imagefolder, root: DIR, image_size: 224, ...}`` (see
            :class:`aepurify.data.ImageFolderOptions`), registered under its name on validation.
        dataset_source: the image folder mapping ``dataset`` was given as (None for a name).
        data_dir: folder with the data files (else --data-dir, AEPURIFY_DATA, cache).
        seed: base seed; every row derives its own from it.
        n_test: evaluate on the first n_test test images.
        batch_size: images per attack batch.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: arithmetic of attack gradients and of purifiers' inner optimisations
            (APuDAE's refinement): ``auto`` (bf16 autocast with channels-last on CUDA and on
            CPUs with bf16 units, fp32 elsewhere), ``bf16`` or ``fp32``. Verdicts (the forward
            passes that decide whether an example is correct) always run in fp32; training has
            its own ``train.precision`` (default ``auto`` too). See :mod:`aepurify.precision`.
        classifiers: the classifiers under defense (``classifier:`` with one entry is
            shorthand); each gets the whole grid, and purifiers trained against the classifier
            are trained once per classifier.
        transfer_source: classifier the ``transfer`` threat model crafts on.
        purifiers: the purifiers (the undefended classifier, purifier ``none``, is added).
        include_undefended: add purifier ``none``.
        threat_models: threat models applied to every purifier (unless overridden).
        attacks: attacks with their budgets.
        eot_samples: EOT draws (default: each purifier's own).
        n_eval: evaluations of every example for a random purifier (N-evaluation; default 10
            for a random purifier, 1 for a deterministic one; a purifier entry's wins).
        analyses: extra analyses run after the grid (see ``aepurify.evaluation.analyses``).
        sanity: gradient-masking checks (see :class:`SanitySettings`).
    """

    name: str = "experiment"
    dataset: str
    dataset_source: dict[str, Any] | None = None
    data_dir: str | None = None
    seed: int = 0
    n_test: int = Field(1000, ge=1)
    batch_size: int = Field(500, ge=1)
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    classifiers: list[ClassifierEntry] = Field(min_length=1)
    transfer_source: ClassifierEntry | None = None
    purifiers: list[PurifierEntry] = Field(default_factory=list)
    include_undefended: bool = True
    threat_models: list[str] = Field(default_factory=lambda: ["gray-box"])
    attacks: list[AttackEntry] = Field(default_factory=list)
    eot_samples: int | None = Field(None, ge=1)
    n_eval: int | None = Field(None, ge=1)
    analyses: list[AnalysisEntry] = Field(default_factory=list)
    sanity: SanitySettings = Field(default_factory=SanitySettings)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        try:
            return check_device_name(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _image_folder(cls, data: Any) -> Any:
        """An image folder mapping as ``dataset``: register it, keep the mapping (a dumped
        config, with the name and the mapping, registers it again)."""
        if not isinstance(data, dict):
            return data
        source = data.get("dataset")
        if not isinstance(source, dict):
            source = data.get("dataset_source")
        if isinstance(source, dict):
            from ..data import register_dataset

            data = {**data, "dataset": register_dataset(source), "dataset_source": source}
        return data

    @model_validator(mode="before")
    @classmethod
    def _single_classifier(cls, data: Any) -> Any:
        if isinstance(data, dict) and "classifier" in data:
            if "classifiers" in data:
                raise ValueError("give either classifier or classifiers, not both")
            data = {**data, "classifiers": [data["classifier"]]}
            data.pop("classifier")
        return data

    @property
    def classifier(self) -> ClassifierEntry:
        """The first (often the only) classifier."""
        return self.classifiers[0]

    @model_validator(mode="after")
    def _labels_unique(self) -> ExperimentConfig:
        clf_labels = [c.row_label for c in self.classifiers]
        if len(set(clf_labels)) != len(clf_labels):
            raise ValueError("classifier labels must be unique; give each a label")
        labels = [p.row_label for p in self.purifiers]
        dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dupes:
            raise ValueError(f"purifier labels must be unique; repeated: {', '.join(dupes)} "
                             "(give each a label)")
        if "none" in labels:
            raise ValueError("purifier label 'none' is reserved for the undefended classifier")
        for i, a in enumerate(self.attacks):
            unknown = sorted(set(a.purifiers or []) - set(labels) - {"none"})
            if unknown:
                raise ValueError(f"attacks[{i}].purifiers names unknown purifier label(s): "
                                 f"{', '.join(unknown)}")
        return self

    def check_names(self) -> None:
        """Check every registry name; raise ConfigError naming the first unknown one."""
        DATASETS.get(self.dataset)
        entries = [(f"classifiers[{i}]" if len(self.classifiers) > 1 else "classifier", c)
                   for i, c in enumerate(self.classifiers)]
        for where, entry in entries + (
                [("transfer_source", self.transfer_source)] if self.transfer_source else []):
            try:
                if entry.arch is not None:
                    CLASSIFIERS.get(entry.arch)
            except ConfigError as exc:
                raise ConfigError(f"{where}.arch: {exc}") from None
        for i, p in enumerate(self.purifiers):
            try:
                if p.name is not None:
                    PURIFIERS.get(p.name)
                for tm in p.threat_models or []:
                    parse_threat_model(tm)
            except ConfigError as exc:
                raise ConfigError(f"purifiers[{i}]: {exc}") from None
            for j, d in enumerate(p.detectors):
                try:
                    check_detector_names(d, p)
                except ConfigError as exc:
                    raise ConfigError(f"purifiers[{i}].detectors[{j}]: {exc}") from None
        for i, a in enumerate(self.attacks):
            try:
                ATTACKS.get(a.name)
                for tm in a.threat_models or []:
                    parse_threat_model(tm)
            except ConfigError as exc:
                raise ConfigError(f"attacks[{i}]: {exc}") from None
        for tm in self.threat_models:
            try:
                parse_threat_model(tm)
            except ConfigError as exc:
                raise ConfigError(f"threat_models: {exc}") from None
        try:
            parse_threat_model(self.sanity.threat_model)
        except ConfigError as exc:
            raise ConfigError(f"sanity.threat_model: {exc}") from None
        for i, a in enumerate(self.analyses):
            from .analyses import ANALYSES

            try:
                ANALYSES.get(a.name)
            except ConfigError as exc:
                raise ConfigError(f"analyses[{i}]: {exc}") from None
        needs_source = any(parse_threat_model(t)[0] == "transfer" for t in self.all_threat_models())
        if needs_source and self.transfer_source is None:
            raise ConfigError("the transfer threat model needs transfer_source in the config")

    def sanity_attacks(self) -> list[AttackEntry]:
        """The attack entries the sanity checks add (labels start with ``sanity-``)."""
        s = self.sanity
        if not s.enabled:
            return []
        eps = s.eps
        if eps is None:
            budgets = [e for a in self.attacks if a.norm == s.norm for e in a.eps]
            eps = max(budgets) if budgets else (0.3 if s.norm == "linf" else 2.0)
        large = s.large_eps if s.large_eps is not None else (1.0 if s.norm == "linf" else 60.0)
        few, many = s.steps[0], s.steps[-1]
        common = {"norm": s.norm, "n_test": s.n_test}
        entries = [AttackEntry(name="pgd", label=f"{SANITY_PREFIX}pgd-{k}", eps=[eps],
                               params={"steps": k}, threat_models=[s.threat_model], **common)
                   for k in s.steps[:-1]]
        entries.append(AttackEntry(name="pgd", label=f"{SANITY_PREFIX}pgd-{many}",
                                   eps=[eps, large], params={"steps": many},
                                   threat_models=[s.threat_model], **common))
        entries.append(AttackEntry(name="pgd", label=f"{SANITY_PREFIX}pgd-{few}x{s.restarts}",
                                   eps=[eps], params={"steps": few}, restarts=s.restarts,
                                   threat_models=[s.threat_model], **common))
        entries.append(AttackEntry(name="square", label=f"{SANITY_PREFIX}square-{s.square_queries}",
                                   eps=[eps], params={"n_queries": s.square_queries},
                                   threat_models=["black-box"], **common))
        return entries

    def all_attacks(self) -> list[AttackEntry]:
        """The config's attacks followed by the sanity attacks."""
        return [*self.attacks, *self.sanity_attacks()]

    def all_threat_models(self) -> list[str]:
        """Every threat model the config names: its own list, the purifiers' and the attacks'."""
        names = list(self.threat_models)
        for p in self.purifiers:
            names += p.threat_models or []
        for a in self.attacks:
            names += a.threat_models or []
        return list(dict.fromkeys(names))
