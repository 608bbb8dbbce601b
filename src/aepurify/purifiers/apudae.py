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
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import validated
from ..errors import ConfigError, NotApplicableError
from ..utils import batches
from .base import Purifier, batchnorm_affine

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

TRAIN_EXTRA = {"calibration_images"}


class REDNet(nn.Module):
    """REDNet-style denoising autoencoder (Mao et al. 2016) as used by APuDAE.

    Args:
        in_channels: C of the images.
        layers: conv blocks in the encoder (and transposed-conv blocks in the decoder); 15 is
            REDNet-30.
        features: channels of every hidden layer (64 in the paper).

    Shapes:
        (N, C, H, W) -> (N, C, H, W), not clipped (>= 0 because of the final ReLU).
    """

    def __init__(self, in_channels: int = 3, layers: int = 15, features: int = 64) -> None:
        super().__init__()
        if layers < 1 or features < 1:
            raise ConfigError(f"REDNet needs layers >= 1 and features >= 1; got layers={layers}, "
                              f"features={features}")
        self.layers = layers

        def block(conv: nn.Module) -> nn.Sequential:
            # The authors' order: convolution, ReLU, then BatchNorm.
            return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(features))

        self.encoder = nn.ModuleList(
            [block(nn.Conv2d(in_channels, features, 3, stride=2, padding=1))]
            + [block(nn.Conv2d(features, features, 3, padding=1)) for _ in range(layers - 1)])
        self.decoder = nn.ModuleList(
            [block(nn.ConvTranspose2d(features, features, 3, padding=1))
             for _ in range(layers - 1)])
        self.last = nn.ConvTranspose2d(features, in_channels, 3, stride=2, padding=1)
        # Encoder outputs kept for the symmetric skips: after every second conv, at most
        # ceil(layers / 2) - 1 of them (REDNet's rule).
        self.n_skips = math.ceil(layers / 2) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        skips: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.encoder):
            h = self._block(layer, h)
            if (i + 1) % 2 == 0 and len(skips) < self.n_skips:
                skips.append(h)
        used = 0
        for i, layer in enumerate(self.decoder):
            h = self._block(layer, h)
            if (i + 1 + self.layers) % 2 == 0 and used < len(skips):
                used += 1
                h = F.relu(h + skips[-used])
        # output_size makes the stride-2 transposed conv undo the stride-2 conv for odd sizes too.
        h = self.last(h, output_size=residual.shape[-2:])
        return F.relu(h + residual)

    def _block(self, block: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        """One conv, ReLU, BatchNorm block. In eval mode it takes a faster, equivalent path: the
        purifier runs the DAE forward and backward 13 times per image, and on CPU PyTorch's
        stride-1 transposed convolution and eval-mode BatchNorm backward are several times
        slower than a plain convolution and a per-channel affine map."""
        if self.training:
            return block(h)
        conv, _, bn = block
        if isinstance(conv, nn.ConvTranspose2d) and conv.stride == (1, 1):
            # A stride-1 transposed conv is a conv with the kernel flipped and in/out swapped.
            weight = conv.weight.flip(2, 3).transpose(0, 1)
            h = F.conv2d(h, weight, conv.bias, padding=conv.padding)
        else:
            h = conv(h)
        h = F.relu(h)
        scale, shift = batchnorm_affine(bn)
        return h * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


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
        self.register_buffer("mu", torch.tensor(0.0))
        self.register_buffer("sigma", torch.tensor(1.0))
        self.register_buffer("calibrated", torch.tensor(0.0))

    # -- the DAE and its reconstruction error -------------------------------------------------

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """DAE(x) clipped to [0, 1]: (N, C, H, W) -> (N, C, H, W), differentiable."""
        return self.dae(x).clamp(0, 1)

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

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "direct":
            return self.reconstruct(x)
        return self.refine(x)

    def _loss(self, r: torch.Tensor) -> torch.Tensor:
        """The refinement objective summed over the batch (each image's delta only sees its
        own term, so the batch does not change any image's purification)."""
        if self.mode == "simple":
            return r.sum()
        if self.mode == "adaptive":
            return (F.relu(r - self.mu) ** 2).sum() / self.sigma ** 2
        return (r * torch.sigmoid((r - self.mu) / self.sigma)).sum()  # adaptive-dist

    def refine(self, x: torch.Tensor) -> torch.Tensor:
        """Adam on delta for ``steps`` steps (see the module docstring), batched.

        Works under ``torch.no_grad()`` callers (gradients are enabled locally). Without
        ``exact_gradients`` the returned image's gradient with respect to x is the identity
        (delta is treated as a constant); with it, and when the caller needs gradients, the
        whole loop is differentiated (``create_graph=True``).

        Shapes: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
        """
        exact = self.exact_gradients and torch.is_grad_enabled() and x.requires_grad
        b1, b2 = ADAM_BETAS
        sqrt = _safe_sqrt if exact else torch.sqrt
        with torch.enable_grad():
            base = x if exact else x.detach()
            delta = torch.zeros_like(x, requires_grad=True)
            m = torch.zeros_like(x)
            v = torch.zeros_like(x)
            for t in range(1, self.steps + 1):
                r = self.reconstruction_error(base + delta)
                loss = self._loss(r)
                if self.stochastic:
                    # The authors add the noise after measuring r, so it acts from the next step.
                    factor = ((r - self.mu) / (2 * self.sigma)) ** 2
                    amp = self.noise * factor.clamp(0, self.noise_cap)
                    amp = amp if exact else amp.detach()
                    uniform = torch.rand_like(x).mul_(2).sub_(1)
                    base = (base + amp.view(-1, 1, 1, 1) * uniform).clamp(-1, 2)
                (g,) = torch.autograd.grad(loss, delta, create_graph=exact)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                step = self.lr * (m / (1 - b1 ** t)) / (sqrt(v / (1 - b2 ** t)) + ADAM_EPS)
                delta = delta - step
                if not exact:
                    delta = delta.detach().requires_grad_(True)
            out = base + delta
        if exact:
            return out.clamp(0, 1)
        out = out.detach().clamp(0, 1)
        return x + (out - x).detach()  # identity gradient, exact value

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """What BPDA backpropagates through: the un-iterated DAE (``direct``) or the identity."""
        if self.surrogate_kind == "identity":
            return x
        return self.reconstruct(x)

    def surrogate_name(self) -> str:
        return "identity" if self.surrogate_kind == "identity" else "apudae-direct"

    # -- the paper's adaptive attack -----------------------------------------------------------

    def check_adaptive_attack(self, attack_name: str, norm: str) -> None:
        """Raise NotApplicableError unless S-BIM covers ``attack_name`` (bim, pgd) and ``norm``
        (L-inf only)."""
        if attack_name not in ("bim", "pgd"):
            raise NotApplicableError(f"APuDAE's adaptive attack is S-BIM: use attack 'bim' (or "
                                     f"'pgd' for a random start) under the adaptive threat model, "
                                     f"not {attack_name!r}")
        if norm != "linf":
            raise NotApplicableError(f"S-BIM is an L-inf attack; got norm {norm!r}")

    def adaptive_attack(self, attack_name: str, defended: nn.Module, eps: float, norm: str,
                        **params: Any) -> SBIM:
        """The attack of the ``adaptive`` threat model: S-BIM (the authors' adaptive attack).

        ``bim`` gives S-BIM as in the paper (no random start); ``pgd`` gives the same with a
        uniform random start in the eps-ball. ``params`` are :class:`SBIM`'s options.

        Raises:
            NotApplicableError: another attack or a norm other than L-inf (the grid skips that
                combination with the reason).
            ConfigError: an unknown S-BIM option.
        """
        self.check_adaptive_attack(attack_name, norm)
        params = dict(params)
        params.setdefault("random_start", attack_name == "pgd")
        try:
            return SBIM(defended, self, eps, **params)
        except TypeError as exc:
            raise ConfigError(f"bad S-BIM option: {exc}") from None

    # -- training -----------------------------------------------------------------------------

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        """MSE between DAE(x + N(0, noise_std^2)) and x; noisy inputs clipped to [0, 1]."""
        noisy = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)
        return F.mse_loss(self.dae(noisy), x)

    def fit(self, train: ImageDataset, settings: TrainSettings,
            classifier: nn.Module | None = None, device: torch.device | str = "cpu"
            ) -> dict[str, Any]:
        """Train the DAE on noisy images, then calibrate mu and sigma on held-out clean images.

        The last ``settings.extra["calibration_images"]`` (default 2,000) images of the training
        split are held out: the DAE never sees them, and the test split is not touched.
        ``settings.max_images`` limits the images the DAE trains on (the first ones).

        Returns:
            training metrics plus ``mu``, ``sigma``, ``calibration_images`` and the held-out
            denoising MSE at ``noise_std``.

        Raises:
            ConfigError: unknown ``extra`` option, or too few training images to hold out.
        """
        from ..training.loops import run_minibatches

        unknown = set(settings.extra) - TRAIN_EXTRA
        if unknown:
            raise ConfigError(f"unknown APuDAE training option(s) {sorted(unknown)}; "
                              f"use {sorted(TRAIN_EXTRA)}")
        n_cal = int(settings.extra.get("calibration_images", 2000))
        if n_cal < 2 or n_cal >= len(train):
            raise ConfigError(f"APuDAE calibration_images must be in [2, {len(train) - 1}]; "
                              f"got {n_cal}")
        fit_part = train.take(len(train) - n_cal)
        held_out = train.take(None, start=len(train) - n_cal)
        self.to(device)
        metrics = run_minibatches(self.dae.parameters(), self.training_loss, fit_part,
                                  settings, desc="train APuDAE DAE", device=device,
                                  modules=[self])
        self.eval()
        x_cal, _ = held_out.tensors(slice(None), device)
        metrics.update(self.calibrate(x_cal))
        with torch.no_grad():
            gen = torch.Generator(device="cpu").manual_seed(settings.seed)
            noise = torch.randn(x_cal.shape, generator=gen).to(x_cal.device)
            noisy = (x_cal + self.noise_std * noise).clamp(0, 1)
            metrics["held_out_denoising_mse"] = float(F.mse_loss(self.reconstruct(noisy), x_cal))
        return metrics


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

    def __init__(self, defended: nn.Module, purifier: APuDAE, eps: float, steps: int = 7,
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


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v) for v >= 0 whose gradient is 0 (not inf, not NaN) where v = 0; needed when the
    refinement is differentiated and an image's gradient is exactly zero (r <= mu)."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))),
                       torch.zeros_like(v))
