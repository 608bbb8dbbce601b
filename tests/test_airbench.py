"""airbench (Jordan 2024): the architecture, its whitening and dirac initialisations, test-time
flips inside forward, the training recipe over the shared loop, and its default settings."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from aepurify.data import ImageDataset
from aepurify.errors import ConfigError
from aepurify.models import create_classifier, default_train
from aepurify.training import TrainSettings, fit_classifier, run_minibatches
from aepurify.training.airbench import triangle
from aepurify.training.loops import LoopHooks
from aepurify.training.settings import with_defaults

from .test_cli import run_cli


def synthetic(n: int, seed: int = 0) -> ImageDataset:
    """Learnable 3x32x32 uint8 images: the class sets the mean colour, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    base = (labels.float() / 9 * 200 + 20).view(-1, 1, 1, 1)
    images = (base + 30 * torch.randn(n, 3, 32, 32, generator=gen)).clamp(0, 255)
    return ImageDataset("cifar10", "train", images.to(torch.uint8), labels, tuple("0123456789"),
                        "synthetic")


def test_airbench94_has_the_papers_size_and_airbench95_is_wider():
    small = create_classifier("airbench94", "cifar10")
    assert sum(p.numel() for p in small.parameters()) == pytest.approx(1.97e6, rel=0.01)
    big = create_classifier("airbench95", "cifar10")
    assert big.hparams["widths"] == [128, 384, 384]
    assert sum(p.numel() for p in big.parameters()) > 2 * sum(p.numel()
                                                               for p in small.parameters())
    assert not small.whitening.weight.requires_grad  # frozen, set from data
    bns = [m for m in small.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)


def test_convolutions_start_as_identity_on_their_input_channels():
    net = create_classifier("airbench94", "cifar10")
    conv = net.body[2][0]  # first conv of the first group: 24 -> 64 channels
    x = torch.randn(2, 24, 8, 8)
    assert torch.allclose(conv(x)[:, :24], x, atol=1e-6)


def test_whitening_decorrelates_the_training_patches():
    gen = torch.Generator().manual_seed(0)
    # correlated pixels: a smooth image plus a little noise
    x = F.interpolate(torch.rand(64, 3, 8, 8, generator=gen), size=32, mode="bilinear")
    x = (0.8 * x + 0.2 * torch.rand(64, 3, 32, 32, generator=gen)).clamp(0, 1)
    net = create_classifier("airbench94", "cifar10")
    net.init_whitening(x, eps=0.0)
    conv = net.whitening
    with torch.no_grad():
        out = F.conv2d(net.normalize(x), conv.weight[:12])  # the positive half, no bias
    flat = out.permute(1, 0, 2, 3).reshape(12, -1).double()
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.equal(conv.weight[12:], -conv.weight[:12])


def test_eval_forward_averages_the_image_and_its_mirror():
    torch.manual_seed(0)
    net = create_classifier("airbench94", "cifar10").eval()
    x = torch.rand(3, 3, 32, 32)
    tta = net(x)
    net.tta = "none"
    want = 0.5 * (net(x) + net(x.flip(-1)))
    assert torch.allclose(tta, want, atol=1e-5)
    net.train()
    assert net(x).shape == (3, 10)  # training mode: one pass, no mirror


def test_flip_translate_averages_the_flip_averages_of_three_shifts():
    """airbench's level-2 test-time augmentation, airbench95's default: half the flip average
    of the image, a quarter each of those of the image moved one pixel (reflect padding) down-
    right and up-left; gradients flow through all six views."""
    torch.manual_seed(0)
    net = create_classifier("airbench95", "cifar10").eval()
    assert net.tta == "flip-translate"
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = net(x)
    net.tta = "flip"
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., 2:, 2:], padded[..., :32, :32]
    assert torch.equal(up_left[..., 0, 0], x[..., 1, 1])
    assert torch.equal(down_right[..., 1, 1], x[..., 0, 0])
    want = 0.5 * net(x) + 0.25 * (net(up_left) + net(down_right))
    assert torch.allclose(out, want, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="tta"):
        create_classifier("airbench94", "cifar10", tta="translate")


def test_triangle_schedule():
    f = triangle(100, 0.2, 0.07, 0.23)
    assert f.shape == (101,)
    assert f[0] == pytest.approx(0.2) and f[23] == pytest.approx(1.0)
    assert f[100] == pytest.approx(0.07) and int(f.argmax()) == 23


def test_alternating_flips_show_each_image_both_ways_in_two_epochs():
    n = 16
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.float32).view(n, 3, 4, 4) % 251
    data = ImageDataset("cifar10", "train", images.to(torch.uint8), torch.arange(n),
                        tuple(str(i) for i in range(n)), "test")
    seen: dict[int, list[bool]] = {}
    weight = torch.nn.Parameter(torch.zeros(()))

    def loss(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        for xi, i in zip(x, index.tolist()):
            original = images[i] / 255.0
            flipped = bool(torch.allclose(xi, original.flip(-1)))
            assert flipped or torch.allclose(xi, original)
            seen.setdefault(i, []).append(flipped)
        return weight * 0 + x.mean()

    settings = TrainSettings(epochs=4, batch_size=4, augment=True, seed=3, precision="fp32")
    run_minibatches([weight], loss, data, settings, desc="flips",
                    hooks=LoopHooks(padding=0, alternate_flips=True))
    assert len(seen) == n
    for flips in seen.values():
        assert flips[0] != flips[1] and flips[1] != flips[2] and flips[2] != flips[3]
    assert {flips[0] for flips in seen.values()} == {True, False}  # a coin in epoch 0


def test_recipe_trains_and_freezes_the_whitening_bias():
    data = synthetic(512)
    torch.manual_seed(0)
    net = create_classifier("airbench94", "cifar10")
    settings = with_defaults(TrainSettings(epochs=4, batch_size=64, precision="fp32",
                                           extra={"whiten_bias_epochs": 0}),
                             default_train("airbench94"))
    assert settings.lr == 11.5 and settings.optimizer == "sgd" and settings.augment
    bias = net.whitening.bias.detach().clone()
    metrics = fit_classifier(net, data, settings)
    assert metrics["recipe"] == "airbench" and metrics["steps"] == 32
    assert torch.equal(net.whitening.bias, bias)  # a zero rate from the start
    assert not net.training
    test = synthetic(256, seed=1)
    with torch.no_grad():
        acc = float((net(test.images.float() / 255).argmax(1) == test.labels).float().mean())
    assert acc > 0.6  # learnt the colours (chance: 0.1)


def test_recipe_rejects_unknown_options():
    from aepurify.errors import ConfigError

    net = create_classifier("airbench94", "cifar10")
    with pytest.raises(ConfigError, match="unknown airbench training option"):
        fit_classifier(net, synthetic(32), TrainSettings(extra={"momentun": 0.9}))


def test_architecture_defaults_fill_what_a_config_leaves_out():
    assert with_defaults(None, default_train("airbench94")).epochs == 10
    given = TrainSettings(epochs=3)
    merged = with_defaults(given, default_train("airbench95"))
    assert (merged.epochs, merged.lr, merged.batch_size) == (3, 10.0, 1024)
    assert with_defaults(None, default_train("airbench95")).epochs == 18
    assert with_defaults(given, default_train("lenet")) is given


def test_cli_trains_airbench_with_its_recipe(tmp_path):
    import json

    out = tmp_path / "ab"
    proc = run_cli("train", "classifier", "--dataset", "mnist", "--arch", "airbench94",
                   "--epochs", "1", "--batch-size", "64", "--max-images", "128",
                   "--precision", "fp32", "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    # the recipe's settings where the command line gives none, the command line's where it does
    assert config["train"]["lr"] == 11.5 and config["train"]["augment"] is True
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 64
    assert config["metrics"]["recipe"] == "airbench"
