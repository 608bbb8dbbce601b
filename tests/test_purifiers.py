"""The purifier contract: shape, [0, 1] range, declared determinism, input validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from aepurify.errors import CheckpointError, ConfigError, InputError
from aepurify.purifiers import (PURIFIERS, DefendedClassifier, create_purifier, load_purifier,
                                purifier_class)
from aepurify.training import TrainSettings

ALL = PURIFIERS.names()


def _make(name: str, channels: int = 1):
    torch.manual_seed(0)
    return create_purifier(name, in_channels=channels).eval()


@pytest.mark.parametrize("name", ALL)
def test_contract_shape_range_and_determinism(name, mnist_batch):
    x = mnist_batch[0][:16]
    purifier = _make(name)
    with torch.no_grad():
        out1, out2 = purifier(x), purifier(x)
    assert out1.shape == x.shape and out1.dtype == x.dtype
    assert float(out1.min()) >= 0.0 and float(out1.max()) <= 1.0
    if purifier.stochastic:
        assert not torch.equal(out1, out2)
    else:
        assert torch.equal(out1, out2)


@pytest.mark.parametrize("name", ALL)
def test_surrogate_is_differentiable(name, mnist_batch):
    x = mnist_batch[0][:4].clone().requires_grad_(True)
    purifier = _make(name)
    out = purifier.surrogate(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_rejects_bad_input(name):
    purifier = _make(name)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        purifier(torch.full((2, 1, 28, 28), 1.5))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        purifier(torch.rand(1, 28, 28))
    with pytest.raises(InputError, match="floating point"):
        purifier(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(InputError, match="channel"):
        purifier(torch.rand(2, 3, 28, 28))
    with pytest.raises(InputError, match="values"):
        purifier(torch.full((2, 1, 28, 28), float("nan")))


def test_jpeg_forward_is_real_pillow_jpeg(mnist_batch):
    x = mnist_batch[0][:3]
    out = create_purifier("jpeg", quality=23)(x)
    for i in range(3):
        img = Image.fromarray((x[i, 0] * 255).round().byte().numpy(), "L")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=23)
        expected = np.asarray(Image.open(buf)).astype(np.float32) / 255
        assert np.array_equal(out[i, 0].numpy(), expected)
    assert not torch.equal(out, x)


def test_jpeg_surrogate_tracks_the_real_codec(mnist_batch):
    x = mnist_batch[0][:16]
    jpeg = create_purifier("jpeg", quality=50)
    gap_surrogate = (jpeg.surrogate(x) - jpeg(x)).abs().mean()
    gap_identity = (x - jpeg(x)).abs().mean()
    assert gap_surrogate < gap_identity


def test_jpeg_colour_images():
    x = torch.rand(2, 3, 32, 32)
    jpeg = create_purifier("jpeg", quality=70, in_channels=3)
    assert jpeg(x).shape == x.shape and jpeg.surrogate(x).shape == x.shape


def test_bit_depth_levels():
    x = torch.linspace(0, 1, 256).view(1, 1, 16, 16)
    out = create_purifier("bit-depth", bits=2)(x)
    assert torch.allclose(torch.unique(out), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))


def test_bad_transform_parameters():
    with pytest.raises(ConfigError, match="quality"):
        create_purifier("jpeg", quality=0)
    with pytest.raises(ConfigError, match="odd"):
        create_purifier("median", kernel_size=2)
    with pytest.raises(ConfigError, match="unknown purifier 'jpg'"):
        create_purifier("jpg")
    with pytest.raises(ConfigError, match="bad parameters for purifier 'jpeg'"):
        create_purifier("jpeg", qualty=50)


def test_defended_classifier_composes(tiny_lenet, mnist_batch):
    x = mnist_batch[0][:8]
    jpeg = create_purifier("jpeg", quality=50)
    defended = DefendedClassifier(tiny_lenet, jpeg)
    assert torch.equal(defended(x), tiny_lenet(jpeg(x)))
    with pytest.raises(InputError):
        defended(x * 3)


def test_magnet_trains_and_round_trips(mnist_train, tmp_path):
    from aepurify.checkpoint import save_checkpoint

    torch.manual_seed(0)
    magnet = create_purifier("magnet", "mnist")
    x, _ = mnist_train.tensors(slice(0, 256))
    with torch.no_grad():
        before = float(((magnet(x) - x) ** 2).mean())
    magnet.fit(mnist_train, TrainSettings(epochs=1, batch_size=64, lr=0.01, max_images=2000))
    magnet.eval()
    with torch.no_grad():
        after = float(((magnet(x) - x) ** 2).mean())
    assert after < 0.5 * before
    save_checkpoint(magnet, tmp_path / "m", kind="purifier", name="magnet")
    loaded, _ = load_purifier(tmp_path / "m", "magnet")
    assert torch.equal(loaded(x), magnet(x))
    with pytest.raises(CheckpointError, match="holds a purifier"):
        from aepurify.models import load_classifier

        load_classifier(tmp_path / "m")


def test_residual_magnet_starts_at_the_identity_and_learns_a_correction(mnist_train):
    torch.manual_seed(0)
    magnet = create_purifier("magnet", "mnist", pool=False, residual=True, noise_std=0.2)
    x, _ = mnist_train.tensors(slice(0, 64))
    with torch.no_grad():
        assert torch.equal(magnet.eval()(x), x)   # zero-initialised correction
        noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
        before = float(((noisy - x) ** 2).mean())
    magnet.fit(mnist_train, TrainSettings(epochs=1, batch_size=64, lr=0.01, max_images=1000))
    with torch.no_grad():
        out = magnet.eval()(noisy)
    assert float(((out - x) ** 2).mean()) < 0.8 * before   # it denoises
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert magnet.hparams["residual"] is True


def test_declared_properties():
    assert purifier_class("jpeg").differentiable is False
    assert purifier_class("bit-depth").differentiable is False
    assert purifier_class("magnet").differentiable is True
    assert purifier_class("magnet").trainable is True
