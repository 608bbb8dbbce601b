"""VAE and patch-wise VAE purifiers (Luo and Pfister): any image size with one model, borders,
overlap averaging against a per-patch reference, mix, sampling versus posterior mean, training,
checkpoints, and the accuracy-versus-perturbation analysis."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml

from aepurify.attacks import EOT, resolve_threat_model
from aepurify.errors import ConfigError, InputError, NotApplicableError
from aepurify.evaluation import evaluate
from aepurify.evaluation.perturbation_plot import claim_check, collect
from aepurify.evaluation.store import ResultRow
from aepurify.purifiers import PatchVAE, create_purifier, load_purifier
from aepurify.purifiers.patch_vae import patch_grid, random_patches
from aepurify.training import TrainSettings

QUICK = TrainSettings(epochs=1, batch_size=64, lr=3e-3, max_images=2000)


def _patch_vae(**params) -> PatchVAE:
    torch.manual_seed(0)
    purifier = create_purifier("patch-vae", in_channels=1, **params)
    assert isinstance(purifier, PatchVAE)
    return purifier.eval()


def test_patch_grid_covers_every_size():
    assert patch_grid(28, 16, 8) == (32, 2, 2)      # 0, 8, 16 on a padded 32 px side
    assert patch_grid(28, 16, 16) == (32, 2, 2)     # 0, 16
    assert patch_grid(32, 16, 8) == (32, 0, 0)      # divides: no padding
    assert patch_grid(224, 16, 8) == (224, 0, 0)
    assert patch_grid(7, 16, 8) == (16, 4, 5)       # smaller than a patch: one patch


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (224, 224), (7, 7), (20, 36)])
def test_one_model_purifies_any_size(size):
    purifier = _patch_vae(sample=False)
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        out = purifier(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def _reference(purifier: PatchVAE, x: torch.Tensor, index: int = 0) -> torch.Tensor:
    """A slow per-patch loop: pad by edge replication, reconstruct each patch, average."""
    p = purifier.patch_sizes[index]
    s = p if purifier.stride == "full" else p // 2
    h, w = x.shape[-2:]
    hp, top, bottom = patch_grid(h, p, s)
    wp, left, right = patch_grid(w, p, s)
    padded = torch.nn.functional.pad(x, (left, right, top, bottom), mode="replicate")
    total = torch.zeros_like(padded)
    count = torch.zeros_like(padded)
    for i in range(0, hp - p + 1, s):
        for j in range(0, wp - p + 1, s):
            patch = padded[..., i:i + p, j:j + p]
            total[..., i:i + p, j:j + p] += purifier.reconstruct(purifier.coders[index], patch)
            count[..., i:i + p, j:j + p] += 1
    return (total / count)[..., top:top + h, left:left + w]


@pytest.mark.parametrize("stride,size", [("full", 32), ("half", 28), ("full", 28), ("half", 13)])
def test_batched_fold_equals_per_patch_reference(stride, size):
    purifier = _patch_vae(sample=False, stride=stride)
    x = torch.rand(3, 1, size, size)
    with torch.no_grad():
        assert torch.allclose(purifier(x), _reference(purifier, x), atol=1e-5)


def test_mix_averages_the_patch_sizes():
    purifier = _patch_vae(sample=False, patch_sizes=[8, 16])
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = (purifier.purify_size(x, 0) + purifier.purify_size(x, 1)) / 2
        assert torch.allclose(purifier(x), expected, atol=1e-6)
        assert not torch.allclose(purifier.purify_size(x, 0), purifier.purify_size(x, 1))


def test_smoothing_lowers_total_variation():
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        plain = _patch_vae(sample=False)(x)
        smooth = _patch_vae(sample=False, smooth=1.0)(x)

    def tv(img):
        return float((img[..., 1:, :] - img[..., :-1, :]).abs().mean()
                     + (img[..., :, 1:] - img[..., :, :-1]).abs().mean())

    assert tv(smooth) < tv(plain)


@pytest.mark.parametrize("name", ["vae", "patch-vae"])
def test_sampling_is_random_and_the_posterior_mean_is_not(name, mnist_batch):
    x = mnist_batch[0][:8]
    torch.manual_seed(0)
    sampling = create_purifier(name, "mnist").eval()
    mean = create_purifier(name, "mnist", sample=False).eval()
    mean.load_state_dict(sampling.state_dict())
    with torch.no_grad():
        assert sampling.stochastic and not torch.equal(sampling(x), sampling(x))
        assert not mean.stochastic and torch.equal(mean(x), mean(x))
    assert resolve_threat_model("white-box+eot", sampling, 3).eot_samples == 3
    assert resolve_threat_model("white-box+eot", sampling).eot_samples == \
        sampling.default_eot_samples
    with pytest.raises(NotApplicableError, match="deterministic"):
        resolve_threat_model("white-box+eot", mean)


def test_white_box_eot_gradients_flow_through_the_patches(tiny_lenet, mnist_batch):
    from aepurify.purifiers import DefendedClassifier

    x = mnist_batch[0][:4].clone().requires_grad_(True)
    y = mnist_batch[1][:4]
    model = EOT(DefendedClassifier(tiny_lenet, _patch_vae()), samples=3)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_shared_posterior_gives_the_draws_of_repeated_input(mnist_batch):
    """purify_from_shared(shared_part(x), r) equals forward(x.repeat(r)) from the same
    generator state: the same latent draws in the same order (mix of two patch sizes)."""
    x = mnist_batch[0][:3]
    pur = _patch_vae(patch_sizes=[8, 16])
    with torch.no_grad():
        torch.manual_seed(5)
        repeated = pur(x.repeat(4, 1, 1, 1))
        torch.manual_seed(5)
        shared = pur.shared_part(x)
        assert sorted(shared) == ["logvar_16", "logvar_8", "mu_16", "mu_8"]
        drawn = pur.purify_from_shared(x, shared, 4)
    assert drawn.shape == (12, 1, 28, 28)
    assert torch.allclose(drawn, repeated, atol=1e-5)
    with pytest.raises(InputError):
        pur.shared_part(x * 2)


@pytest.mark.parametrize("budget", [None, 1])  # one call for all draws; one draw per call,
def test_eot_encodes_once_with_the_same_logits_and_gradient(tiny_lenet, mnist_batch, budget,
                                                            monkeypatch):
    """EOT over a patch VAE encodes the patches once (the posterior is shared by the draws)
    and gives the logits and gradient of running the whole purifier per draw, also when the
    chunks are recomputed in the backward pass (budget 1 with a graph budget of 0)."""
    from aepurify.attacks import threat_models
    from aepurify.purifiers import DefendedClassifier

    if budget == 1:
        monkeypatch.setattr(threat_models, "EOT_GRAPH_PIXELS", 0)
    x, y = mnist_batch[0][:4], mnist_batch[1][:4]
    pur = _patch_vae()
    defended = DefendedClassifier(tiny_lenet, pur)
    calls = []
    encode = pur.coders[0].encode
    monkeypatch.setattr(pur.coders[0], "encode", lambda h: calls.append(1) or encode(h))

    class Plain(torch.nn.Module):  # not a DefendedClassifier: the whole purifier per draw
        def forward(self, x):
            return defended(x)

    results = []
    for module in (Plain(), defended):
        torch.manual_seed(0)
        calls.clear()
        xg = x.clone().requires_grad_(True)
        out = EOT(module, samples=5, max_pixels=budget)(xg)
        torch.nn.functional.cross_entropy(out, y).backward()
        results.append((out.detach(), xg.grad, len(calls)))
    (out_a, grad_a, calls_a), (out_b, grad_b, calls_b) = results
    # whole purifier per draw: one call for all 5 draws, or 5 chunks each run twice (recomputed)
    assert calls_b == 1 and calls_a == (10 if budget == 1 else 1)
    assert torch.allclose(out_a, out_b, atol=1e-5)
    assert torch.allclose(grad_a, grad_b, rtol=1e-3, atol=1e-6)
    assert float(grad_b.abs().sum()) > 0


def test_vae_layouts_and_sizes():
    mnist = create_purifier("vae", "mnist")
    assert mnist.layout == "mnist" and mnist.net.to_mu.out_features == 256
    cifar = create_purifier("vae", "cifar10")
    assert cifar.layout == "cifar10" and cifar.net.to_mu.out_features == 1024
    with torch.no_grad():
        assert cifar.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(InputError, match="patch-vae purifies any size"):
        mnist(torch.rand(2, 1, 32, 32))


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="multiples of 4"):
        create_purifier("patch-vae", patch_sizes=[10])
    with pytest.raises(ConfigError, match="stride"):
        create_purifier("patch-vae", stride="third")
    with pytest.raises(ConfigError, match="layout"):
        create_purifier("vae", layout="imagenet")
    with pytest.raises(ConfigError, match="recon_loss"):
        create_purifier("vae", recon_loss="l1")


def test_random_patches_are_crops_of_their_image():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    crops = random_patches(x, 8, per_image=5)
    assert crops.shape == (10, 1, 8, 8)
    for k, crop in enumerate(crops):
        img = x[k // 5, 0]
        r, c = divmod(int(crop[0, 0, 0] - img[0, 0]), 28)
        assert torch.equal(crop[0], img[r:r + 8, c:c + 8])


@pytest.mark.parametrize("name,params", [("vae", {}), ("patch-vae", {"patch_sizes": [8, 16]})])
def test_trains_and_round_trips(name, params, mnist_train, tmp_path):
    from aepurify.checkpoint import save_checkpoint

    torch.manual_seed(0)
    purifier = create_purifier(name, "mnist", sample=False, **params)
    x, _ = mnist_train.tensors(slice(0, 256))
    with torch.no_grad():
        before = float(((purifier(x) - x) ** 2).mean())
    settings = QUICK if name == "vae" else QUICK.model_copy(update={"extra":
                                                                    {"patches_per_image": 2}})
    metrics = purifier.fit(mnist_train, settings)
    purifier.eval()
    with torch.no_grad():
        after = float(((purifier(x) - x) ** 2).mean())
    assert after < 0.5 * before
    assert metrics["steps"] == 32
    save_checkpoint(purifier, tmp_path / "m", kind="purifier", name=name)
    loaded, _ = load_purifier(tmp_path / "m", name)
    assert torch.equal(loaded(x), purifier(x))


def test_unknown_training_option(mnist_train):
    purifier = create_purifier("patch-vae", "mnist")
    with pytest.raises(ConfigError, match="unknown train.extra option"):
        purifier.fit(mnist_train, QUICK.model_copy(update={"extra": {"patch_per_image": 2}}))


def _row(purifier, tm, attack, eps, correct, rel):
    correct = np.array(correct, dtype=bool)
    return ResultRow("mnist", "lenet", purifier, tm, attack, "linf", eps, len(correct),
                     float(correct.mean()), 0.0, correct=correct, details={"mean_rel_l2": rel})


def test_claim_check_and_worst_case_view():
    rows = [_row("none", "gray-box", "fgsm", 0.1, [1, 0, 1, 0], 0.1),
            _row("none", "gray-box", "fgsm", 0.2, [0, 0, 0, 0], 0.2),
            _row("vae", "gray-box", "fgsm", 0.1, [1, 1, 1, 1], 0.1),
            _row("vae", "gray-box", "fgsm", 0.2, [1, 1, 1, 0], 0.2),
            # per image: survives white-box+eot on images 2, 3 but gray-box fails image 3
            _row("vae", "white-box+eot", "fgsm", 0.2, [0, 0, 1, 1], 0.25),
            _row("jpeg-q10", "gray-box", "fgsm", 0.1, [1, 0, 1, 1], 0.1),
            _row("jpeg-q10", "gray-box", "fgsm", 0.2, [1, 1, 1, 1], 0.2),
            _row("jpeg-q50", "gray-box", "fgsm", 0.2, [1, 0, 0, 0], 0.2)]
    gray = collect(rows, "gray-box")
    assert gray[("vae", "fgsm")][0.2] == (0.2, 0.75, "gray-box", 4)
    worst = collect(rows, "worst-case")
    assert worst[("vae", "fgsm")][0.2] == (0.25, 0.25, "gray-box;white-box+eot", 4)
    assert worst[("vae", "fgsm")][0.1] == (0.1, 1.0, "gray-box", 4)
    assert worst[("none", "fgsm")][0.1][1] == 0.5
    [check] = claim_check(gray, "fgsm", ["vae"], ["jpeg-q10", "jpeg-q50"], 0.1, 0.3)
    assert check["total"] == 2 and check["held"] == 2 and check["holds"]
    assert check["points"][1]["best_baseline"] == "jpeg-q10"
    assert check["min_margin"] == pytest.approx(-0.25)
    [strict] = claim_check(gray, "fgsm", ["vae"], ["jpeg-q10"], 0.1, 0.0)
    assert strict["held"] == 1 and not strict["holds"]


def test_views_share_the_first_n_images():
    rows = [_row("vae", "gray-box", "fgsm", 0.1, [1, 1, 0, 0], 0.1),
            _row("vae", "white-box+eot", "fgsm", 0.1, [1, 0], 0.1),
            _row("jpeg-q10", "bpda", "fgsm", 0.1, [0, 1, 1, 1], 0.1)]
    worst = collect(rows, "worst-case")
    assert worst[("vae", "fgsm")][0.1][1:] == (0.5, "gray-box;white-box+eot", 2)
    assert worst[("jpeg-q10", "fgsm")][0.1][1:] == (0.5, "bpda", 2)
    assert collect(rows, "bpda")[("jpeg-q10", "fgsm")][0.1][1:] == (0.75, "bpda", 4)


def test_grid_rows_and_the_figure(tmp_path):
    quick = {"epochs": 1, "batch_size": 64, "lr": 3e-3, "max_images": 1000}
    config = {
        "dataset": "mnist", "n_test": 40, "batch_size": 40,
        "classifier": {"arch": "lenet", "train": {"epochs": 1, "batch_size": 64,
                                                  "max_images": 2000}},
        "purifiers": [
            {"name": "patch-vae", "train": quick, "eot_samples": 2,
             "threat_models": ["gray-box", "white-box+eot"]},
            {"name": "jpeg", "label": "jpeg-q10", "params": {"quality": 10},
             "threat_models": ["gray-box", "bpda"]},
            {"name": "jpeg", "label": "jpeg-q70", "params": {"quality": 70},
             "threat_models": ["gray-box", "bpda"]},
        ],
        "attacks": [{"name": "fgsm", "eps": [0.05, 0.1, 0.2]},
                    {"name": "bim", "label": "i-fgsm", "eps": [0.1], "params": {"steps": 2}}],
        "analyses": [{"name": "accuracy-vs-perturbation",
                      "params": {"compare": ["patch-vae"], "baselines": ["jpeg-q10", "jpeg-q70"],
                                 "views": ["gray-box", "worst-case"]}}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    evaluate(path, out)
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    tms = {r["threat_model"] for r in records if r["purifier"] == "patch-vae"}
    assert tms == {"none", "gray-box", "white-box+eot"}
    assert (out / "accuracy-vs-l2-gray-box.png").stat().st_size > 0
    assert (out / "accuracy-vs-l2-worst-case.png").stat().st_size > 0
    with open(out / "accuracy-vs-perturbation.csv") as f:
        points = list(csv.DictReader(f))
    worst = [p for p in points if p["view"] == "worst-case" and p["purifier"] == "jpeg-q10"]
    assert {p["threat_model"] for p in worst} == {"bpda;gray-box"} and len(worst) == 4
    report = (out / "report.md").read_text()
    assert "## Accuracy against perturbation size" in report
    assert "| lenet | gray-box | fgsm | patch-vae | 0.1 to 0.2 | " in report
