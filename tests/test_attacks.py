"""Threat models and attacks: BPDA passes the surrogate's gradient, EOT averages draws, attacks
respect their budgets and lower an undefended model's accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aepurify.attacks import (EOT, BPDAClassifier, attack_module, bpda_purify, build_attack,
                              parse_threat_model, resolve_threat_model)
from aepurify.attacks.threat_models import EOT_PIXELS_ACCELERATOR, EOT_PIXELS_CPU
from aepurify.errors import ConfigError, NotApplicableError
from aepurify.purifiers import DefendedClassifier, Purifier, create_purifier


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_bpda_forward_is_exact_and_backward_is_the_surrogate(tiny_lenet, mnist_batch):
    x = mnist_batch[0][:8]
    y = mnist_batch[1][:8]
    jpeg = create_purifier("jpeg", quality=30)
    bpda = BPDAClassifier(DefendedClassifier(tiny_lenet, jpeg))
    # forward: the real (Pillow) JPEG
    assert torch.allclose(bpda(x), tiny_lenet(jpeg(x)), atol=1e-5)
    # backward: through kornia's differentiable JPEG, evaluated at the real output
    xa = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(bpda(xa), y).backward()
    xb = x.clone().requires_grad_(True)
    approx = jpeg.surrogate(xb)
    at_exact = approx + (jpeg(x) - approx).detach()
    nn.functional.cross_entropy(tiny_lenet(at_exact), y).backward()
    assert xa.grad is not None and xa.grad.abs().sum() > 0
    assert torch.allclose(xa.grad, xb.grad, atol=1e-7)


def test_bpda_identity_surrogate_is_straight_through(mnist_batch):
    x = mnist_batch[0][:4].clone().requires_grad_(True)
    out = bpda_purify(create_purifier("bit-depth", bits=1), x)
    assert set(torch.unique(out.detach()).tolist()) <= {0.0, 1.0}
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


class _Noisy(Purifier):
    """A stochastic test purifier: adds noise of known scale."""

    stochastic = True
    default_eot_samples = 7

    def purify(self, x):
        return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)


class _RandomLogits(nn.Module):
    """Logits = first 10 pixels + fresh standard normal noise on every call."""

    def forward(self, x):
        return x.flatten(1)[:, :10] + torch.randn(x.shape[0], 10)


def test_eot_averages_logits_over_draws(mnist_batch):
    x = mnist_batch[0][:6]
    torch.manual_seed(0)
    got = EOT(_RandomLogits(), samples=5)(x)
    torch.manual_seed(0)
    noise = torch.randn(5 * 6, 10).view(5, 6, 10)  # the same draws, in the batched layout
    assert torch.allclose(got, (x.flatten(1)[:, :10] + noise).mean(0), atol=1e-6)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    chunked = EOT(linear, samples=50, max_pixels=32 * 784)  # several chunks of draws
    assert torch.allclose(chunked(x), linear(x), atol=1e-5)


class _CallSizes(nn.Module):
    """Records the batch size of every call; logits = first 10 pixels."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return x.flatten(1)[:, :10]


def test_eot_chunks_draws_by_pixels_on_cpu(mnist_batch):
    x = mnist_batch[0][:100]  # 100 x 1 x 28 x 28 = 78,400 pixel values per draw
    recorder = _CallSizes()
    out = EOT(recorder, samples=20)(x)  # max_pixels None: the CPU budget
    per_call = EOT_PIXELS_CPU // x.numel()  # 10 draws of 100 images
    assert recorder.sizes == [per_call * 100] * (20 // per_call)
    assert max(recorder.sizes) * 784 <= EOT_PIXELS_CPU and sum(recorder.sizes) == 20 * 100
    assert torch.allclose(out, x.flatten(1)[:, :10], atol=1e-6)
    recorder.sizes.clear()
    EOT(recorder, samples=20, max_pixels=EOT_PIXELS_ACCELERATOR)(x)
    assert recorder.sizes == [2000]  # all draws in one call
    # the budget counts pixels, not images: 224 px RGB images (49x the pixels of 3x32x32 ones)
    # go 5 per call on a CPU where 3x32x32 ones go 256
    recorder.sizes.clear()
    EOT(recorder, samples=12)(torch.rand(1, 3, 224, 224))
    assert recorder.sizes == [5, 5, 2]
    recorder.sizes.clear()
    EOT(recorder, samples=300)(torch.rand(1, 3, 32, 32))
    assert recorder.sizes == [256, 44]
    recorder.sizes.clear()
    EOT(recorder, samples=3)(torch.rand(EOT_PIXELS_CPU // 784 + 1, 1, 28, 28))
    assert recorder.sizes == [EOT_PIXELS_CPU // 784 + 1] * 3  # at least one draw per call
    with pytest.raises(ConfigError, match="max_pixels"):
        EOT(recorder, samples=3, max_pixels=0)


class _CountedLinear(nn.Module):
    """Squared linear logits of 3x32x32 images plus optional input noise; counts its calls."""

    def __init__(self, noise: float):
        super().__init__()
        self.calls, self.noise = 0, noise
        self.lin = nn.Linear(3 * 32 * 32, 4)

    def forward(self, x):
        self.calls += 1
        if self.noise:  # without noise it draws nothing, as a classifier
            x = x + self.noise * torch.randn_like(x)
        return self.lin(x.flatten(1)) ** 2


def test_eot_recomputes_chunks_past_the_graph_budget_with_the_same_draws():
    """Past EOT_GRAPH_PIXELS the chunks are recomputed in the backward pass (bounded memory),
    with the random state replayed: the same logits and the same gradient as keeping every
    graph, and the module runs once more per chunk."""
    from aepurify.attacks.threat_models import EOT_GRAPH_PIXELS

    net = _CountedLinear(noise=0.1)
    x = torch.rand(2, 3, 32, 32)
    samples = EOT_GRAPH_PIXELS // x.numel() + 2  # just past the graph budget
    grads, outs = [], []
    for budget in (EOT_GRAPH_PIXELS * 4, EOT_PIXELS_CPU):  # one call; chunks, recomputed
        torch.manual_seed(0)
        net.calls = 0
        xg = x.clone().requires_grad_(True)
        out = EOT(net, samples, max_pixels=budget)(xg)
        (g,) = torch.autograd.grad(out.sum(), xg)
        outs.append(out.detach())
        grads.append(g)
    chunks = -(-samples // (EOT_PIXELS_CPU // x.numel()))
    assert net.calls == 2 * chunks  # each chunk once forward, once in the backward pass
    assert torch.allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_bpda_eot_past_the_graph_budget_purifies_each_draw_once():
    """Under bpda+eot past EOT_GRAPH_PIXELS the real purifier (random, and costly for APuDAE)
    runs once per chunk; only the surrogate and the classifier are recomputed in the backward
    pass. Logits and gradient equal those of keeping every graph in one call."""
    from aepurify.attacks.threat_models import EOT_GRAPH_PIXELS

    class CountedNoisy(_Noisy):
        calls = 0

        def purify(self, x):
            CountedNoisy.calls += 1
            return super().purify(x)

    clf = _CountedLinear(noise=0.0)
    bpda = BPDAClassifier(DefendedClassifier(clf, CountedNoisy(3)))
    x = torch.rand(2, 3, 32, 32)
    samples = EOT_GRAPH_PIXELS // x.numel() + 2  # just past the graph budget
    chunks = -(-samples // (EOT_PIXELS_CPU // x.numel()))
    grads, outs = [], []
    for budget in (EOT_GRAPH_PIXELS * 4, EOT_PIXELS_CPU):  # one call; chunks, recomputed
        torch.manual_seed(0)
        CountedNoisy.calls, clf.calls = 0, 0
        xg = x.clone().requires_grad_(True)
        out = EOT(bpda, samples, max_pixels=budget)(xg)
        (g,) = torch.autograd.grad(out.sum(), xg)
        outs.append(out.detach())
        grads.append(g)
    assert CountedNoisy.calls == chunks  # purified once per chunk, never in the backward pass
    assert clf.calls == 2 * chunks  # the classifier's graph is rebuilt in the backward pass
    assert torch.allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)
    assert grads[1].abs().sum() > 0


def test_attack_module_takes_the_eot_pixel_budget(tiny_lenet, mnist_batch):
    defended = DefendedClassifier(tiny_lenet, _Noisy())
    tm = resolve_threat_model("white-box+eot", defended.purifier, eot_samples=4)
    module = attack_module(tm, defended, eot_pixels=2 * 784)
    recorder = _CallSizes()
    module.module = recorder
    module(mnist_batch[0][:1])
    assert module.max_pixels == 2 * 784 and recorder.sizes == [2, 2]


def test_eot_threat_model_on_a_stochastic_purifier(tiny_lenet, mnist_batch):
    defended = DefendedClassifier(tiny_lenet, _Noisy())
    tm = resolve_threat_model("white-box+eot", defended.purifier)
    assert tm.eot and tm.eot_samples == 7 and tm.name == "white-box+eot"
    assert resolve_threat_model("bpda+eot", defended.purifier, eot_samples=3).eot_samples == 3
    module = attack_module(tm, defended)
    assert isinstance(module, EOT) and module.samples == 7
    assert module(mnist_batch[0][:4]).shape == (4, 10)


def test_threat_model_parsing_and_applicability():
    assert parse_threat_model("bpda+eot") == ("bpda", True)
    assert parse_threat_model("eot") == ("", True)
    with pytest.raises(ConfigError, match="unknown threat model"):
        parse_threat_model("oracle")
    with pytest.raises(ConfigError, match="combine it with white-box, bpda, black-box or detector-aware"):
        parse_threat_model("gray-box+eot")
    jpeg = create_purifier("jpeg")
    with pytest.raises(NotApplicableError, match="not differentiable"):
        resolve_threat_model("white-box", jpeg)
    with pytest.raises(NotApplicableError, match="deterministic"):
        resolve_threat_model("bpda+eot", jpeg)
    assert resolve_threat_model("eot", _Noisy()).name == "white-box+eot"


def test_gray_box_attacks_the_bare_classifier(tiny_lenet):
    defended = DefendedClassifier(tiny_lenet, create_purifier("jpeg"))
    assert attack_module(resolve_threat_model("gray-box", defended.purifier), defended) is tiny_lenet
    with pytest.raises(ConfigError, match="source"):
        attack_module(resolve_threat_model("transfer", defended.purifier), defended)


@pytest.mark.parametrize("name,norm,eps", [("fgsm", "linf", 0.3), ("pgd", "linf", 0.3),
                                           ("fgsm", "l2", 2.0), ("pgd", "l2", 2.0)])
def test_attacks_lower_undefended_accuracy_within_budget(tiny_lenet, mnist_batch, name, norm, eps):
    x, y = mnist_batch
    torch.manual_seed(0)
    attack = build_attack(name, tiny_lenet, eps=eps, norm=norm, params={"steps": 10}
                          if name == "pgd" else {})
    x_adv = attack(x, y)
    clean, robust = _acc(tiny_lenet, x, y), _acc(tiny_lenet, x_adv, y)
    assert clean > 0.8
    assert robust < clean - 0.3
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5


def test_pgd_beats_fgsm(tiny_lenet, mnist_batch):
    x, y = mnist_batch
    torch.manual_seed(0)
    fgsm = _acc(tiny_lenet, build_attack("fgsm", tiny_lenet, 0.15)(x, y), y)
    pgd = _acc(tiny_lenet, build_attack("pgd", tiny_lenet, 0.15, params={"steps": 20})(x, y), y)
    assert pgd <= fgsm


def test_attack_errors(tiny_lenet):
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'"):
        build_attack("pgdd", tiny_lenet, 0.1)
    with pytest.raises(ConfigError, match="unknown norm"):
        build_attack("pgd", tiny_lenet, 0.1, norm="l1")
    with pytest.raises(ConfigError, match="bad parameters for attack 'pgd'"):
        build_attack("pgd", tiny_lenet, 0.1, params={"stepz": 3})
