"""Cross-check of aepurify's CERTIFY against an independent implementation: ART's
``PyTorchRandomizedSmoothing.certify`` (Cohen et al.'s algorithm; its Clopper-Pearson bound from
statsmodels). ART adds its noise after any preprocessing defence, so the denoiser sits inside the
model ART smooths, behind the same clip to [0, 1] that aepurify applies: both certify the same
base classifier f o D o clip, with independent noise, so they must agree up to Monte-Carlo
error. ART's ``predict`` is not used (it fails on SciPy >= 1.12, ART issue #2517)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import aepurify as ap
from aepurify.certification import SmoothedClassifier

art_smoothing = pytest.importorskip("art.estimators.certification.randomized_smoothing")
pytest.importorskip("statsmodels")

SIGMA, N, N0, ALPHA = 0.25, 500, 50, 0.001


class ClippedDefended(nn.Module):
    """f(D(clip(x, 0, 1))): the base classifier aepurify's smoothed classifier certifies."""

    def __init__(self, classifier: nn.Module, purifier: nn.Module) -> None:
        super().__init__()
        self.classifier, self.purifier = classifier, purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x.clamp(0, 1)))


def test_certified_accuracy_agrees_with_art(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:24], mnist_batch[1][:24]
    denoiser = ap.as_purifier(lambda t: nn.functional.avg_pool2d(t, 3, 1, 1),
                              differentiable=True, stochastic=False, name="blur")
    ours = SmoothedClassifier(tiny_lenet, denoiser, SIGMA)
    mine = [ours.certify(x[i], N0, N, ALPHA, seed=0, index=i) for i in range(len(x))]
    pred = np.array([c.prediction for c in mine])
    radius = np.array([c.radius for c in mine])

    np.random.seed(0)  # ART draws its noise from NumPy's global generator
    art = art_smoothing.PyTorchRandomizedSmoothing(
        ClippedDefended(tiny_lenet, denoiser).eval(), loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu",
        sample_size=N0, scale=SIGMA, alpha=ALPHA)
    art_pred, art_radius = art.certify(x.numpy(), n=N, batch_size=250)

    labels = y.numpy()
    # the same top class wherever both certify (they can differ only on near ties)
    both = (pred >= 0) & (art_pred >= 0)
    assert both.sum() >= 0.8 * len(x)
    assert (pred[both] == art_pred[both]).mean() >= 0.95
    # radii within Monte-Carlo error: at n = 500 the bound moves by about sigma * 0.25 between
    # two independent runs of an image with pA near 0.9
    assert np.median(np.abs(radius[both] - art_radius[both])) <= 0.06
    for r in (0.0, 0.25, 0.5):
        a = ((pred == labels) & (radius >= r)).mean()
        b = ((art_pred == labels) & (art_radius >= r)).mean()
        assert abs(a - b) <= 3 / len(x), (r, a, b)


def test_both_give_the_closed_form_radius_when_every_draw_agrees(mnist_batch):
    """A classifier that always answers class 2: nA = n in both implementations, so both give
    sigma * Phi^-1(alpha^(1/n)) exactly, whatever the noise."""
    from statistics import NormalDist

    class Always2(nn.Module):
        num_classes = 10

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(t.shape[0], 10)
            out[:, 2] = 1.0
            return out + 0 * t.flatten(1)[:, :1]

    x = mnist_batch[0][:3]
    expected = SIGMA * NormalDist().inv_cdf(ALPHA ** (1 / N))
    ours = [SmoothedClassifier(Always2(), None, SIGMA).certify(x[i], N0, N, ALPHA, 0, i)
            for i in range(3)]
    art = art_smoothing.PyTorchRandomizedSmoothing(
        Always2(), loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
        device_type="cpu", sample_size=N0, scale=SIGMA, alpha=ALPHA)
    art_pred, art_radius = art.certify(x.numpy(), n=N, batch_size=250)
    assert [c.prediction for c in ours] == list(art_pred) == [2, 2, 2]
    assert np.allclose([c.radius for c in ours], expected, rtol=1e-9)
    assert np.allclose(art_radius, expected, rtol=1e-6)
