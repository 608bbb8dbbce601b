"""``aepurify.audit``: any classifier and purifier, one call, through the evaluation stages
(issue 12). Tiny models and real MNIST test images."""

from __future__ import annotations

import csv

import pytest
import torch
import torchattacks
from torch import nn

import aepurify as ap
from aepurify.errors import ConfigError, InputError
from aepurify.evaluation.report.console import MAX_WIDTH
from aepurify.training import TrainSettings, fit_classifier
from aepurify.utils import seed_everything


def rounding(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 4) / 4


def noisy(t: torch.Tensor) -> torch.Tensor:
    return (t + 0.3 * torch.randn_like(t)).clamp(0, 1)


def assert_fits_80_columns(text: str) -> None:
    assert all(len(line) <= MAX_WIDTH for line in text.splitlines()), text


def rows_of(result: ap.AuditResult, purifier: str | None = None) -> list[dict]:
    label = purifier or result.purifier
    return [r for r in result.per_attack if r["purifier"] == label and r["attack"] != "none"]


def test_a_zero_gradient_purifier_is_attacked_with_bpda_and_broken(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:48], mnist_batch[1][:48]
    result = ap.audit(tiny_lenet, rounding, x, y, eps=0.3, version="quick")
    assert result.properties.differentiable.probed is False
    assert "exactly zero" in result.properties.differentiable.evidence
    assert result.threat_models_used == ["bpda"]
    assert {r["threat_model"] for r in rows_of(result)} == {"bpda"}
    assert result.clean_accuracy >= 0.8
    assert result.robust_accuracy <= 0.1, result.robust_accuracy
    text = str(result)
    assert "bpda" in text and "exactly zero" in text
    assert_fits_80_columns(text)


def test_a_declared_differentiable_rounding_purifier_is_flagged(tiny_lenet, mnist_batch):
    """Declared differentiable, probed not: the plan adds bpda beside white-box, and the
    white-box-vs-bpda check fails (the exact gradient is masked)."""
    x, y = mnist_batch[0][:32], mnist_batch[1][:32]
    purifier = ap.as_purifier(rounding, differentiable=True, stochastic=False, name="rounding")
    result = ap.audit(tiny_lenet, purifier, x, y, eps=0.3, version="quick")
    assert result.properties.differentiable.disagrees
    assert result.threat_models_used == ["white-box", "bpda"]
    check = {s.name: s for s in result.sanity}["white-box-vs-bpda"]
    assert check.passed is False, check.detail
    # the white-box rows that attacked every example (APGD-CE attacks only what BPDA's PGD
    # left, so its row is the cumulative robust accuracy)
    white = {r["attack"]: r["accuracy"] for r in rows_of(result)
             if r["threat_model"] == "white-box" and "attacked" not in r}
    assert white and result.robust_accuracy <= min(white.values()) - 0.5, \
        (white, result.robust_accuracy)


def test_a_random_purifier_gets_eot_and_n_evaluation(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:12], mnist_batch[1][:12]
    result = ap.audit(tiny_lenet, noisy, x, y, eps=0.15, version="quick", n_eval=4)
    assert result.properties.stochastic.probed is True
    assert result.threat_models_used == ["white-box+eot"] and result.n_eval == 4
    for row in result.rows:
        if row.purifier != result.purifier:
            continue
        d = row.details
        assert d["n_eval"] == 4, row.key
        assert d["all_of_n"] == pytest.approx(row.accuracy)
        assert d["all_of_n"] <= d["majority_vote"] + 1e-9 or d["all_of_n"] <= d["single_draw"]
        if row.attack != "none":
            assert d["eot_samples"] == 10
    rules = result.n_eval_accuracies
    assert rules["all_of_n"] == pytest.approx(result.robust_accuracy)
    assert rules["all_of_n"] <= min(rules["majority_vote"], rules["single_draw"]) + 1e-9
    summary = next(s for s in result.summary if s.purifier == result.purifier)
    assert summary.n_eval == 4 and summary.adaptive_single_draw == pytest.approx(
        rules["single_draw"])
    text = str(result)
    assert "all of 4 evaluations" in text and "majority" in text
    assert_fits_80_columns(text)


def small_cnn(mnist_train, classes: int) -> nn.Module:
    """A small CNN with ``classes`` outputs trained one epoch on 3,000 MNIST images (labels
    0..9 of ``classes``); far cheaper to attack than LeNet."""
    seed_everything(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, classes))
    clf = ap.as_classifier(net, mean=0.1307, std=0.3081, input_shape=(1, 28, 28))
    fit_classifier(clf, mnist_train, TrainSettings(epochs=1, batch_size=64, max_images=3000))
    return net.eval()


def test_a_100_class_classifier_end_to_end(mnist_train, mnist_batch, tmp_path):
    net = small_cnn(mnist_train, 100)
    x, y = mnist_batch[0][:24], mnist_batch[1][:24]
    clf = ap.as_classifier(net, mean=0.1307, std=0.3081, sample=x)
    purifier = ap.create_purifier("bit-depth", bits=3, in_channels=1)
    result = ap.audit(clf, purifier, x, y, eps=0.1, version="quick", out=tmp_path / "audit")
    assert result.num_classes == 100
    assert result.threat_models_used == ["bpda"]
    assert {r["attack"] for r in rows_of(result)} == {"pgd", "apgd-ce"}
    assert result.robust_accuracy <= result.clean_accuracy
    for name in ("results.csv", "summary.csv", "sanity.csv", "report.md", "report.html",
                 "results.db", "run.json"):
        assert (tmp_path / "audit" / name).is_file(), name
    assert_fits_80_columns(str(result))


def test_the_undefended_standard_audit_agrees_with_autoattack(mnist_train, mnist_batch,
                                                              tmp_path):
    """Same images, same module: the audit's standard version (PGD, APGD-CE, APGD-T, Square,
    the sanity PGDs) against torchattacks' AutoAttack (APGD-CE, APGD-T, FAB-T, Square) with
    AutoAttack's own 100 steps (torchattacks' AutoAttack builds its APGD, APGD-T and FAB with
    its default of 10)."""
    net = small_cnn(mnist_train, 10)
    clf = ap.as_classifier(net, mean=0.1307, std=0.3081, input_shape=(1, 28, 28)).eval()
    x, y = mnist_batch[0][:100], mnist_batch[1][:100]
    eps = 0.1
    result = ap.audit(clf, None, x, y, eps=eps, version="standard", out=tmp_path / "audit")
    assert result.threat_models_used == ["gray-box", "black-box"]
    attack = torchattacks.AutoAttack(clf, norm="Linf", eps=eps, version="standard",
                                     n_classes=10, seed=0)
    for component in attack._autoattack.attacks:
        if hasattr(component, "steps"):
            component.steps = 100
    x_adv = attack(x, y)
    with torch.no_grad():
        reference = float((clf(x_adv).argmax(1) == y).float().mean())
    assert 0.1 <= reference <= 0.9, reference  # a budget where the comparison means something
    assert abs(result.robust_accuracy - reference) <= 0.01, (result.robust_accuracy, reference)
    # the standard version's rows, checks and files
    attacks = {(r["threat_model"], r["attack"]) for r in rows_of(result)}
    assert {("gray-box", "pgd"), ("gray-box", "apgd-ce"), ("gray-box", "apgd-t"),
            ("black-box", "square")} <= attacks
    checks = {s.name: s for s in result.sanity}
    assert checks["more-iterations"].passed is not None
    assert checks["square-vs-gradient"].passed is not None
    assert checks["large-eps"].passed is None and "thorough" in checks["large-eps"].detail
    for name in ("results.csv", "summary.csv", "sanity.csv", "report.md", "report.html",
                 "results.db", "run.json"):
        assert (tmp_path / "audit" / name).is_file(), name
    with open(tmp_path / "audit" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result.per_attack)
    markdown = result.to_markdown()
    assert "what it picked and why" in markdown and "apgd-t" in markdown
    saved = result.save(tmp_path / "again")
    assert (saved / "report.html").is_file() and (saved / "sanity.csv").is_file()
    assert_fits_80_columns(str(result))


def test_bad_input_is_one_clear_exception(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    with pytest.raises(ConfigError, match=r"changed the shape: \(8, 1, 28, 28\)"):
        ap.audit(tiny_lenet, lambda t: t[:, :, :14], x, y, eps=0.1)
    with pytest.raises(ConfigError, match=r"outside \[0, 1\]"):
        ap.audit(tiny_lenet, lambda t: t * 3 - 1, x, y, eps=0.1)
    probabilities = nn.Sequential(tiny_lenet, nn.Softmax(dim=1))
    with pytest.raises(ConfigError, match="returns probabilities"):
        ap.audit(probabilities, None, x, y, eps=0.1)
    with pytest.raises(InputError, match=r"labels must be class indices in \[0, 9\]"):
        ap.audit(tiny_lenet, None, x, y + 5, eps=0.1)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        ap.audit(tiny_lenet, None, x * 255, y, eps=0.1)
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        ap.audit(tiny_lenet, None, x, y, eps=8)
    with pytest.raises(ConfigError, match="unknown audit version"):
        ap.audit(tiny_lenet, None, x, y, eps=0.1, version="fast")
