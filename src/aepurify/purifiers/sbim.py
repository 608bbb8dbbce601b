"""S-BIM, the adaptive attack of APuDAE's authors (Kalaria, Hazra and Chakrabarti,
arXiv 2208.13838): fool the classifier while keeping the denoising autoencoder's reconstruction
error low. Reached through :meth:`aepurify.purifiers.apudae.APuDAE.adaptive_attack`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

from ..checks import validated
from ..errors import ConfigError, NotApplicableError
from ..registry import check_keywords


class Reconstructs(Protocol):
    """What S-BIM needs of the purifier: APuDAE's ``reconstruct`` (the DAE's output, (N, C, H, W)
    in [0, 1]). A protocol rather than an import of APuDAE, which imports this module."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...


class SBIM:
    """S-BIM, APuDAE's adaptive attack (the authors' ``S_BIM``): sign-gradient steps that fool
    the classifier while keeping the DAE's reconstruction error low, so the adaptive refinement
    sees a clean-looking input and leaves it alone.

    Each step ascends ``-w * MSE(x, DAE(x)) - (1 - w) * max(margin, -kappa)`` per image, where
    MSE is the mean squared reconstruction error over pixels and, for a targeted attack,
    margin = max_{j != t} z_j - z_t (z the logits, t the target class; the authors draw a random
    wrong class); untargeted, margin = z_y - max_{j != y} z_j. The step is ``alpha * sign(grad)``,
    projected onto the L-inf ball of radius eps and [0, 1].

    Differences from the authors' code, which are fixes: their loop never zeroes the gradient
    (so each step uses the sum of all gradients so far) and clips to eps only once at the end;
    this one uses each step's own gradient and projects after every step, as BIM does.

    Args:
        defended: the defended classifier (classifier + APuDAE purifier).
        purifier: the APuDAE purifier whose DAE measures the reconstruction error.
        eps: L-inf budget on the [0, 1] scale.
        steps: sign steps (7, the paper's BIM).
        alpha: step size (None: eps / 4, the paper's 2/255 at eps 8/255).
        recon_weight: w, the weight of the reconstruction term (0.5 in the paper).
        kappa: the margin is clipped at -kappa (4 in the authors' code).
        targeted: ``random`` (the paper: a random wrong class), ``least-likely``, or None.
        margin_on: whose logits: ``classifier`` (the bare classifier, as in the paper) or
            ``bpda`` (the defended classifier: forward through the real refinement, backward
            through the purifier's BPDA surrogate).
        random_start: start from a uniform random point of the eps-ball.

    Shapes: (x (N, C, H, W) in [0, 1], y (N,)) -> x_adv (N, C, H, W) in [0, 1].

    Raises:
        ConfigError: bad option values.
    """

    def __init__(self, defended: nn.Module, purifier: Reconstructs, eps: float, steps: int = 7,
                 alpha: float | None = None, recon_weight: float = 0.5, kappa: float = 4.0,
                 targeted: str | None = "random", margin_on: str = "classifier",
                 random_start: bool = False) -> None:
        from ..attacks.threat_models import BPDAClassifier

        if steps < 1 or not 0 <= recon_weight <= 1 or kappa < 0:
            raise ConfigError(f"S-BIM needs steps >= 1, 0 <= recon_weight <= 1 and kappa >= 0; "
                              f"got steps={steps}, recon_weight={recon_weight}, kappa={kappa}")
        if targeted not in (None, "random", "least-likely"):
            raise ConfigError(f"S-BIM targeted must be random, least-likely or null; got "
                              f"{targeted!r}")
        if margin_on not in ("classifier", "bpda"):
            raise ConfigError(f"S-BIM margin_on must be classifier or bpda; got {margin_on!r}")
        self.model = defended.classifier if margin_on == "classifier" else BPDAClassifier(defended)
        self.purifier = purifier
        self.eps, self.steps = eps, steps
        self.alpha = alpha if alpha is not None else eps / 4
        self.recon_weight, self.kappa = recon_weight, kappa
        self.targeted, self.random_start = targeted, random_start

    def _targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        if self.targeted == "least-likely":
            return logits.argmin(1)
        k = logits.shape[1]  # random wrong class, uniform over the other k - 1
        shift = torch.randint(1, k, y.shape, device=y.device)
        return (y + shift) % k

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with validated(x):  # checked once; the steps skip the per-call range check
            return self._run(x.detach(), y)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = self._targets(x, y) if self.targeted else y
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x_adv + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0, 1)
        w = self.recon_weight
        for _ in range(self.steps):
            with torch.enable_grad():
                x_adv.requires_grad_(True)
                logits = self.model(x_adv)
                mse = (x_adv - self.purifier.reconstruct(x_adv)).pow(2).flatten(1).mean(1)
                z_t = logits.gather(1, target.view(-1, 1)).squeeze(1)
                others = logits.scatter(1, target.view(-1, 1), float("-inf")).amax(1)
                margin = others - z_t if self.targeted else z_t - others
                objective = -w * mse - (1 - w) * margin.clamp(min=-self.kappa)
                (grad,) = torch.autograd.grad(objective.sum(), x_adv)
            x_adv = x_adv.detach() + self.alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
        return x_adv.detach()


def check_sbim(attack_name: str, norm: str) -> None:
    """Raise NotApplicableError unless S-BIM covers ``attack_name`` (``bim``, or ``pgd`` for a
    random start) and ``norm`` (L-inf only)."""
    if attack_name not in ("bim", "pgd"):
        raise NotApplicableError(f"APuDAE's adaptive attack is S-BIM: use attack 'bim' (or "
                                 f"'pgd' for a random start) under the adaptive threat model, "
                                 f"not {attack_name!r}")
    if norm != "linf":
        raise NotApplicableError(f"S-BIM is an L-inf attack; got norm {norm!r}")


def make_sbim(attack_name: str, defended: nn.Module, purifier: Reconstructs, eps: float,
              norm: str, **params: object) -> SBIM:
    """S-BIM for the ``adaptive`` threat model: ``bim`` as in the paper (no random start),
    ``pgd`` the same from a uniform random start in the eps-ball; ``params`` are
    :class:`SBIM`'s options.

    Raises:
        NotApplicableError: another attack, or a norm other than L-inf.
        ConfigError: an unknown S-BIM option.
    """
    check_sbim(attack_name, norm)
    params = dict(params)
    params.setdefault("random_start", attack_name == "pgd")
    try:
        return SBIM(defended, purifier, eps, **params)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"bad S-BIM option: {exc}") from None


def check_sbim_params(params: Mapping[str, object]) -> None:
    """Check an ``adaptive`` attack entry's ``params`` against :class:`SBIM`'s options (names
    and types), at config time, before any model trains.

    Raises:
        ConfigError: an unknown option or a value of the wrong type; one line.
    """
    check_keywords(SBIM, params, ("defended", "purifier", "eps"), "bad S-BIM parameters")
