"""The threat-model wrappers keep the wrapped models in eval mode: torchattacks restores the mode
of the module it attacks, and a wrapper in train mode would switch a BatchNorm purifier to batch
statistics (and let the next forward pass overwrite its running ones). Follows the README's
Python API snippet with a BatchNorm purifier (feature-dae's conv autoencoder)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aepurify as ap
from aepurify.attacks import EOT, BPDAClassifier, attack_module, build_attack
from aepurify.attacks.threat_models import ThreatModel


def _modes(*nets: nn.Module) -> set[bool]:
    return {m.training for net in nets for m in net.modules()}


def _bn_state(net: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in net.modules() if isinstance(m, nn.BatchNorm2d)
            for b in m.buffers()]


@pytest.mark.parametrize("tm", [ThreatModel("white-box"), ThreatModel("bpda"),
                                ThreatModel("white-box", eot=True, eot_samples=2)],
                         ids=lambda t: t.name)
def test_readme_flow_keeps_a_batchnorm_purifier_in_eval_mode(tiny_lenet, mnist_batch, tm):
    x, y = mnist_batch[0][:64], mnist_batch[1][:64]
    purifier = ap.create_purifier("feature-dae", "mnist")  # BatchNorm; created in train mode
    assert any(isinstance(m, nn.BatchNorm2d) for m in purifier.modules())
    with torch.no_grad():  # running statistics that differ from the batch's own
        for m in purifier.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(0.2, 0.4)
                m.running_var.uniform_(2.0, 3.0)
    defended = ap.DefendedClassifier(tiny_lenet.eval(), purifier)
    assert _modes(defended) == {False}
    before = _bn_state(purifier)
    with torch.no_grad():
        expected = defended(x)
    x_adv = build_attack("pgd", attack_module(tm, defended), eps=0.2, norm="linf",
                         params={"steps": 2})(x, y)
    assert x_adv.shape == x.shape
    assert _modes(purifier, tiny_lenet) == {False}
    with torch.no_grad():
        again = defended(x)  # the README's next line: evaluate on the defended classifier
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(purifier)))
    assert torch.equal(expected, again)


def test_train_on_a_wrapper_does_not_reach_the_wrapped_models(tiny_lenet):
    purifier = ap.create_purifier("feature-dae", "mnist")
    defended = ap.DefendedClassifier(tiny_lenet, purifier)
    for wrapper in (defended, BPDAClassifier(defended), EOT(defended, 2)):
        wrapper.train()  # what torchattacks' restore does to a module that was training
        assert wrapper.training and _modes(purifier, tiny_lenet) == {False}
        wrapper.eval()
        assert not wrapper.training
    purifier.train()  # a model switched on its own keeps its mode
    assert purifier.training
    purifier.eval()
