"""Training stage of the feature-loss denoising autoencoders (``feature-dae``, ``hgd``).

Loss for one batch of clean images x and their perturbed versions x~ (see
:mod:`aepurify.training.pairs`)::

    pixel_weight * MSE(AE(x~), x) + sum_l w_l * d(phi_l(AE(x~)), phi_l(x))

phi_l are the outputs of chosen layers of a frozen feature extractor (a separate network trained
on the same data set, or the defended classifier), d is MSE (Sivamani's perceptual loss) or L1
(HGD). The options live in ``train.extra`` of the purifier's config entry and are validated by
:class:`FeatureLossOptions`; what a config leaves out comes from the purifier class's
``default_training`` (nested mappings are merged, lists are replaced).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.nn import functional as F

from ..data import ImageDataset
from ..errors import ConfigError
from ..precision import with_precision
from .loops import frozen
from .pairs import PairOptions, PairPlan
from .settings import TrainSettings

DEFENDED = "defended"
# Layer aliases: the classifier's penultimate features (output of ``body``) and its logits.
ALIASES = {"penultimate": "body", "logits": ""}


class NetworkSpec(BaseModel):
    """An auxiliary network trained on the same data set (once, then cached by config).

    Attributes:
        arch: classifier registry name (``lenet``, ``small-cnn``, ``resnet18``, ``vgg11``).
        params: architecture options.
        train: its training settings.
    """

    model_config = ConfigDict(extra="forbid")

    arch: str
    params: dict[str, Any] = Field(default_factory=dict)
    train: TrainSettings = Field(default_factory=TrainSettings)


class FeatureLossOptions(BaseModel):
    """Training options of ``feature-dae`` and ``hgd`` (``train.extra``).

    Attributes:
        pixel_weight: weight of the pixel MSE term.
        feature_extractor: ``defended`` (the defended classifier; ``hgd`` only) or a separate
            network (:class:`NetworkSpec`).
        feature_layers: module names of the extractor (``body.3``; ``penultimate`` and
            ``logits`` are aliases), or None for three depths (:func:`default_layers`).
        feature_weights: one weight per layer (None: all 1).
        distance: ``mse`` or ``l1`` between feature maps.
        pair_classifier: the classifier adversarial pairs are crafted on: ``extractor`` (the
            feature extractor), ``defended`` (``hgd`` only) or a separate network.
        pairs: the pair sources and whether adversarial pairs are cached or made on the fly.
    """

    model_config = ConfigDict(extra="forbid")

    pixel_weight: float = Field(1.0, ge=0)
    feature_extractor: Literal["defended"] | NetworkSpec
    feature_layers: list[str] | None = None
    feature_weights: list[float] | None = None
    distance: Literal["mse", "l1"] = "mse"
    pair_classifier: Literal["extractor", "defended"] | NetworkSpec = "extractor"
    pairs: PairOptions

    @model_validator(mode="after")
    def _check(self) -> FeatureLossOptions:
        if self.feature_weights is not None:
            if self.feature_layers is None or len(self.feature_weights) != len(self.feature_layers):
                raise ValueError("feature_weights needs feature_layers of the same length")
            if any(w < 0 for w in self.feature_weights):
                raise ValueError("feature_weights must be >= 0")
        if self.feature_layers == []:
            raise ValueError("feature_layers must name at least one layer (or be null)")
        if self.pixel_weight == 0 and self.feature_weights is not None \
                and not any(self.feature_weights):
            raise ValueError("every loss weight is 0; nothing would be trained")
        return self

    def uses_defended(self) -> bool:
        """Whether training reads the defended classifier."""
        return DEFENDED in (self.feature_extractor, self.pair_classifier)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: nested mappings merged, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_options(defaults: dict[str, Any], extra: dict[str, Any]) -> FeatureLossOptions:
    """Validate ``extra`` merged over ``defaults``.

    Raises:
        ConfigError: one line naming the first bad option (``train.extra.<path>: <problem>``).
    """
    try:
        return FeatureLossOptions.model_validate(merge(defaults, extra))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"train.extra.{loc}: {err['msg']}") from None


def default_layers(net: nn.Module) -> list[str]:
    """Three depths of a classifier: the activations that end its first and last pooling
    stages, and its penultimate features (a stand-in for the author's three VGG-16 depths).

    For a classifier whose ``body`` is an ``nn.Sequential``, the stage ends are the modules
    right before a pooling layer; with more than two, the first and the last are kept.
    """
    body = getattr(net, "body", None)
    ends: list[str] = []
    if isinstance(body, nn.Sequential):
        children = list(body.named_children())
        pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
        ends = [f"body.{name}" for (name, _), (_, nxt) in zip(children, children[1:])
                if isinstance(nxt, pools)]
        ends = ends[:1] + ends[-1:] if len(ends) > 2 else ends
    return list(dict.fromkeys(ends)) + ["penultimate"]


class FeatureTaps:
    """Reads the outputs of named layers of a network in one forward pass.

    Args:
        net: the (frozen) feature extractor; images (N, C, H, W) in [0, 1] in.
        layers: module names (from ``net.named_modules()``) or the aliases ``penultimate``
            and ``logits``.

    Raises:
        ConfigError: a name that is not a module of ``net``.
    """

    def __init__(self, net: nn.Module, layers: list[str]) -> None:
        modules = dict(net.named_modules())
        self.net = net
        self.layers = list(layers)
        self.modules: list[nn.Module] = []
        for name in self.layers:
            target = ALIASES.get(name, name)
            if target not in modules:
                known = ["penultimate", "logits"] + [n for n in modules if n]
                raise ConfigError(f"feature layer {name!r} is not a module of "
                                  f"{type(net).__name__}; choose from {', '.join(known[:20])}")
            self.modules.append(modules[target])

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, one per layer, in the order of ``layers``."""
        found: dict[int, torch.Tensor] = {}
        handles = [m.register_forward_hook(lambda _m, _i, out, k=k: found.__setitem__(k, out))
                   for k, m in enumerate(self.modules)]
        try:
            self.net(x)
        finally:
            for h in handles:
                h.remove()
        return [found[k] for k in range(len(self.modules))]


def _network(spec: str | NetworkSpec, role: str, train: ImageDataset,
             classifier: nn.Module | None, device: torch.device | str
             ) -> tuple[nn.Module, dict[str, Any]]:
    """The defended classifier (``spec == "defended"``), or a separate network trained on
    ``train``'s data set (once; cached by its config), and a record of which one it is."""
    if spec == DEFENDED:
        assert classifier is not None
        return classifier, {"role": role, "arch": DEFENDED}
    from .model_cache import get_classifier

    assert isinstance(spec, NetworkSpec)
    trained = get_classifier(spec.arch, train.name, params=spec.params, settings=spec.train,
                             train_data=lambda: train, device=device)
    return trained.module, {"role": role, "arch": spec.arch, "key": trained.key,
                            "origin": trained.origin, "path": str(trained.path)}


def fit_feature_loss_dae(purifier: Any, train: ImageDataset, settings: TrainSettings,
                         classifier: nn.Module | None = None,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train a :class:`~aepurify.purifiers.feature_dae.FeatureDAE` (or ``HGD``) in place.

    Steps: get the feature extractor and the pair classifier (trained once and cached, or the
    defended classifier), assign each training image a pair source, craft the cached
    adversarial pairs if asked, then minimise the pixel + feature loss with the shared
    minibatch loop.

    Returns:
        Metrics: the loop's (final loss, steps, seconds, images), ``pair_seconds`` (crafting
        the cached pairs), ``pairs`` (images per source), ``layers``, ``networks``.

    Raises:
        ConfigError: bad options; the defended classifier named by a purifier that may not use
            it, or needed but not given.
    """
    from .loops import run_minibatches

    opts = parse_options(purifier.default_training, settings.extra)
    name = type(purifier).__name__
    if opts.uses_defended():
        if not purifier.may_use_defended:
            raise ConfigError(f"{name} is classifier-agnostic (its cache key does not include "
                              "the defended classifier); use purifier 'hgd' to train with it")
        if classifier is None:
            raise ConfigError(f"{name} trains against the defended classifier; none was given")
    extractor, info = _network(opts.feature_extractor, "feature extractor", train, classifier,
                               device)
    networks = [info]
    pair_net = extractor
    if opts.pair_classifier != "extractor":
        pair_net, info = _network(opts.pair_classifier, "pair classifier", train, classifier,
                                  device)
        networks.append(info)
    extractor.to(device)
    pair_net.to(device)
    layers = opts.feature_layers or default_layers(extractor)
    weights = opts.feature_weights or [1.0] * len(layers)
    taps = FeatureTaps(extractor, layers)
    distance = F.mse_loss if opts.distance == "mse" else F.l1_loss

    data = train.take(settings.max_images)
    channels = data.image_shape[0]
    plan = PairPlan.assign(opts.pairs.sources, len(data), settings.seed)
    purifier.to(device)
    with frozen(extractor, pair_net):
        start = time.perf_counter()
        cached = opts.pairs.mode == "cached" and opts.pairs.adversarial
        images = data.images
        if cached:
            # Clean and adversarial halves side by side as channels, so that augmentation
            # (random crop and flip) moves both halves of a pair alike.
            # crafted with attack gradients in the training's precision (bf16 where fast)
            crafter = with_precision(pair_net, settings.resolved(device).precision)
            images = torch.cat([data.images, plan.cache(data, crafter, device)], dim=1)
        pair_seconds = round(time.perf_counter() - start, 2)
        # Labels carry each image's position, which selects its source and true label.
        indexed = ImageDataset(data.name, data.split, images, torch.arange(len(data)),
                               data.classes, data.source)
        labels = data.labels.to(device)
        plan_dev = plan.to(device)

        def loss_fn(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            clean = x[:, :channels]
            perturbed = plan_dev.perturb(clean, labels[index], index, pair_net,
                                         x[:, channels:] if cached else None)
            out = purifier.purify(perturbed)
            loss = opts.pixel_weight * F.mse_loss(out, clean) if opts.pixel_weight else 0.0
            if any(weights):  # all zero: a pixel-only ablation, no extractor passes needed
                with torch.no_grad():
                    targets = taps(clean)
                for w, got, want in zip(weights, taps(out), targets):
                    if w:
                        loss = loss + w * distance(got, want)
            return loss  # type: ignore[return-value]

        metrics = run_minibatches(purifier.parameters(), loss_fn, indexed, settings,
                                  desc=f"train {name}", device=device, modules=[purifier])
    metrics.update({"pair_seconds": pair_seconds, "pairs": plan.counts(),
                    "pair_mode": opts.pairs.mode, "layers": layers, "networks": networks})
    return metrics
