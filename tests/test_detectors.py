"""MagNet's detectors (issue 24): thresholds at a false-positive rate on clean held-out images,
the scores, a defense that rejects, and rows that count rejection MagNet's way. Real MNIST
images, tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aepurify.attacks import ThreatModel
from aepurify.detectors import (DetectingClassifier, DetectorSet, RejectionOutput, ScoreDetector,
                                Views, create_detector, jensen_shannon, magnet_threshold)
from aepurify.errors import ConfigError, NotApplicableError
from aepurify.evaluation.cells import AttackSpec, DefenseKeys
from aepurify.evaluation.rejection import judge_rejecting
from aepurify.evaluation.run import Workload, compute_cell
from aepurify.purifiers import create_purifier


def corner(x: torch.Tensor) -> torch.Tensor:
    """A score that is the top-left pixel: lets a test choose which images a detector rejects."""
    return x[:, 0, 0, 0]


def corner_detectors() -> DetectorSet:
    """Rejects an image whose top-left pixel is at least 0.5 (MagNet's rule: score >= the k-th
    largest calibration score; here k = 1 of two scores, 0 and 0.5)."""
    detectors = DetectorSet([ScoreDetector(corner, "corner")])
    detectors.detectors[0].set_threshold(torch.tensor([0.0, 0.5]), 0.5)
    return detectors


def test_the_threshold_is_magnet_s_kth_largest_clean_score():
    scores = torch.arange(5000, dtype=torch.float32)  # 0 .. 4999
    threshold = magnet_threshold(scores, 0.001)       # k = 5: the 5th largest
    assert threshold == 4995.0
    assert int((scores >= threshold).sum()) == 5      # 0.001 of the calibration images
    with pytest.raises(ConfigError, match="at least 1000 clean calibration images"):
        magnet_threshold(torch.rand(999), 0.001)
    with pytest.raises(ConfigError, match="non-finite"):
        magnet_threshold(torch.tensor([0.0, float("nan")] * 1000), 0.001)
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        magnet_threshold(scores, 0.0)


def test_reconstruction_error_and_divergence_scores(mnist_batch, tiny_lenet):
    x = mnist_batch[0][:16]
    magnet = create_purifier("magnet", "mnist").eval()
    with torch.no_grad():
        rec = magnet(x)
        views = Views(x, tiny_lenet, magnet)
        l2 = create_detector("reconstruction", magnet, p=2).score(views)
        l1 = create_detector("reconstruction", magnet, p=1).score(views)
        jsd = create_detector("divergence", magnet, temperature=10).score(views)
    torch.testing.assert_close(l2, (x - rec).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(l1, (x - rec).abs().flatten(1).mean(1))
    torch.testing.assert_close(l1, magnet.reconstruction_error(x, p=1))
    assert bool((jsd >= 0).all()) and bool((jsd <= math.log(2) + 1e-6).all())
    logits = torch.randn(4, 10)
    assert float(jensen_shannon(logits, logits).abs().max()) < 1e-6
    other = torch.randn(4, 10)
    torch.testing.assert_close(jensen_shannon(logits, other, 10), jensen_shannon(other, logits, 10))


def test_only_a_purifier_with_a_reconstruction_error_feeds_a_detector():
    with pytest.raises(ConfigError, match="reconstruction error"):
        create_detector("reconstruction", create_purifier("jpeg", quality=50), p=1)
    with pytest.raises(NotApplicableError, match="no reconstruction error"):
        create_purifier("median").reconstruction(torch.rand(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_detector("divergence", create_purifier("magnet", "mnist"), temprature=10)
    for name in ("magnet", "apudae", "feature-dae", "hgd", "vae", "patch-vae", "s2snet"):
        assert create_purifier(name, "mnist").reconstructs, name


def test_the_reformer_and_its_detectors_share_one_pass(mnist_batch, tiny_lenet):
    x = mnist_batch[0][:8]
    magnet = create_purifier("magnet", "mnist").eval()
    calls = []
    magnet.register_forward_hook(lambda *args: calls.append(1))
    detectors = DetectorSet([create_detector("reconstruction", magnet, p=2),
                             create_detector("reconstruction", magnet, p=1)])
    detectors.calibrate(torch.rand(100, 1, 28, 28), tiny_lenet, magnet, [0.01, 0.01])
    calls.clear()
    with torch.no_grad():
        decision = DetectingClassifier(tiny_lenet, magnet, detectors).decide(x)
    assert len(calls) == 1                                  # the reformer's pass, read by both
    assert decision.scores.shape == (2, 8) and decision.rejected.shape == (8,)
    assert bool((decision.rejected == decision.fired.any(0)).all())


def test_rejection_output_answers_k_plus_one_classes(mnist_batch, tiny_lenet):
    x = mnist_batch[0][:4].clone()
    x[0, 0, 0, 0] = 1.0
    out = RejectionOutput(DetectingClassifier(tiny_lenet, create_purifier("none"),
                                              corner_detectors()))
    with torch.no_grad():
        pred = out(x).argmax(1)
    assert int(pred[0]) == 10 and bool((pred[1:] < 10).all())
    assert out.num_classes == 10 and out.log[0].tolist() == [[True, False, False, False]]


def _four_cases(mnist_batch, tiny_lenet):
    """Four images: rejected and right, rejected and wrong, accepted and right, accepted and
    wrong (a wrong label plays the misclassified case)."""
    x, y = mnist_batch[0].clone(), mnist_batch[1].clone()
    lit = x.clone()
    lit[:, :, 0, 0] = 1.0
    with torch.no_grad():  # right with the corner pixel dark and lit alike
        right = (tiny_lenet(x).argmax(1) == y) & (tiny_lenet(lit).argmax(1) == y)
    pick = right.nonzero().flatten()[:4]
    x, y = x[pick], y[pick]
    x[:2, :, 0, 0] = 1.0                                   # the first two are rejected
    y[1] = (y[1] + 1) % 10
    y[3] = (y[3] + 1) % 10
    return x, y


def test_a_rejected_adversarial_input_is_correct_and_a_rejected_clean_one_an_error(
        mnist_batch, tiny_lenet):
    x, y = _four_cases(mnist_batch, tiny_lenet)
    defense = DetectingClassifier(tiny_lenet, create_purifier("none"), corner_detectors())
    clean, _, counts = judge_rejecting(defense, x, y, adversarial=False, n_eval=1, seed=0,
                                       batch_size=8)
    adversarial, _, _ = judge_rejecting(defense, x, y, adversarial=True, n_eval=1, seed=0,
                                        batch_size=8)
    assert clean.tolist() == [False, False, True, False]        # rejected clean: an error
    assert adversarial.tolist() == [True, True, True, False]    # rejected adversarial: correct
    assert counts.rejected.tolist() == [1, 1, 0, 0]
    details = counts.details(adversarial=False)["detection"]
    assert details["rejection_rate"] == 0.5 and details["accepted_accuracy"] == 0.5
    assert details["per_detector"] == {"corner": 0.5}


def test_rows_count_rejection_and_record_it(mnist_batch, tiny_lenet):
    """Through the run stage: a clean row and a gray-box row whose examples are the clean images
    (FGSM at eps 0) differ exactly by MagNet's rule."""
    x, y = _four_cases(mnist_batch, tiny_lenet)
    keys = DefenseKeys("mnist", 0, "lenet", "k", "det", "p", detectors_key="d")
    work = Workload(x, y, [str(i) for i in range(10)], {"lenet": tiny_lenet},
                    {("lenet", "det"): create_purifier("none")}, torch.device("cpu"), 8, 0,
                    detectors={("lenet", "det"): corner_detectors()})
    clean_row, _ = compute_cell(work, keys.clean_cell(4))
    attack = keys.attack_cell(ThreatModel("gray-box"), AttackSpec("fgsm", "fgsm", "linf"), 0.0, 4)
    adv_row, _ = compute_cell(work, attack)
    assert clean_row.accuracy == 0.25 and adv_row.accuracy == 0.75
    assert clean_row.details["detection"]["rejection_rate"] == 0.5
    assert adv_row.details["detection"]["adversarial"] is True
    assert keys.clean_cell(4).spec_hash != DefenseKeys("mnist", 0, "lenet", "k", "det",
                                                      "p").clean_cell(4).spec_hash


def test_a_random_defense_that_rejects_is_judged_over_n_evaluations(mnist_batch, tiny_lenet):
    """A random score rejects some evaluations only: all-of-n then counts a clean image correct
    only if every evaluation accepted it, an adversarial one only if every evaluation rejected
    it or classified it right."""
    x, y = mnist_batch[0][:32], mnist_batch[1][:32]

    def coin(t: torch.Tensor) -> torch.Tensor:
        return torch.rand(t.shape[0], device=t.device)

    detectors = DetectorSet([ScoreDetector(coin, "coin")])
    detectors.detectors[0].set_threshold(torch.tensor([0.0, 0.5]), 0.5)   # rejects half
    noisy = create_purifier("vae", "mnist").eval()                        # random purifier
    defense = DetectingClassifier(tiny_lenet, noisy, detectors)
    clean, verdict, counts = judge_rejecting(defense, x, y, adversarial=False, n_eval=5, seed=0,
                                             batch_size=32)
    assert counts.n_eval == 5 and verdict is not None
    assert bool((clean <= (counts.rejected == 0)).all())     # any rejection: not correct
    rate = counts.details(False)["detection"]["rejection_rate"]
    assert 0.3 < rate < 0.7
