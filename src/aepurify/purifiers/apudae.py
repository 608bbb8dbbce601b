"""APuDAE: adaptive purification with a denoising autoencoder (Kalaria, Hazra and Chakrabarti,
"Towards Adversarial Purification using Denoising AutoEncoders", arXiv 2208.13838, NeurIPS 2022
ML Safety Workshop).

A REDNet-style denoising autoencoder (DAE) is trained to map images with Gaussian noise to the
clean images (MSE). Its reconstruction error r(x) = sum over pixels of (x - DAE(x))^2 is low on
clean images and high on perturbed ones. Instead of reading DAE(x) directly (MagNet's reformer),
APuDAE refines the input: it optimises a perturbation delta with Adam so that x + delta looks
clean to the DAE, and the classifier reads x + delta.

Modes (defaults from the authors' ``purify.py`` / ``utils.py``):

- ``direct``: x' = DAE(x).
- ``simple``: 12 Adam steps of lr 1/255 minimising r(x + delta).
- ``adaptive`` (the paper's main method): mu and sigma of r on clean held-out images; 13 Adam
  steps of lr 2/255 minimising sum_i max(r_i - mu, 0)^2 / sigma^2, and at each step uniform noise
  of amplitude (0.7/255) * clip(((r_i - mu) / (2 sigma))^2, 0, 4) added to the image being
  refined (cumulative, per image). Clean-looking inputs (r <= mu) get no gradient and almost no
  noise; strongly perturbed ones are refined harder. No epsilon projection.
- ``adaptive-dist``: 16 Adam steps of lr 1/255 minimising sum_i r_i * sigmoid((r_i - mu) / sigma).

Where this implementation departs from the authors' code (documented in
``docs/purifiers/apudae.md``): the losses are summed per image (the authors' ``adaptive-dist``
multiplies the batch's total error by one sigmoid, so one image's purification depends on its
batch); the returned image is clipped to [0, 1] (the purifier contract; the authors return
x + delta unclipped); mu and sigma come from held-out *training* images (the authors used test
images and replaced errors above 20 by 3).

The DAE follows the authors' REDNet-30 (Mao, Shen and Yang, NeurIPS 2016): ``layers`` conv
blocks then ``layers`` transposed-conv blocks of ``features`` channels (conv, ReLU, BatchNorm),
stride 2 in the first conv and the last transposed conv, a skip connection every second layer
from the encoder to the mirrored decoder layer, and a global residual followed by ReLU.
``layers=15, features=64`` is the paper's REDNet-30 for CIFAR-10; the MNIST demo uses a shallow
one (see ``configs/demo-mnist.yaml``).

Replayable randomness (``adaptive`` mode): ``sample_randomness`` draws every step's uniform
noise ((steps, N, C, H, W) in [-1, 1)) for ``forward(x, randomness=params)``; the default
forward draws one step's noise at a time from the global generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, NotApplicableError
from ..precision import autocast
from ..utils import batches, channels_last_input
from .base import Purifier
from .rednet import REDNet
from .randomness import Randomness, sample_tensor
from .sbim import SBIM, check_sbim, check_sbim_params, make_sbim

if TYPE_CHECKING:
    from ..data import ImageDataset
    from ..training.settings import TrainSettings

MODES = ("direct", "simple", "adaptive", "adaptive-dist")
SURROGATES = ("direct", "identity")

# (Adam steps, Adam learning rate) per refinement mode, from the authors' purify.py:
# refine_BIM(.., 12, .., 1/255), refine_BIM_prob_individual(.., 13, 0.7/255, 2/255, ..),
# refine_BIM_biased_cont(.., 16, .., 1/255, ..).
MODE_DEFAULTS: dict[str, tuple[int, float]] = {
    "direct": (0, 0.0),
    "simple": (12, 1 / 255),
    "adaptive": (13, 2 / 255),
    "adaptive-dist": (16, 1 / 255),
}

# Adam's constants (PyTorch defaults, as torch.optim.Adam in the authors' code).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class APuDAE(Purifier):
    """Adaptive purification with a denoising autoencoder (purifier name ``apudae``).

    Args:
        in_channels: C of the images (1 for MNIST, 3 for CIFAR-10).
        mode: ``direct``, ``simple``, ``adaptive`` (the paper's main method) or
            ``adaptive-dist``.
        layers: encoder conv layers of the REDNet; 15 with ``features=64`` is REDNet-30, the
            paper's CIFAR-10 DAE. The default (4, 16: REDNet-8) is the shallow MNIST one: the
            refinement runs the DAE forward and backward 13 times per image.
        features: channels of the REDNet's hidden layers (64 in the paper).
        noise_std: sigma of the Gaussian training noise, pixels in [0, 1] (not published; see
            ``docs/purifiers/apudae.md`` for the sweep behind the default).
        steps: Adam steps of the refinement (None: the mode's default, 12 / 13 / 16).
        lr: Adam learning rate of the refinement, pixel scale (None: 1/255, 2/255, 1/255).
        noise: amplitude unit of the adaptive mode's uniform noise (0.7/255).
        noise_cap: upper clip of the adaptive noise factor ((r - mu) / (2 sigma))^2 (4).
        surrogate: what BPDA backpropagates through: ``identity`` (default: the refined image
            stays close to its input, and on MNIST it gives the stronger BPDA attack, see
            ``docs/purifiers/apudae.md``) or ``direct`` (the un-iterated DAE, clipped to [0, 1]).
        exact_gradients: keep the graph of the refinement loop (``create_graph``), so gradients
            of the output with respect to the input are exact and the purifier is declared
            differentiable (white-box applies). Costs about three times as much per attack step.

    Declared properties (per instance): ``stochastic`` in the ``adaptive`` mode (its noise);
    ``differentiable`` in the ``direct`` mode or with ``exact_gradients``. The class attributes
    describe the default, ``adaptive`` without exact gradients.

    Buffers (saved with the checkpoint): ``mu`` and ``sigma`` of the clean reconstruction error,
    estimated by :meth:`calibrate` (0 and 1, and ``calibrated`` 0, until then).

    Shapes:
        forward, surrogate: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Raises:
        ConfigError: unknown mode or surrogate, non-positive steps / lr / sizes.
        InputError: (forward) bad images.
    """

    differentiable: ClassVar[bool] = False
    stochastic: ClassVar[bool] = True
    trainable = True
    reconstructs = True
    default_eot_samples = 10
    paper = ("Kalaria, Hazra and Chakrabarti, Towards Adversarial Purification using Denoising "
             "AutoEncoders, arXiv 2208.13838 (NeurIPS 2022 MLSW)")

    def __init__(self, in_channels: int = 3, mode: str = "adaptive", layers: int = 4,
                 features: int = 16, noise_std: float = 0.1, steps: int | None = None,
                 lr: float | None = None, noise: float = 0.7 / 255, noise_cap: float = 4.0,
                 surrogate: str = "identity", exact_gradients: bool = False) -> None:
        super().__init__(in_channels)
        if mode not in MODES:
            raise ConfigError(f"unknown APuDAE mode {mode!r}; use one of {', '.join(MODES)}")
        if surrogate not in SURROGATES:
            raise ConfigError(f"unknown APuDAE surrogate {surrogate!r}; use one of "
                              f"{', '.join(SURROGATES)}")
        default_steps, default_lr = MODE_DEFAULTS[mode]
        self.steps = default_steps if steps is None else int(steps)
        self.lr = default_lr if lr is None else float(lr)
        if mode != "direct" and (self.steps < 1 or self.lr <= 0):
            raise ConfigError(f"APuDAE needs steps >= 1 and lr > 0; got steps={self.steps}, "
                              f"lr={self.lr}")
        if noise_std < 0 or noise < 0 or noise_cap < 0:
            raise ConfigError("APuDAE noise_std, noise and noise_cap must be >= 0")
        self.dae = REDNet(in_channels or 3, layers, features)
        self.mode = mode
        self.noise_std = noise_std
        self.noise = noise
        self.noise_cap = noise_cap
        self.surrogate_kind = surrogate
        self.exact_gradients = exact_gradients
        # Instance-level declarations shadow the class defaults (see the class docstring).
        self.stochastic = mode == "adaptive" and noise > 0  # type: ignore[misc]
        self.differentiable = mode == "direct" or exact_gradients  # type: ignore[misc]
        # the refinement's arithmetic (set_precision); not a hyper-parameter: the weights and
        # the checkpoint do not depend on it
        self.refine_precision = "fp32"
        self.register_buffer("mu", torch.tensor(0.0))
        self.register_buffer("sigma", torch.tensor(1.0))
        self.register_buffer("calibrated", torch.tensor(0.0))

    # -- the DAE and its reconstruction error -------------------------------------------------

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """DAE(x) clipped to [0, 1]: (N, C, H, W) -> (N, C, H, W), differentiable."""
        return self.dae(x).clamp(0, 1)

    reconstruction = reconstruct  # what a detector compares x with: DAE(x), not the refined x

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """r(x) = sum over pixels of (x - DAE(x))^2 per image, (N,) (the authors' ``rec_error``);
        differentiable in x."""
        return (x - self.reconstruct(x)).pow(2).flatten(1).sum(1)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
        """Estimate mu and sigma of r on clean images and store them in the buffers.

        Args:
            x: clean held-out images (N, C, H, W) in [0, 1], N >= 2.

        Returns:
            ``{"mu", "sigma", "calibration_images"}``.

        Raises:
            ConfigError: fewer than two images.
        """
        if x.shape[0] < 2:
            raise ConfigError("APuDAE calibration needs at least 2 clean images")
        was_training = self.training
        self.eval()
        r = torch.cat([self.reconstruction_error(x[sl]) for sl in batches(x.shape[0], batch_size)])
        self.train(was_training)
        self.mu.fill_(float(r.mean()))
        self.sigma.fill_(max(float(r.std()), 1e-12))
        self.calibrated.fill_(1.0)
        return {"mu": float(self.mu), "sigma": float(self.sigma),
                "calibration_images": int(x.shape[0])}

    # -- purification -------------------------------------------------------------------------

    def set_precision(self, precision: str) -> APuDAE:
        """The precision of the refinement steps: under ``bf16`` the DAE's forward and backward
        passes inside :meth:`refine` run under bf16 autocast with channels-last activations
        (2 to 4 times faster on a CPU with bf16 units); r, the loss, Adam's moments and the
        refined image stay fp32, and the classifier reads the refined image in fp32
        (``benchmarks/precision_strength.py`` compares the rows of both). Returns self.

        Raises:
            ConfigError: not ``bf16`` or ``fp32``.
        """
        if precision not in ("bf16", "fp32"):
            raise ConfigError(f"APuDAE's refinement precision must be bf16 or fp32; got "
                              f"{precision!r}")
        self.refine_precision = precision
        return self

    def _refinement_error(self, x: torch.Tensor) -> torch.Tensor:
        """r(x) (N,) as the refinement steps compute it, in :attr:`refine_precision`
        (differentiable in x; the gradient comes back in x's layout)."""
        if self.refine_precision != "bf16":
            return self.reconstruction_error(x)
        with autocast("bf16", x.device):
            return self.reconstruction_error(channels_last_input(x)).float()

    def purify(self, x: torch.Tensor, randomness: Randomness | None = None) -> torch.Tensor:
        if self.mode == "direct":
            return self.reconstruct(x)
        return self.refine(x, randomness)

    def sample_randomness(self, x_shape: tuple[int, ...], generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> Randomness:
        """The refinement noise of one call on images of ``x_shape`` (N, C, H, W): ``uniform``,
        (steps, N, C, H, W) in [-1, 1), scaled per image and step by the noise amplitude.

        Raises:
            NotApplicableError: a deterministic mode (no noise to sample).
        """
        if not self.stochastic:
            raise NotApplicableError(f"APuDAE in mode {self.mode!r} is deterministic; it has no "
                                     "randomness to sample")
        uniform = sample_tensor("uniform", (self.steps, *x_shape), generator, device)
        return Randomness(tuple(x_shape), {"uniform": uniform.mul_(2).sub_(1)})

    def _loss(self, r: torch.Tensor) -> torch.Tensor:
        """The refinement objective summed over the batch (each image's delta sees its own
        term only: the batch does not change any image's purification)."""
        if self.mode == "simple":
            return r.sum()
        if self.mode == "adaptive":
            return (F.relu(r - self.mu) ** 2).sum() / self.sigma ** 2
        return (r * torch.sigmoid((r - self.mu) / self.sigma)).sum()  # adaptive-dist

    def refine(self, x: torch.Tensor, randomness: Randomness | None = None) -> torch.Tensor:
        """Adam on delta for ``steps`` steps (see the module docstring), batched; the noise of
        step t is ``randomness["uniform"][t - 1]`` if given, else a fresh draw.

        Works under ``torch.no_grad()`` callers (gradients are enabled locally). Without
        ``exact_gradients`` the returned image's gradient with respect to x is the identity
        (delta is treated as a constant); with it, and when the caller needs gradients, the
        whole loop is differentiated (``create_graph=True``).

        On a CPU the ``adaptive`` mode skips backward passes whose gradient is exactly zero
        (:meth:`_error_and_gradient`).

        Shapes: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
        """
        exact = self.exact_gradients and torch.is_grad_enabled() and x.requires_grad
        b1, b2 = ADAM_BETAS
        sqrt = _safe_sqrt if exact else torch.sqrt
        with torch.enable_grad():
            base = x if exact else x.detach()
            delta = torch.zeros_like(x, requires_grad=exact)
            m = torch.zeros_like(x)
            v = torch.zeros_like(x)
            # Not on accelerators: picking the flagged rows reads a mask back to the host.
            flagged = (torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
                       if x.device.type == "cpu" and not exact and self.mode == "adaptive"
                       else None)
            for t in range(1, self.steps + 1):
                if exact:
                    r = self._refinement_error(base + delta)
                    (g,) = torch.autograd.grad(self._loss(r), delta, create_graph=True)
                else:
                    r, g = self._error_and_gradient(base + delta, flagged)
                if self.stochastic:
                    # The authors add the noise after measuring r, so it acts from the next step.
                    factor = ((r - self.mu) / (2 * self.sigma)) ** 2
                    amp = self.noise * factor.clamp(0, self.noise_cap)
                    amp = amp if exact else amp.detach()
                    uniform = randomness["uniform"][t - 1] if randomness is not None \
                        else torch.rand_like(x).mul_(2).sub_(1)
                    base = (base + amp.view(-1, 1, 1, 1) * uniform).clamp(-1, 2)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                step = self.lr * (m / (1 - b1 ** t)) / (sqrt(v / (1 - b2 ** t)) + ADAM_EPS)
                delta = delta - step
            out = base + delta
        if exact:
            return out.clamp(0, 1)
        out = out.detach().clamp(0, 1)
        return x + (out - x).detach()  # identity gradient, exact value

    def _error_and_gradient(self, x: torch.Tensor, flagged: torch.Tensor | None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """r(x) (N,) and the gradient of the refinement loss with respect to x (N, C, H, W),
        both detached.

        With ``flagged`` ((N,) bool, updated in place; the ``adaptive`` mode on a CPU) only
        flagged images get a backward pass. max(r - mu, 0)^2 has an exactly zero gradient where
        r <= mu, so an image never above mu has zero Adam moments and delta = 0 and needs r
        alone; it is flagged from its first step above mu on (its moments stay non-zero).
        Clean-looking images (most of a clean batch, S-BIM's outputs) then cost one forward
        pass per step instead of a forward and a backward pass: same result, less work.
        """
        if flagged is None:
            x = x.detach().requires_grad_(True)
            r = self._refinement_error(x)
            (g,) = torch.autograd.grad(self._loss(r), x)
            return r.detach(), g
        x = x.detach()
        r = x.new_empty(x.shape[0])
        g = torch.zeros_like(x)
        idle = ~flagged
        if bool(idle.any()):
            with torch.no_grad():
                r[idle] = self._refinement_error(x[idle])
            flagged |= idle & (r > self.mu)
        if bool(flagged.any()):
            rows = flagged.nonzero().squeeze(1)
            part = x[rows].requires_grad_(True)
            r_part = self._refinement_error(part)
            (g_part,) = torch.autograd.grad(self._loss(r_part), part)
            r[rows] = r_part.detach()
            g[rows] = g_part
        return r, g

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """What BPDA backpropagates through: the un-iterated DAE (``direct``) or the identity."""
        if self.surrogate_kind == "identity":
            return x
        return self.reconstruct(x)

    def surrogate_name(self) -> str:
        return "identity" if self.surrogate_kind == "identity" else "apudae-direct"

    # -- the paper's adaptive attack -----------------------------------------------------------

    def check_adaptive_attack(self, attack_name: str, norm: str) -> None:
        """Raise NotApplicableError unless S-BIM covers ``attack_name`` and ``norm``
        (:func:`aepurify.purifiers.sbim.check_sbim`)."""
        check_sbim(attack_name, norm)

    @staticmethod
    def check_adaptive_params(params: dict[str, Any]) -> None:
        """Check an adaptive attack entry's ``params`` against S-BIM's options at config time
        (:func:`aepurify.purifiers.sbim.check_sbim_params`; raises ConfigError)."""
        check_sbim_params(params)

    def adaptive_attack(self, attack_name: str, defended: nn.Module, eps: float, norm: str,
                        **params: Any) -> SBIM:
        """The attack of the ``adaptive`` threat model: S-BIM, the authors' adaptive attack
        (:func:`aepurify.purifiers.sbim.make_sbim`: ``bim`` as in the paper, ``pgd`` with a
        random start; ``params`` are :class:`SBIM`'s options).

        Raises:
            NotApplicableError: another attack or a norm other than L-inf (the grid skips that
                combination with the reason).
            ConfigError: an unknown S-BIM option.
        """
        return make_sbim(attack_name, defended, self, eps, norm, **params)

    # -- training -----------------------------------------------------------------------------

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        """MSE between DAE(x + N(0, noise_std^2)) and x; noisy inputs clipped to [0, 1]."""
        noisy = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)
        return F.mse_loss(self.dae(noisy), x)

    def fit(self, train: ImageDataset, settings: TrainSettings,
            classifier: nn.Module | None = None, device: torch.device | str = "cpu"
            ) -> dict[str, Any]:
        """Train the DAE on noisy images, then calibrate mu and sigma on held-out clean images
        (:func:`aepurify.training.apudae.fit_apudae`, which has the details).

        Raises:
            ConfigError: unknown ``extra`` option, or too few training images to hold out.
        """
        from ..training.apudae import fit_apudae

        return fit_apudae(self, train, settings, device)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v), v >= 0, with gradient 0 (not inf or NaN) at v = 0: an image's Adam moments are
    exactly zero while r <= mu, and the exact-gradient refinement differentiates them."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, 1.0)), 0.0)
