"""The ``detector-aware`` threat model's attack: fool the classifier *and* keep every detector
under its threshold (docs/purifiers/magnet.md, "How it is attacked").

Detector-oblivious attacks (gray-box, white-box through the reformer alone) say little about a
defense that rejects: Carlini and Wagner broke MagNet only with attacks that also evade its
detectors (arXiv 1711.08478, 2017). This is the orthogonal projected gradient descent of
Bryniarski, Hingun, Pachuca, Wang and Carlini ("Evading adversarial example detection defenses
with orthogonal projected gradient descent", ICLR 2022; reference code v-wangg/OrthogonalPGD,
``attack.py``), with the thresholds fixed before the attack (Tramer et al. 2020):

- the classification loss is the cross-entropy of classifier(purifier(x)) (white-box through the
  reformer, or BPDA through its surrogate when the purifier is not differentiable);
- the detection loss is the sum over detectors of score / threshold (an input is accepted where
  every term is below 1);
- while an input is not yet misclassified (with a margin of ``margin`` on the true class's
  logit), the step follows the classification gradient with its component along the detection
  gradient removed, so it does not raise detection to first order; once it is misclassified, the
  step lowers detection with its component along the classification gradient removed;
- every iterate is checked: of those the defense misclassifies, the one with the lowest largest
  normalised score is returned (the last iterate where there is none);
- with ``eot_samples`` > 1 (``detector-aware+eot``, a random purifier such as MagNet's pool of
  autoencoders) both losses and the checks are averaged over that many draws, each draw shared by
  the reformer and the detectors that read its output.

``method: selective`` takes the same steps without the projections (Bryniarski et al.'s selective
PGD); ``method: combined`` ascends CE - c * detection, a weighted sum as in Carlini and Wagner's
attacks on detectors. Steps are sign steps (L-inf) or unit L2 steps of ``alpha``, projected onto
the eps-ball and [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F

from ..checks import validated
from ..errors import ConfigError
from ..registry import check_keywords
from .threat_models import ThreatModel, bpda_purify, check_attack

METHODS = ("orthogonal", "selective", "combined")


def _project_out(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """g minus its component along h, per example (rows of (N, ...) tensors)."""
    gf, hf = g.flatten(1), h.flatten(1)
    coef = (gf * hf).sum(1) / (hf * hf).sum(1).clamp_min(1e-20)
    return (gf - coef.view(-1, 1) * hf).view_as(g)


class DetectorAwarePGD:
    """Orthogonal PGD against a :class:`~aepurify.detectors.DetectingClassifier` (see the
    module docstring).

    Args:
        defense: the defense (classifier, purifier, calibrated detectors); its thresholds are
            read, never changed.
        eps: budget on the [0, 1] scale, in ``norm``.
        norm: ``linf`` or ``l2``.
        steps: iterations (Bryniarski et al. use 100-1000; 20 by default here, as ``pgd``).
        alpha: step size (default 2.5 * eps / steps, as ``pgd``).
        random_start: start from a random point of the eps-ball (Bryniarski et al.: no).
        method: ``orthogonal``, ``selective`` or ``combined``.
        c: weight of the detection loss for ``combined``.
        margin: logit margin on the true class before an input counts as misclassified while
            choosing the step (0.05, as the reference code).
        eot_samples: draws of the purifier's randomness averaged per step (1: deterministic).

    Shapes: (x (N, C, H, W) in [0, 1], y (N,)) -> x_adv (N, C, H, W) in [0, 1], within eps.

    Raises:
        ConfigError: bad option values.
    """

    def __init__(self, defense: object, eps: float, norm: str = "linf", steps: int = 20,
                 alpha: float | None = None, random_start: bool = False,
                 method: str = "orthogonal", c: float = 1.0, margin: float = 0.05,
                 eot_samples: int = 1) -> None:
        if norm not in ("linf", "l2"):
            raise ConfigError(f"the detector-aware attack supports linf and l2, not {norm!r}")
        if method not in METHODS:
            raise ConfigError(f"unknown detector-aware method {method!r}; use one of "
                              f"{', '.join(METHODS)}")
        if steps < 1 or eot_samples < 1 or c < 0 or margin < 0:
            raise ConfigError(f"the detector-aware attack needs steps >= 1, eot_samples >= 1, "
                              f"c >= 0 and margin >= 0; got steps={steps}, "
                              f"eot_samples={eot_samples}, c={c}, margin={margin}")
        if not hasattr(defense, "detectors"):
            raise ConfigError("the detector-aware attack needs a defense with detectors")
        self.defense = defense
        self.eps, self.norm, self.steps = float(eps), norm, int(steps)
        self.alpha = alpha if alpha is not None else 2.5 * self.eps / self.steps
        self.random_start, self.method = random_start, method
        self.c, self.margin, self.eot_samples = float(c), float(margin), int(eot_samples)
        self.bpda = not bool(defense.purifier.differentiable)  # type: ignore[attr-defined]

    def _losses(self, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per example, averaged over the EOT draws: cross-entropy (N,), detection loss (N,),
        logits (N, K) and normalised scores (D, N)."""
        d = self.defense
        ce = det = logits = normed = None
        for _ in range(self.eot_samples):
            purified = bpda_purify(d.purifier, x) if self.bpda else d.purifier(x)
            out = d.classifier(purified)
            n = d.detectors.normalized(d.detectors.scores(d.views(x, purified, out)))
            parts = (F.cross_entropy(out, y, reduction="none"), n.sum(0), out, n)
            if ce is None:
                ce, det, logits, normed = parts
            else:
                ce, det, logits, normed = (a + b for a, b in zip((ce, det, logits, normed), parts))
        k = self.eot_samples
        return ce / k, det / k, logits / k, normed / k  # type: ignore[operator]

    def _direction(self, g_c: torch.Tensor, g_d: torch.Tensor, logits: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        """The ascent direction of this step (g_d already points to less detection)."""
        if self.method == "combined":
            return g_c + self.c * g_d
        if self.method == "orthogonal":
            g_c, g_d = _project_out(g_c, g_d), _project_out(g_d, g_c)
        shifted = logits.detach().clone()
        shifted[torch.arange(y.shape[0], device=y.device), y] += self.margin
        fooled = (shifted.argmax(1) != y).view(-1, *[1] * (g_c.dim() - 1))
        return torch.where(fooled, g_d, g_c)

    def _step(self, x_adv: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            x_adv = x_adv + self.alpha * g.sign()
            return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
        unit = g / g.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *[1] * (g.dim() - 1))
        delta = x_adv + self.alpha * unit - x
        size = delta.flatten(1).norm(dim=1).clamp_min(1e-20)
        delta = delta * (self.eps / size).clamp(max=1).view(-1, *[1] * (g.dim() - 1))
        return (x + delta).clamp(0, 1)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        if self.norm == "linf":
            return (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0, 1)
        noise = torch.randn_like(x)
        noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, 1, 1, 1)
        radius = self.eps * torch.rand(x.shape[0], 1, 1, 1, device=x.device)
        return (x + noise * radius).clamp(0, 1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with validated(x):  # checked once; the steps skip the per-call range check
            return self._run(x.detach(), y)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self._start(x)
        best = x_adv.clone()
        best_score = torch.full((x.shape[0],), float("inf"), device=x.device)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for step in range(self.steps + 1):
            last = step == self.steps
            with torch.enable_grad():
                x_in = x_adv.detach().requires_grad_(not last)
                ce, det, logits, normed = self._losses(x_in, y)
                if not last:
                    g_c, = torch.autograd.grad(ce.sum(), x_in, retain_graph=True)
                    g_d, = torch.autograd.grad(-det.sum(), x_in)
            with torch.no_grad():  # keep the least detected iterate the defense misclassifies
                worst = normed.detach().amax(0)
                better = (logits.detach().argmax(1) != y) & (worst < best_score)
                best[better] = x_adv[better]
                best_score[better] = worst[better]
                found |= better
            if last:
                break
            x_adv = self._step(x_adv.detach(), x, self._direction(g_c, g_d, logits, y)).detach()
        return torch.where(found.view(-1, 1, 1, 1), best, x_adv).detach()


def make_detector_aware(attack_name: str, defense: object, eps: float, norm: str,
                        eot_samples: int = 1, **params: object) -> DetectorAwarePGD:
    """The attack of the ``detector-aware`` threat model (``params``: :class:`DetectorAwarePGD`'s
    options).

    Raises:
        NotApplicableError: an attack other than ``pgd`` (orthogonal PGD), or another norm.
        ConfigError: an unknown option or a bad value.
    """
    check_attack(ThreatModel("detector-aware"), attack_name, norm)
    check_detector_aware_params(params)
    return DetectorAwarePGD(defense, eps, norm, eot_samples=eot_samples,
                            **params)  # type: ignore[arg-type]


def check_detector_aware_params(params: Mapping[str, object]) -> None:
    """Check a ``detector-aware`` attack entry's ``params`` against :class:`DetectorAwarePGD`'s
    options (names and types) at config time.

    Raises:
        ConfigError: an unknown option or a value of the wrong type; one line.
    """
    check_keywords(DetectorAwarePGD, params, ("defense", "eps", "norm", "eot_samples"),
                   "bad detector-aware attack parameters")
