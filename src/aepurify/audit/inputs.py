"""The audit's boundary: wrap what the user gives (any classifier module, any purifier callable or
None) and validate it once, with one clear line per problem, before any attack runs.

- images: a float tensor (N, C, H, W) in [0, 1];
- the classifier: logits (N, K), not probabilities (:func:`aepurify.as_classifier`, which reads
  K from a forward pass on the images);
- labels: integers (N,) in [0, K);
- the purifier: maps the images to the same shape in [0, 1] (checked on the first images for a
  :class:`~aepurify.purifiers.Purifier`; an ``as_purifier`` callable is checked on every call).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checks import check_images
from ..errors import ConfigError
from ..models import WrappedClassifier, as_classifier, check_labels
from ..purifiers import Purifier, PurifierProperties, as_purifier, create_purifier, probe_properties
from ..purifiers.randomness import seeded_rng
from ..purifiers.wrapped import check_purified
from ..utils import module_digest, stable_hash

PROBE_IMAGES = 8


@dataclass
class AuditInputs:
    """What the audit attacks, wrapped, validated and on the device.

    Attributes:
        classifier: the wrapped classifier, eval mode: (N, C, H, W) in [0, 1] -> logits (N, K).
        purifier: the purifier (``Identity`` for the undefended classifier), properties known.
        properties: declared and probed properties (None for the undefended classifier).
        x, y: the images (N, C, H, W) in [0, 1] and labels (N,) on the device.
        classifier_label, purifier_label: names in rows and reports.
        classifier_key, purifier_key: what determines each model's rows: a digest of its
            weights and of its outputs on the first images, and (classifier) of the images.
    """

    classifier: WrappedClassifier
    purifier: Purifier
    properties: PurifierProperties | None
    x: torch.Tensor
    y: torch.Tensor
    classifier_label: str
    purifier_label: str
    classifier_key: str
    purifier_key: str

    @property
    def undefended(self) -> bool:
        return self.properties is None


def _label(obj: Any, default: str) -> str:
    inner = obj.module if isinstance(obj, WrappedClassifier) else obj
    name = getattr(inner, "name", None)
    if not isinstance(name, str) or not name.strip() or name.startswith("classifier "):
        name = getattr(inner, "__name__", None) or type(inner).__name__
    name = str(name).strip()
    if name in ("none", "<lambda>", "function", "_Call"):  # "none" is the undefended classifier
        name = default
    return name


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _output_digest(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int) -> str:
    """A digest of fn's outputs on the probe images under seeded generators: it tells two
    functions apart that share a name (two lambdas) when a run resumes in an output folder."""
    with seeded_rng(seed, x.device), torch.no_grad():
        out = fn(x)
    return _tensor_digest(out.float())


def prepare_inputs(classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                   purifier: Purifier | Callable[[torch.Tensor], Any] | None,
                   x: object, y: object, device: torch.device, seed: int) -> AuditInputs:
    """Wrap and validate the audit's inputs (see the module docstring) and probe what the
    purifier does not declare.

    Raises:
        InputError: images not a float (N, C, H, W) tensor in [0, 1], or labels not integers
            (N,) in [0, K).
        ConfigError: a classifier that returns probabilities or not (N, K) logits; a purifier
            that is not callable, changes the shape, or returns values outside [0, 1] or NaN.
    """
    x = check_images(x, what="x")
    if x.shape[0] == 0:
        raise ConfigError("x holds no images")
    x = x.detach().to(device)
    if isinstance(classifier, nn.Module):
        classifier = classifier.to(device)
    clf = as_classifier(classifier, sample=x) if not isinstance(classifier, WrappedClassifier) \
        else classifier
    clf = clf.to(device).eval()
    if clf.input_shape is None:  # a wrapped classifier that never saw images: check it now
        with torch.no_grad():
            clf(x[:PROBE_IMAGES])
    y = check_labels(y, int(clf.num_classes), x.shape[0]).to(device)  # type: ignore[arg-type]
    probe = x[:PROBE_IMAGES]
    data_key = stable_hash([_tensor_digest(x), _tensor_digest(y)])
    clf_key = stable_hash({"weights": module_digest(clf), "data": data_key,
                           "logits": _output_digest(clf, probe, seed)})
    if purifier is None:
        ident = create_purifier("none").to(device).eval()
        return AuditInputs(clf, ident, None, x, y, _label(classifier, "classifier"), "none",
                           clf_key, "none")
    if not callable(purifier):
        raise ConfigError(f"the purifier must be callable (images -> images) or None; got "
                          f"{type(purifier).__name__}")
    pur = purifier if isinstance(purifier, Purifier) else as_purifier(purifier)
    pur = pur.to(device).eval()
    label = _label(pur, "purifier")
    with torch.no_grad():
        check_purified(pur(probe), probe, f"purifier {label}")
    properties = probe_properties(pur, probe, seed=seed)
    properties.fill_unknown(pur)
    pur_key = stable_hash({"weights": module_digest(purifier), "properties": properties.as_dict(),
                           "outputs": _output_digest(pur, probe, seed)})
    return AuditInputs(clf, pur, properties, x, y, _label(classifier, "classifier"), label,
                       clf_key, pur_key)
