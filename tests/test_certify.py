"""Randomized and denoised smoothing (issue 25): Cohen et al.'s CERTIFY and PREDICT against cases
computed by hand, replayable noise, the certified-beside-attacked bracket and its check, the
files and the one-line errors. Classifiers whose smoothed probabilities are known in closed form,
tiny LeNets and real MNIST test images."""

from __future__ import annotations

import csv
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

import aepurify as ap
from aepurify.certification import (ABSTAIN, SmoothedClassifier, bracket, certify_from_counts,
                                    lower_confidence_bound, noise_chunks, noise_generator,
                                    predict_from_counts)
from aepurify.certification.run import DefenseRun
from aepurify.errors import ConfigError
from aepurify.evaluation.report.console import MAX_WIDTH

PHI_INV = NormalDist().inv_cdf


class Constant(nn.Module):
    """Logits that favour class 0 whatever the image: every noisy copy votes 0."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([4.0, 0.0, -1.0]).expand(x.shape[0], 3)


class Threshold(nn.Module):
    """Class 1 where the top-left pixel exceeds ``t``, else class 0: a half-space classifier.
    Clipping x + delta to [0, 1] keeps that pixel's side of t (0 < t < 1), so under noise sigma
    P[class of x] = Phi(|x_0 - t| / sigma) exactly, and the smoothed classifier's robust L2 radius
    is |x_0 - t|, the distance to the hyperplane (Cohen et al., section 3.1)."""

    num_classes = 2

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = (x[:, 0, 0, 0] - self.t) * 100
        return torch.stack([-margin, margin], 1)


def test_clopper_pearson_bound_by_hand():
    # all n draws agree: the lower bound solves p^n = alpha
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-9)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    # one draw in two, large n: the normal approximation, within a few percent of the margin
    k, n = 5000, 10000
    approx = 0.5 - PHI_INV(1 - 0.001) * math.sqrt(0.25 / n)
    assert lower_confidence_bound(k, n, 0.001) == pytest.approx(approx, abs=2e-4)
    with pytest.raises(ConfigError):
        lower_confidence_bound(5, 4, 0.001)


def test_certify_radius_of_a_constant_classifier_is_closed_form(mnist_batch):
    """Every draw votes class 0, so nA = n, pA_low = alpha^(1/n) and the radius is
    sigma * Phi^-1(alpha^(1/n)), computed here with the standard library, not SciPy."""
    x = mnist_batch[0][:3]
    smoothed = SmoothedClassifier(Constant(), None, sigma=0.5)
    for i in range(3):
        c = smoothed.certify(x[i], n0=10, n=100, alpha=0.001, seed=0, index=i)
        assert (c.prediction, c.count, c.n) == (0, 100, 100)
        assert c.radius == pytest.approx(0.5 * PHI_INV(0.001 ** (1 / 100)), rel=1e-9)
    assert 0.5 * PHI_INV(0.001 ** 0.01) == pytest.approx(0.7502, abs=1e-3)  # the figure by hand


@pytest.mark.parametrize("pixel", [0.6, 0.75, 0.9, 0.3])
def test_certified_radius_of_a_half_space_classifier_matches_the_distance(pixel):
    sigma, t, n, alpha = 0.25, 0.5, 20000, 0.001
    x = torch.full((1, 8, 8), 0.5)
    x[0, 0, 0] = pixel
    smoothed = SmoothedClassifier(Threshold(t), None, sigma=sigma)
    c = smoothed.certify(x, n0=100, n=n, alpha=alpha, seed=3, index=0)
    truth = abs(pixel - t)
    p = NormalDist().cdf(truth / sigma)
    assert c.prediction == int(pixel > t)
    # sound: never above the true robust radius (fails with probability alpha)
    assert c.radius <= truth + 1e-9
    # tight: pA_low sits about 3.1 standard errors below pA; allow 5
    floor = sigma * PHI_INV(p - 5 * math.sqrt(p * (1 - p) / n))
    assert c.radius >= floor, (c.radius, floor, truth)
    assert smoothed.predict(x, 2000, alpha, seed=3, index=0).prediction == int(pixel > t)


def test_certify_abstains_and_predict_abstains_on_a_coin():
    sigma = 0.25
    x = torch.full((1, 4, 4), 0.5)  # on the boundary: each class half the time
    smoothed = SmoothedClassifier(Threshold(0.5), None, sigma=sigma)
    c = smoothed.certify(x, n0=100, n=2000, alpha=0.001, seed=0, index=0)
    assert c.prediction == ABSTAIN and c.radius == 0.0
    assert smoothed.predict(x, 2000, 0.001, seed=0, index=0).prediction == ABSTAIN
    p = predict_from_counts(np.array([1000, 0]), 0.001)
    assert p.prediction == 0 and p.p_value < 1e-100


def test_noise_is_replayable_and_counts_match_a_plain_loop(tiny_lenet, mnist_batch):
    """The draws are sampled apart from their use: a plain loop over the same chunks, from a
    generator seeded the same way, gives the same counts, and a second call the same again."""
    x = mnist_batch[0][0]
    smoothed = SmoothedClassifier(tiny_lenet, None, sigma=0.5, max_pixels=300 * 784)
    a = smoothed.counts(x, 700, noise_generator(7, "estimation", 4))
    b = smoothed.counts(x, 700, noise_generator(7, "estimation", 4))
    plain = np.zeros(10, dtype=np.int64)
    chunks = list(noise_chunks(tuple(x.shape), 700, 0.5, noise_generator(7, "estimation", 4),
                               300 * 784))
    assert [c.shape[0] for c in chunks] == [300, 300, 100]
    with torch.no_grad():
        for noise in chunks:
            plain += np.bincount(tiny_lenet((x + noise).clamp(0, 1)).argmax(1).numpy(),
                                 minlength=10)
    assert np.array_equal(a, b) and np.array_equal(a, plain) and a.sum() == 700
    other = smoothed.counts(x, 700, noise_generator(7, "estimation", 5))
    assert not np.array_equal(a, other)


def test_bf16_counting_is_its_own_base_classifier(tiny_lenet, mnist_batch):
    """precision bf16 counts the same replayable draws through the network under bf16
    autocast: a base classifier of its own, so a plain bf16 loop over the same chunks gives the
    same counts; the weights come back in their own layout; another precision is refused."""
    x = mnist_batch[0][0]
    smoothed = SmoothedClassifier(tiny_lenet, None, sigma=0.5, max_pixels=300 * 784,
                                  precision="bf16")
    a = smoothed.counts(x, 700, noise_generator(7, "estimation", 4))
    plain = np.zeros(10, dtype=np.int64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for noise in noise_chunks(tuple(x.shape), 700, 0.5, noise_generator(7, "estimation", 4),
                                  300 * 784):
            noisy = (x + noise).clamp(0, 1).contiguous(memory_format=torch.channels_last)
            plain += np.bincount(tiny_lenet(noisy).float().argmax(1).numpy(), minlength=10)
    assert np.array_equal(a, plain) and a.sum() == 700
    assert all(p.is_contiguous() for p in tiny_lenet.parameters())
    assert smoothed.describe()["precision"] == "bf16"
    with pytest.raises(ConfigError, match="fp32 or bf16"):
        SmoothedClassifier(tiny_lenet, None, sigma=0.5, precision="fp16")


def test_counting_precision_is_recorded_and_keys_the_answers(tiny_lenet, mnist_batch, tmp_path,
                                                             monkeypatch):
    """A bf16 run certifies another base classifier than an fp32 one: it is recorded, and the
    fp32 run's answers in the same folder are not read back for it."""
    x, y = mnist_batch[0][:2], mnist_batch[1][:2]
    kwargs = dict(sigma=0.25, n=100, n0=20, radii=[0], attack=False, out=tmp_path)
    fp32 = ap.certify(tiny_lenet, None, x, y, **kwargs)
    calls = []
    counts = SmoothedClassifier.counts
    monkeypatch.setattr(SmoothedClassifier, "counts",
                        lambda self, *a, **k: calls.append(self.precision) or counts(self, *a, **k))
    bf16 = ap.certify(tiny_lenet, None, x, y, precision="bf16", **kwargs)
    assert fp32.record["counting_precision"] == "fp32"
    assert bf16.record["counting_precision"] == "bf16"
    assert calls == ["bf16"] * 4  # selection and estimation of both images, recomputed
    assert "counting passes (the certified base classifier) in bf16" in (
        tmp_path / "report.md").read_text()


def _run(labels, preds, radii, attacked):
    """A DefenseRun built by hand: certificates (prediction, radius), attacked predictions."""
    certs = [{"prediction": p, "radius": r, "p_lower": 0.9, "count": 0, "top_class": p}
             for p, r in zip(preds, radii)]
    return DefenseRun("f", "d", np.array(labels), certs,
                      {r: [{"prediction": a, "inherited": False, "distance": 0.0} for a in row]
                       for r, row in attacked.items()})


def test_the_check_fails_when_certified_images_are_attacked_into_another_class():
    n = 20
    labels = [1] * n
    # every image certified at radius 1.0 with its label ...
    preds, radii = [1] * n, [1.0] * n
    honest = _run(labels, preds, radii, {0.0: [1] * n, 0.5: [1] * (n - 2) + [ABSTAIN] * 2})
    rows = bracket(honest, [0.0, 0.5], sigma=0.5, alpha=0.001)
    assert [r.certified for r in rows] == [1.0, 1.0]
    assert rows[1].attacked == pytest.approx(0.9) and rows[1].attacked_abstained == 2
    assert all(r.passed for r in rows)  # abstentions near the edge are no contradiction
    # ... but the attack at 0.5 finds another class for 5 of them: a bug in one of the bounds
    broken = _run(labels, preds, radii, {0.0: [1] * n, 0.5: [1] * (n - 5) + [0] * 5})
    rows = bracket(broken, [0.0, 0.5], sigma=0.5, alpha=0.001)
    assert rows[0].passed and rows[1].passed is False
    assert rows[1].contradictions == 5 and rows[1].allowance < 5


def test_certify_writes_the_bracket_and_the_files(tiny_lenet, mnist_batch, tmp_path):
    x, y = mnist_batch[0][:6], mnist_batch[1][:6]
    out = tmp_path / "run"
    result = ap.certify(tiny_lenet, None, x, y, sigma=0.25, n=300, n0=50,
                        radii=[0, 0.25, 0.5], attack={"steps": 3, "noise_draws": 4,
                                                      "predict_n": 200}, out=out, seed=1)
    assert [r.radius for r in result.rows] == [0.0, 0.25, 0.5]
    certified = [r.certified for r in result.rows]
    assert certified == sorted(certified, reverse=True)
    assert all(r.passed for r in result.rows), result.rows
    for r in result.rows:  # the bracket: lower <= upper, up to abstentions and the allowance
        assert r.certified * r.n <= r.attacked * r.n + r.attacked_abstained + r.allowance
    with open(out / "certify.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "label", "prediction", "radius", "correct"]
    assert len(rows) == 6 and {int(r["label"]) for r in rows} <= set(range(10))
    for r, c in zip(rows, result.run.certificates):
        assert int(r["correct"]) == int(int(r["prediction"]) == int(r["label"]))
        assert float(r["radius"]) == pytest.approx(c["radius"], abs=1e-6)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [float(s["eps"]) for s in summary] == [0.0, 0.25, 0.5]
    assert {s["norm"] for s in summary} == {"l2"} and {s["check"] for s in summary} == {"passed"}
    for name in ("attacked.csv", "certified.png", "report.md", "report.html", "run.json",
                 "certify.db"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "certified" in report and "attacked" in report and "clipped to [0, 1]" in report
    text = str(result)
    assert all(len(line) <= MAX_WIDTH for line in text.splitlines()), text
    assert "0.25" in text


def test_a_second_run_reads_the_answers_back(tiny_lenet, mnist_batch, tmp_path, monkeypatch):
    x, y = mnist_batch[0][:3], mnist_batch[1][:3]
    kwargs = dict(sigma=0.25, n=200, n0=20, radii=[0, 0.25],
                  attack={"steps": 2, "noise_draws": 2, "predict_n": 100}, out=tmp_path, seed=2)
    first = ap.certify(tiny_lenet, None, x, y, **kwargs)

    def fail(*args, **kw):
        raise AssertionError("recomputed an answer the run file holds")

    monkeypatch.setattr(SmoothedClassifier, "counts", fail)
    second = ap.certify(tiny_lenet, None, x, y, **kwargs)
    assert second.run.certificates == first.run.certificates
    assert second.run.attacked == first.run.attacked


def test_denoised_smoothing_with_a_purifier(tiny_lenet, mnist_batch):
    """A differentiable purifier is attacked exactly, a non-differentiable one through BPDA;
    both give a bracket that passes the check."""
    x, y = mnist_batch[0][:4], mnist_batch[1][:4]
    blur = ap.as_purifier(lambda t: torch.nn.functional.avg_pool2d(t, 3, 1, 1),
                          differentiable=True, stochastic=False, name="blur")
    quant = ap.as_purifier(lambda t: torch.round(t * 4) / 4, differentiable=False,
                           stochastic=False, name="quantize")
    for purifier, backward in ((blur, "exact"), (quant, "bpda (surrogate)")):
        result = ap.certify(tiny_lenet, purifier, x, y, sigma=0.25, n=200, n0=20,
                            radii=[0, 0.5], attack={"steps": 2, "noise_draws": 2,
                                                    "predict_n": 100})
        assert result.record["attack_backward"] == backward
        assert result.record["defense"].startswith(purifier.name)
        assert all(r.passed for r in result.rows)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0}, "sigma"), ({"sigma": 0.5, "n0": 0}, "n0"), ({"sigma": 0.5, "alpha": 1.5},
                                                                 "alpha"),
    ({"sigma": 0.5, "radii": [-1]}, "radii"), ({"sigma": 0.5, "attack": {"stepz": 3}}, "stepz"),
    ({"sigma": 0.5, "precision": "fp16"}, "precision"),
])
def test_bad_settings_are_one_line_errors(tiny_lenet, mnist_batch, kwargs, message):
    x, y = mnist_batch[0][:2], mnist_batch[1][:2]
    with pytest.raises(ConfigError, match=message) as info:
        ap.certify(tiny_lenet, None, x, y, **kwargs)
    assert "\n" not in str(info.value)


def test_certify_from_counts_rejects_mismatched_counts():
    with pytest.raises(ConfigError):
        certify_from_counts(np.array([1, 2]), np.array([1, 2, 3]), 0.5, 0.001)
