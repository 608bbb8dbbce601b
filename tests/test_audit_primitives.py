"""The primitives the audit stands on (issue 12): as_classifier, as_purifier, the property probes
and the threat-model plan."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aepurify as ap
from aepurify.attacks import (EOT, attack_module, build_attack, plan_threat_models,
                              resolve_threat_model)
from aepurify.attacks.base import num_classes_of
from aepurify.errors import ConfigError, InputError
from aepurify.models import check_labels
from aepurify.purifiers import DefendedClassifier, create_purifier, probe_properties
from aepurify.purifiers.transforms import jpeg_pillow


def hundred_class_net() -> nn.Module:
    """A tiny untrained 100-class classifier of normalised 28 x 28 grey images."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 13 * 13, 100)).eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# -- as_classifier ---------------------------------------------------------------------------


def test_as_classifier_reads_the_classes_and_normalises_inside(mnist_batch):
    x = mnist_batch[0][:16]
    net = hundred_class_net()
    clf = ap.as_classifier(net, mean=[0.1307], std=[0.3081], sample=x)
    assert clf.num_classes == 100 and clf.input_shape == (1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(clf(x), net((x - 0.1307) / 0.3081))
    defended = DefendedClassifier(clf, create_purifier("median"))
    assert num_classes_of(EOT(defended, 2)) == 100          # found through the wrappers
    by_shape = ap.as_classifier(net, input_shape=(1, 28, 28))
    assert by_shape.num_classes == 100 and ap.as_classifier(by_shape) is by_shape


def test_as_classifier_never_assumes_the_number_of_classes():
    with pytest.raises(ConfigError, match="cannot read the number of classes"):
        ap.as_classifier(hundred_class_net())
    with pytest.raises(ConfigError, match="no num_classes attribute"):
        num_classes_of(nn.Sequential(nn.Flatten(), nn.Linear(784, 100)))
    declared = ap.as_classifier(hundred_class_net(), num_classes=100)
    assert num_classes_of(declared) == 100
    with pytest.raises(ConfigError, match="returns 100 logits per image, but num_classes=10"):
        ap.as_classifier(hundred_class_net(), num_classes=10, input_shape=(1, 28, 28))


def test_as_classifier_refuses_probabilities_bad_shapes_and_bad_statistics(mnist_batch):
    x = mnist_batch[0][:8]
    with pytest.raises(ConfigError, match="returns probabilities .* not logits"):
        ap.as_classifier(nn.Sequential(hundred_class_net(), nn.Softmax(dim=1)), sample=x)
    log_probs = ap.as_classifier(nn.Sequential(hundred_class_net(), nn.LogSoftmax(dim=1)),
                                 sample=x)            # log-probabilities are logits up to a shift
    assert log_probs.num_classes == 100
    with pytest.raises(ConfigError, match=r"shape \(N, K\) with N = 8; got shape \(8, 100, 1\)"):
        ap.as_classifier(nn.Sequential(hundred_class_net(), nn.Unflatten(1, (100, 1))), sample=x)
    with pytest.raises(ConfigError, match="std must be positive"):
        ap.as_classifier(hundred_class_net(), std=0.0, sample=x)
    with pytest.raises(ConfigError, match="mean has 3 values for images of 1 channel"):
        ap.as_classifier(hundred_class_net(), mean=[0.5, 0.5, 0.5], sample=x)
    with pytest.raises(InputError, match="sample must have values in"):
        ap.as_classifier(hundred_class_net(), sample=x * 255)
    lazy = ap.as_classifier(nn.Sequential(hundred_class_net(), nn.Softmax(dim=1)),
                            num_classes=100)
    with pytest.raises(ConfigError, match="probabilities"):   # checked on the first real call
        lazy(x)


def test_labels_out_of_range_are_refused():
    assert check_labels(torch.tensor([0, 99]), 100, n=2) is not None
    with pytest.raises(InputError, match=r"class indices in \[0, 9\] \(10 classes\); got min 0, "
                                         r"max 10"):
        check_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(InputError, match="integer class indices"):
        check_labels(torch.tensor([0.0, 1.0]), 10)
    with pytest.raises(InputError, match="got 2 labels for 3 images"):
        check_labels(torch.tensor([0, 1]), 10, n=3)


@pytest.mark.parametrize("attack,norm,eps,params", [
    ("pgd", "linf", 0.1, {"steps": 5}),
    ("apgd-ce", "linf", 0.1, {"steps": 5}),
    ("apgd-t", "linf", 0.1, {"steps": 3, "n_target_classes": 3}),
    ("deepfool", "l2", 2.0, {"steps": 10}),          # ART: reads num_classes (was 10: IndexError)
])
def test_a_100_class_classifier_works_with_the_attack_engines(attack, norm, eps, params,
                                                             mnist_batch):
    x = mnist_batch[0][:16]
    clf = ap.as_classifier(hundred_class_net(), sample=x)
    with torch.no_grad():
        y = clf(x).argmax(1)                  # its own predictions: clean accuracy 1
    assert int(y.max()) >= 10                 # labels a 10-class assumption could not index
    x_adv = build_attack(attack, clf, eps, norm, params)(x, y).detach()
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert x_adv.shape == x.shape and float(size.max()) <= eps * (1 + 1e-4)
    assert accuracy(clf, x_adv, y) < 1.0


# -- as_purifier -----------------------------------------------------------------------------


def test_as_purifier_refuses_a_broken_callable_in_one_line(mnist_batch):
    x = mnist_batch[0][:4]
    cases = [(lambda t: t[..., :14], r"changed the shape: \(4, 1, 28, 28\) -> \(4, 1, 28, 14\)"),
             (lambda t: t * 2, r"values outside \[0, 1\] \(min 0, max 2\)"),
             (lambda t: t * float("nan"), "returned NaN"),
             (lambda t: "not an image", "must return a tensor")]
    for fn, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            ap.as_purifier(fn, differentiable=True, stochastic=False)(x)
        assert "\n" not in str(info.value)
    numpy_out = ap.as_purifier(lambda t: t.numpy() * 0.5)(x)      # NumPy output is converted
    assert torch.allclose(numpy_out, x * 0.5)
    with pytest.raises(ConfigError, match="True, False or None"):
        ap.as_purifier(lambda t: t, differentiable="yes")


def test_unknown_properties_are_refused_until_probed(mnist_batch):
    x = mnist_batch[0][:8]
    purifier = ap.as_purifier(lambda t: (t + 0.1 * torch.randn_like(t)).clamp(0, 1),
                              name="noise")
    assert purifier.properties()["stochastic"] == "unknown"
    with pytest.raises(ConfigError, match="noise: whether it is differentiable is unknown"):
        resolve_threat_model("strongest", purifier)
    props = probe_properties(purifier, x)
    assert props.stochastic.probed and props.differentiable.probed
    props.fill_unknown(purifier)
    assert resolve_threat_model("strongest", purifier).name == "white-box+eot"
    declared = ap.as_purifier(create_purifier("bit-depth"), name="squeeze")
    assert declared.differentiable is False and declared.name == "squeeze"


# -- probes and the plan ---------------------------------------------------------------------


def rounding(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 4) / 4


def test_probes_tell_masked_gradients_from_real_ones(mnist_batch):
    x = mnist_batch[0]
    verdicts = {
        "rounding": (ap.as_purifier(rounding), False, "exactly zero"),
        "pillow-jpeg": (ap.as_purifier(lambda t: jpeg_pillow(t, 50)), False, "not connected"),
        "shattered": (ap.as_purifier(lambda t: (t + 0.02 * torch.sin(300 * t)).clamp(0, 1)),
                      False, "masked or shattered"),
        "nan": (ap.as_purifier(lambda t: t.sqrt() * (t - t.detach()).sqrt()), False, "NaN"),
        "magnet": (create_purifier("magnet", "mnist").eval(), True, "16 of 16 pixels"),
        "median": (create_purifier("median"), True, "agrees"),
    }
    for name, (purifier, expected, evidence) in verdicts.items():
        props = probe_properties(purifier, x)
        assert props.differentiable.probed is expected, (name, props.differentiable)
        assert evidence in props.differentiable.evidence, (name, props.differentiable)
        assert props.stochastic.probed is False, name


def test_a_random_purifier_is_probed_stochastic_and_planned_with_eot(mnist_batch):
    x = mnist_batch[0][:8]
    vae = create_purifier("vae", "mnist").eval()
    state = torch.random.get_rng_state()
    props = probe_properties(vae, x)
    assert torch.equal(state, torch.random.get_rng_state())    # probing leaves the stream alone
    assert props.stochastic.declared and props.stochastic.probed
    assert props.differentiable.probed and props.replayable.value
    plan = plan_threat_models(props, fixed_randomness=True)
    assert plan.names == ["white-box+eot", "white-box+fixed"] and plan.n_eval == 10
    assert all(resolve_threat_model(name, vae) for name in plan.names)
    assert "stochastic (declared: two passes on the same 8 images differ" in plan.lines()[0]


def test_a_deterministic_plan_has_one_evaluation_and_says_why(mnist_batch):
    x = mnist_batch[0][:8]
    plan = plan_threat_models(probe_properties(create_purifier("jpeg", quality=50), x),
                              fixed_randomness=True)
    assert plan.names == ["bpda"] and plan.n_eval == 1
    assert "kornia differentiable JPEG" in plan.threat_models[0].reason
    assert plan.skipped[0].name == "bpda+fixed" and "deterministic" in plan.skipped[0].reason


def test_bpda_breaks_a_zero_gradient_rounding_purifier(tiny_lenet, mnist_batch):
    """Gradients through torch.round are zero: PGD through the purifier (white-box) only adds
    its random start; BPDA with the identity surrogate breaks the defense."""
    x, y = mnist_batch[0][:100], mnist_batch[1][:100]
    purifier = ap.as_purifier(rounding, name="round-to-quarters")
    props = probe_properties(purifier, x)
    assert not props.differentiable.value
    props.fill_unknown(purifier)
    plan = plan_threat_models(props)
    assert plan.names == ["bpda"] and "identity" in plan.threat_models[0].reason
    defended = DefendedClassifier(tiny_lenet, purifier)
    torch.manual_seed(0)
    through = build_attack("pgd", defended, 0.15, params={"steps": 10})(x, y)
    torch.manual_seed(0)
    bpda = build_attack("pgd", attack_module(resolve_threat_model("bpda", purifier), defended),
                        0.15, params={"steps": 10})(x, y)
    clean, masked, broken = (accuracy(defended, v, y) for v in (x, through, bpda))
    assert masked >= clean - 0.05, (clean, masked)
    assert broken <= masked - 0.5, (masked, broken)
