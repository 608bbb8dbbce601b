"""Every registered attack runs through the threat-model layer, respects its budget and lowers an
undefended model's accuracy; minimal-perturbation attacks are scored at the budget."""

from __future__ import annotations

import pytest
import torch

from aepurify.attacks import (ATTACKS, WithinBudget, attack_module, build_attack, check_attack,
                              gradient_free, resolve_threat_model)
from aepurify.errors import ConfigError, NotApplicableError
from aepurify.purifiers import DefendedClassifier, create_purifier

# (attack, norm, eps, params): small settings, so the suite stays fast.
CASES = [
    ("fgsm", "linf", 0.3, {}),
    ("rfgsm", "linf", 0.3, {}),
    ("bim", "linf", 0.3, {"steps": 5}),
    ("bim", "l2", 3.0, {"steps": 5}),
    ("pgd", "linf", 0.3, {"steps": 5}),
    ("pgd", "l2", 3.0, {"steps": 5, "targeted": "random"}),
    ("mifgsm", "linf", 0.3, {"steps": 5}),
    ("cw", "l2", 3.0, {"c": 10.0, "steps": 50, "lr": 0.1}),
    ("deepfool", "l2", 3.0, {"steps": 20}),
    ("pgd-art", "linf", 0.3, {"steps": 5}),
    ("apgd-ce", "linf", 0.3, {"steps": 10}),
    ("apgd-dlr", "l2", 3.0, {"steps": 10}),
    ("apgd-t", "linf", 0.3, {"steps": 5, "n_target_classes": 3}),
    ("fab", "linf", 0.3, {"steps": 5}),
    ("square", "linf", 0.3, {"n_queries": 300}),
    ("autoattack", "linf", 0.3, {}),
    ("autoattack", "l2", 3.0, {"version": "rand"}),  # APGD-CE and APGD-DLR, 20 EOT draws
]


def test_every_registered_attack_is_covered():
    assert {c[0] for c in CASES} == set(ATTACKS.names())


@pytest.mark.parametrize("name,norm,eps,params", CASES,
                         ids=[f"{c[0]}-{c[1]}" + (f"-{c[3]['version']}" if "version" in c[3] else "")
                              for c in CASES])
def test_attack_within_budget_lowers_accuracy(tiny_lenet, mnist_batch, name, norm, eps, params):
    x, y = mnist_batch[0][:48], mnist_batch[1][:48]
    torch.manual_seed(0)
    x_adv = build_attack(name, tiny_lenet, eps=eps, norm=norm, params=params)(x, y).detach()
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-4) + 1e-5
    with torch.no_grad():
        clean = (tiny_lenet(x).argmax(1) == y).float().mean()
        robust = (tiny_lenet(x_adv).argmax(1) == y).float().mean()
    assert robust <= clean - 0.25, (float(clean), float(robust))


def test_within_budget_returns_clean_images_beyond_the_budget(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    far = WithinBudget(lambda a, b: (a + 0.5).clamp(0, 1), eps=0.1, norm="linf")
    assert torch.equal(far(x, y), x)
    near = WithinBudget(lambda a, b: (a + 0.05).clamp(0, 1), eps=0.1, norm="linf")
    assert not torch.equal(near(x, y), x)


def test_black_box_is_for_gradient_free_attacks(tiny_lenet, mnist_batch):
    jpeg = create_purifier("jpeg", quality=30)
    defended = DefendedClassifier(tiny_lenet, jpeg)
    tm = resolve_threat_model("black-box", jpeg)  # no gradients needed: JPEG is fine
    assert gradient_free("square") and not gradient_free("pgd")
    check_attack(tm, "square")
    with pytest.raises(NotApplicableError, match="outputs only"):
        check_attack(tm, "pgd")
    module = attack_module(tm, defended)
    assert module is defended
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    x_adv = build_attack("square", module, eps=0.3, params={"n_queries": 100})(x, y)
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6


def test_attack_option_errors(tiny_lenet):
    with pytest.raises(ConfigError, match="supports norm linf"):
        build_attack("mifgsm", tiny_lenet, 0.1, norm="l2")
    with pytest.raises(ConfigError, match="targeted must be"):
        build_attack("pgd", tiny_lenet, 0.1, params={"targeted": "most-likely"})
    with pytest.raises(ConfigError, match="bad parameters for attack 'square'"):
        build_attack("square", tiny_lenet, 0.1, params={"targeted": "random"})
    with pytest.raises(ConfigError, match="version"):
        build_attack("autoattack", tiny_lenet, 0.1, params={"version": "plus"})


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_second_engine_agrees(tiny_lenet, mnist_test, norm, eps):
    """ART's PGD and torchattacks' PGD, same settings, same model and 300 real images: robust
    accuracy within 2 points."""
    x, y = mnist_test.tensors(slice(0, 300))
    accs = {}
    for name in ("pgd", "pgd-art"):
        torch.manual_seed(0)
        x_adv = build_attack(name, tiny_lenet, eps=eps, norm=norm, params={"steps": 10})(x, y)
        with torch.no_grad():
            accs[name] = float((tiny_lenet(x_adv.detach()).argmax(1) == y).float().mean())
    assert 0.05 < accs["pgd"] < 0.95, accs  # a budget where the comparison means something
    assert abs(accs["pgd"] - accs["pgd-art"]) <= 0.02, accs
