"""APuDAE: the REDNet DAE, training and calibration on held-out images, the four purification
modes, declared properties, exact gradients through the refinement, BPDA surrogates, S-BIM,
and the threat models in a grid run. Tiny DAEs on real MNIST, seconds in all."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from aepurify.attacks import resolve_threat_model
from aepurify.checkpoint import save_checkpoint
from aepurify.errors import ConfigError, NotApplicableError
from aepurify.purifiers import DefendedClassifier, create_purifier, load_purifier, purifier_class
from aepurify.purifiers.apudae import REDNet, SBIM
from aepurify.training import TrainSettings

TINY_DAE = {"layers": 2, "features": 8}


@pytest.fixture(scope="module")
def trained(mnist_train):
    """A REDNet-4 with 8 channels trained one epoch on 1,000 MNIST images, calibrated on the
    next 200 (held out), and those 1,200 images."""
    torch.manual_seed(0)
    data = mnist_train.take(1200)
    purifier = create_purifier("apudae", "mnist", **TINY_DAE, noise_std=0.2)
    metrics = purifier.fit(data, TrainSettings(epochs=1, batch_size=50, lr=0.01,
                                               extra={"calibration_images": 200}))
    return purifier.eval(), metrics, data


def _with_mode(purifier, **changes):
    """A copy of ``purifier`` (same weights and buffers) with other constructor arguments."""
    other = create_purifier("apudae", **{**purifier.hparams, **changes})
    other.load_state_dict(purifier.state_dict())
    return other.eval()


@pytest.mark.parametrize("size", [28, 27, 32, 15])
def test_rednet_keeps_the_shape_and_its_fast_eval_path_is_exact(size):
    torch.manual_seed(0)
    net = REDNet(in_channels=3, layers=5, features=4)
    net.train()
    net(torch.rand(8, 3, size, size))  # moves the BatchNorm running statistics
    net.eval()
    x = torch.rand(2, 3, size, size, requires_grad=True)
    fast = net(x)
    (fast_grad,) = torch.autograd.grad(fast.pow(2).sum(), x)
    net.training = True  # the plain module path, BatchNorm still in eval mode
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    plain = net(x)
    (plain_grad,) = torch.autograd.grad(plain.pow(2).sum(), x)
    assert fast.shape == x.shape
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast_grad, plain_grad, atol=1e-4)


def test_paper_size_rednet30_has_thirty_layers():
    net = REDNet(in_channels=3, layers=15, features=64)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 30 and net.n_skips == 7


def test_training_denoises_and_calibrates_on_held_out_images(trained):
    purifier, metrics, data = trained
    assert metrics["images"] == 1000 and metrics["calibration_images"] == 200
    held_out, _ = data.tensors(slice(1000, 1200))
    with torch.no_grad():
        r = purifier.reconstruction_error(held_out)
    assert float(purifier.mu) == pytest.approx(float(r.mean()), rel=1e-5)
    assert float(purifier.sigma) == pytest.approx(float(r.std()), rel=1e-5)
    assert float(purifier.calibrated) == 1.0
    # the DAE learned to denoise: far better than returning the noisy input
    noisy = (held_out + 0.2 * torch.randn_like(held_out)).clamp(0, 1)
    with torch.no_grad():
        dae_mse = float(((purifier.reconstruct(noisy) - held_out) ** 2).mean())
    assert dae_mse < 0.5 * float(((noisy - held_out) ** 2).mean())
    assert metrics["held_out_denoising_mse"] < 0.5 * 0.2 ** 2


def test_checkpoint_keeps_mu_sigma_and_the_purification(trained, tmp_path):
    purifier, _, data = trained
    save_checkpoint(purifier, tmp_path / "apudae", kind="purifier", name="apudae")
    loaded, _ = load_purifier(tmp_path / "apudae", "apudae")
    assert float(loaded.mu) == float(purifier.mu) and float(loaded.sigma) == float(purifier.sigma)
    x, _ = data.tensors(slice(0, 8))
    torch.manual_seed(3)
    a = purifier(x)
    torch.manual_seed(3)
    assert torch.equal(loaded(x), a)


def test_adaptive_mode_keeps_clean_images_and_purifies_perturbed_ones(trained, tiny_lenet,
                                                                     mnist_batch):
    purifier, _, _ = trained
    x = mnist_batch[0][:100]
    with torch.no_grad():
        out = purifier(x)
        # the classifier's decision on clean images rarely changes (the demo measures the
        # accuracy with a properly trained DAE)
        agree = (tiny_lenet(out).argmax(1) == tiny_lenet(x).argmax(1)).float().mean()
        noisy = (x + 0.3 * torch.randn_like(x).sign()).clamp(0, 1)
        refined = purifier(noisy)
        r_before = purifier.reconstruction_error(noisy)
        r_after = purifier.reconstruction_error(refined)
    assert float(agree) >= 0.95
    assert float((refined - noisy).abs().mean()) > 5 * float((out - x).abs().mean())
    assert float(r_after.mean()) < 0.8 * float(r_before.mean())


def test_modes_and_declared_properties(trained, mnist_batch):
    purifier, _, _ = trained
    x = mnist_batch[0][:16]
    assert purifier_class("apudae").stochastic and not purifier_class("apudae").differentiable
    assert purifier.stochastic and not purifier.differentiable
    for mode in ("direct", "simple", "adaptive-dist"):
        p = _with_mode(purifier, mode=mode)
        assert not p.stochastic and p.differentiable == (mode == "direct")
        with torch.no_grad():
            a, b = p(x), p(x)
        assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) <= float(a.max()) <= 1
    with torch.no_grad():
        assert torch.equal(_with_mode(purifier, mode="direct")(x), purifier.reconstruct(x))
    exact = _with_mode(purifier, exact_gradients=True)
    assert exact.differentiable and exact.stochastic
    assert resolve_threat_model("white-box+eot", exact, 2).eot_samples == 2
    with pytest.raises(NotApplicableError, match="not differentiable"):
        resolve_threat_model("white-box", purifier)
    with pytest.raises(ConfigError, match="unknown APuDAE mode 'fast'"):
        create_purifier("apudae", mode="fast")
    with pytest.raises(ConfigError, match="unknown APuDAE surrogate"):
        create_purifier("apudae", surrogate="jpeg")


def test_exact_gradients_match_finite_differences(trained):
    purifier, _, data = trained
    # noise off so that the refinement is a deterministic function of its input
    p = _with_mode(purifier, exact_gradients=True, noise=0.0, steps=3).double()
    x = data.tensors(slice(0, 2))[0].double()[:, :, 10:18, 10:18].clamp(0.05, 0.95)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(p, (x,), eps=1e-6, atol=1e-4, rtol=1e-3, fast_mode=True)
    # without exact gradients the refined image passes the identity gradient back
    q = _with_mode(purifier, noise=0.0).double()
    x2 = x.detach().clone().requires_grad_(True)
    q(x2).sum().backward()
    assert torch.equal(x2.grad, torch.ones_like(x2))


def test_cpu_refinement_skips_the_backward_pass_of_clean_looking_images_exactly(
        trained, mnist_batch, monkeypatch):
    purifier, _, _ = trained
    x = mnist_batch[0][:64].clone()
    x[32:] = (x[32:] + 0.3 * torch.randn_like(x[32:]).sign()).clamp(0, 1)  # half perturbed
    original = type(purifier)._error_and_gradient
    backward_rows = []

    def counting(self, images, flagged):
        r, g = original(self, images, flagged)
        backward_rows.append(int(flagged.sum()) if flagged is not None else images.shape[0])
        return r, g

    monkeypatch.setattr(type(purifier), "_error_and_gradient", counting)
    torch.manual_seed(0)
    sparse = purifier(x)
    sparse_rows, backward_rows[:] = list(backward_rows), []
    # the same refinement with every image through the backward pass at every step
    monkeypatch.setattr(type(purifier), "_error_and_gradient",
                        lambda self, images, flagged: counting(self, images, None))
    torch.manual_seed(0)
    dense = purifier(x)
    assert torch.allclose(sparse, dense, atol=1e-6)
    assert backward_rows == [64] * purifier.steps
    # the perturbed half is flagged from the first step, most clean images never
    assert 32 <= sparse_rows[0] and sparse_rows[-1] < 56


def test_refinement_runs_under_no_grad_and_bpda_uses_the_surrogate(trained, tiny_lenet,
                                                                    mnist_batch):
    from aepurify.attacks import bpda_purify

    purifier, _, _ = trained
    x = mnist_batch[0][:8]
    with torch.no_grad():
        assert purifier(x).shape == x.shape
    assert purifier.surrogate_name() == "identity" and torch.equal(purifier.surrogate(x), x)
    direct = _with_mode(purifier, surrogate="direct")
    assert direct.surrogate_name() == "apudae-direct"
    xr = x.clone().requires_grad_(True)
    out = bpda_purify(direct, xr)
    out.sum().backward()
    expected = torch.autograd.functional.vjp(direct.reconstruct, x, torch.ones_like(x))[1]
    assert torch.allclose(xr.grad, expected, atol=1e-6)


def test_sbim_stays_in_budget_fools_the_classifier_and_keeps_reconstruction_low(
        trained, tiny_lenet, mnist_batch):
    purifier, _, _ = trained
    x, y = mnist_batch[0][:100], mnist_batch[1][:100]
    defended = DefendedClassifier(tiny_lenet, purifier).eval()
    torch.manual_seed(0)
    attack = purifier.adaptive_attack("bim", defended, 0.3, "linf", targeted=None)
    assert isinstance(attack, SBIM) and not attack.random_start
    x_adv = attack(x, y)
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    with torch.no_grad():
        bare = (tiny_lenet(x_adv).argmax(1) == y).float().mean()
    assert float(bare) < 0.3
    # the reconstruction term alone pulls the image towards what the DAE reproduces
    only_recon = purifier.adaptive_attack("pgd", defended, 0.1, "linf", recon_weight=1.0)
    x_r = only_recon(x, y)
    with torch.no_grad():
        assert float(purifier.reconstruction_error(x_r).mean()) < float(
            purifier.reconstruction_error(x).mean())
    targets = SBIM(defended, purifier, 0.1)._targets(x, y)
    assert bool((targets != y).all())
    with pytest.raises(NotApplicableError, match="S-BIM"):
        purifier.adaptive_attack("fgsm", defended, 0.1, "linf")
    with pytest.raises(NotApplicableError, match="L-inf"):
        purifier.adaptive_attack("bim", defended, 0.1, "l2")
    with pytest.raises(ConfigError, match="bad S-BIM option"):
        purifier.adaptive_attack("bim", defended, 0.1, "linf", stepz=3)


def test_bad_training_options(mnist_train):
    p = create_purifier("apudae", "mnist", **TINY_DAE)
    with pytest.raises(ConfigError, match="unknown APuDAE training option"):
        p.fit(mnist_train.take(300), TrainSettings(extra={"calibration": 10}))
    with pytest.raises(ConfigError, match="calibration_images"):
        p.fit(mnist_train.take(300), TrainSettings(extra={"calibration_images": 300}))


def test_grid_rows_under_every_threat_model(tmp_path):
    from aepurify.evaluation import evaluate

    quick = {"epochs": 1, "batch_size": 64, "max_images": 1000}
    config = {
        "dataset": "mnist", "n_test": 20, "batch_size": 20,
        "classifier": {"arch": "lenet", "train": {**quick, "max_images": 2000}},
        "purifiers": [{"name": "apudae", "params": {**TINY_DAE, "steps": 3},
                       "train": {**quick, "lr": 0.01, "extra": {"calibration_images": 200}},
                       "threat_models": ["gray-box"], "eot_samples": 2}],
        "threat_models": ["gray-box"],
        "attacks": [{"name": "fgsm", "eps": [0.2]},
                    {"name": "pgd", "label": "pgd-2", "eps": [0.2], "params": {"steps": 2},
                     "purifiers": ["apudae"], "threat_models": ["bpda", "bpda+eot"]},
                    {"name": "bim", "label": "s-bim", "eps": [0.2], "params": {"steps": 2},
                     "purifiers": ["apudae"], "threat_models": ["adaptive"]},
                    # S-BIM covers L-inf only: planned as skipped with the reason, not a crash
                    {"name": "bim", "label": "bim-l2", "norm": "l2", "eps": [1.0],
                     "params": {"steps": 2}, "purifiers": ["apudae"],
                     "threat_models": ["adaptive"]}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    rows = evaluate(path, out).rows
    with open(out / "results.csv") as f:
        seen = {(r["purifier"], r["threat_model"], r["attack"]) for r in csv.DictReader(f)}
    assert {("apudae", "none", "none"), ("apudae", "gray-box", "fgsm"),
            ("apudae", "bpda", "pgd-2"), ("apudae", "bpda+eot", "pgd-2"),
            ("apudae", "adaptive", "s-bim")} <= seen
    assert ("apudae", "bpda", "fgsm") not in seen  # generic attacks: gray-box only
    assert ("apudae", "adaptive", "bim-l2") not in seen
    skipped = json.loads((out / "run.json").read_text())["skipped"]
    assert {"purifier": "apudae", "threat_model": "adaptive",
            "reason": "S-BIM is an L-inf attack; got norm 'l2'"} in skipped
    eot = next(r for r in rows if r.threat_model == "bpda+eot")
    assert eot.details["eot_samples"] == 2 and eot.details["surrogate"] == "identity"
