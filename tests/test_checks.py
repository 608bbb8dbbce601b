"""Input validation: the range check runs once at the public boundary, not in every call an
attack makes (a host sync per call on an accelerator), and bad input still gets one line."""

from __future__ import annotations

import pytest
import torch

from aepurify.attacks import attack_module, build_attack, resolve_threat_model
from aepurify.checks import check_images, inputs_validated, range_checks_active, validated
from aepurify.errors import InputError
from aepurify.purifiers import DefendedClassifier, create_purifier


@pytest.fixture()
def range_checks(monkeypatch):
    """Counts the range checks (torch.aminmax calls) made."""
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or aminmax(*a, **k))
    return calls


def test_range_check_skipped_inside_validated_block_but_shapes_still_checked():
    bad_range = torch.full((2, 1, 28, 28), 1.5)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        check_images(bad_range)
    assert range_checks_active()
    with inputs_validated():
        assert not range_checks_active()
        check_images(bad_range)  # trusted: checked at the boundary
        with pytest.raises(InputError, match="channel"):
            check_images(torch.rand(2, 3, 28, 28), channels=1)
        with pytest.raises(InputError, match="floating point"):
            check_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert range_checks_active()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        with validated(bad_range):
            pass


def test_pgd_through_the_threat_layer_checks_the_range_once(tiny_lenet, mnist_batch,
                                                             range_checks):
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    defended = DefendedClassifier(tiny_lenet, create_purifier("median")).eval()
    tm = resolve_threat_model("white-box", defended.purifier)
    attack = build_attack("pgd", attack_module(tm, defended), 0.1, params={"steps": 20})
    x_adv = attack(x, y)
    assert len(range_checks) == 1  # the attack's input; not 2 per step (purifier, classifier)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    range_checks.clear()
    defended(x)  # a user's call: both parts check their input
    assert len(range_checks) == 2


def test_attack_boundary_rejects_bad_images_in_one_line(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:4], mnist_batch[1][:4]
    attack = build_attack("fgsm", tiny_lenet, 0.1)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        attack(x * 3, y)
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        attack(x[0], y)
    assert attack.eps == 0.1  # the wrapped attack's attributes stay readable
    assert range_checks_active()  # the block was left even though the attack raised


def test_sbim_checks_its_input_once(tiny_lenet, mnist_batch, range_checks):
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    apudae = create_purifier("apudae", in_channels=1, layers=2, features=4).eval()
    defended = DefendedClassifier(tiny_lenet, apudae).eval()
    sbim = apudae.adaptive_attack("bim", defended, 0.1, "linf", steps=3)
    sbim(x, y)
    assert len(range_checks) == 1
    with pytest.raises(InputError):
        sbim(x + 2, y)
