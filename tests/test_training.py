"""The training loop: the same results on a CPU as a plain PyTorch loop, the device-side
augmentation, precision and compile settings, the cache key, and no host sync per step."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from aepurify import precision as precision_module
from aepurify.models import create_classifier
from aepurify.training import TrainSettings, fit_classifier, get_classifier, run_minibatches
from aepurify.errors import ConfigError
from aepurify.training.augment import crop_flip, draw_crop_flip
from aepurify.utils import batches, seed_everything


def test_crop_flip_is_reflect_pad_then_crop_then_flip():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).view(2, 3, 6, 5)
    gen = torch.Generator().manual_seed(0)
    padded = F.pad(x, [2] * 4, mode="reflect")
    seen_flip = set()
    for _ in range(30):
        draw = draw_crop_flip(2, 2, gen, "cpu")
        out = crop_flip(x, draw, 2)
        assert out.shape == x.shape
        for i in range(2):
            top, left = draw.offsets[i].tolist()
            want = padded[i, :, top:top + 6, left:left + 5]
            want = want.flip(-1) if draw.flips[i] else want
            assert torch.equal(out[i], want)
            seen_flip.add(bool(draw.flips[i]))
    assert seen_flip == {True, False}
    assert crop_flip(x.to(torch.uint8), draw, 2).dtype == torch.uint8  # no float copy needed


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_loop_is_bit_identical_to_a_plain_pytorch_loop(mnist_train, precision):
    """What the loop computes on a CPU is the textbook loop's: the same weights, bit for bit
    (Adam, cosine, seeded batch order); in bf16, the textbook fast loop's (channels-last
    weights and images, bf16 autocast)."""
    settings = TrainSettings(epochs=2, batch_size=64, lr=0.003, schedule="cosine",
                             max_images=320, seed=5, precision=precision)
    seed_everything(0)
    ours = create_classifier("lenet", "mnist")
    metrics = fit_classifier(ours, mnist_train, settings)

    seed_everything(0)
    plain = create_classifier("lenet", "mnist").train()
    fast = precision == "bf16"
    fmt = torch.channels_last if fast else torch.contiguous_format
    plain.to(memory_format=fmt)
    data = mnist_train.take(320)
    opt = torch.optim.Adam(plain.parameters(), lr=0.003)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        order = torch.randperm(320, generator=gen)
        for sl in batches(320, 64):
            idx = order[sl]
            x = data.images[idx].contiguous(memory_format=fmt).float().div_(255.0)
            with torch.autocast("cpu", torch.bfloat16, enabled=fast):
                loss = F.cross_entropy(plain(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    for (name, a), b in zip(ours.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert metrics["final_loss"] == float(loss.detach()) and metrics["precision"] == precision
    assert metrics["steps"] == 10 and not ours.training
    assert all(p.is_contiguous() for p in ours.parameters())  # NCHW again after training


def test_precision_auto_resolves_by_hardware(monkeypatch):
    monkeypatch.delenv(precision_module.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision_module, "cpu_has_bf16_units", lambda: True)
    assert TrainSettings().resolved("cpu").precision == "bf16"
    assert TrainSettings(precision="auto").resolved("cpu").precision == "bf16"
    assert precision_module.resolve_precision("auto", "mps") == "fp32"
    monkeypatch.setenv(precision_module.CPU_BF16_ENV, "0")  # asked to keep fp32
    assert TrainSettings().resolved("cpu").precision == "fp32"
    monkeypatch.setenv(precision_module.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="AEPURIFY_CPU_BF16"):
        TrainSettings().resolved("cpu")
    monkeypatch.delenv(precision_module.CPU_BF16_ENV)
    monkeypatch.setattr(precision_module, "cpu_has_bf16_units", lambda: False)
    assert TrainSettings().resolved("cpu").precision == "fp32"  # emulated bf16 is slower
    assert TrainSettings(precision="bf16").resolved("cpu").precision == "bf16"


def test_precision_keys_the_cache(mnist_train, tmp_path, monkeypatch):
    monkeypatch.setenv(precision_module.CPU_BF16_ENV, "0")
    assert TrainSettings(precision="fp32").resolved("cuda").precision == "fp32"
    with pytest.raises(ValueError):
        TrainSettings(precision="fp16")
    quick = {"epochs": 1, "batch_size": 64, "max_images": 128}

    def get(**extra):
        return get_classifier("lenet", "mnist", settings=TrainSettings(**quick, **extra),
                              train_data=lambda: mnist_train, cache_dir=tmp_path)

    first = get()
    assert first.origin == "trained" and first.config["train"]["precision"] == "fp32"
    assert get(precision="fp32").origin == "cache"  # auto resolved to fp32 here: same model
    bf16 = get(precision="bf16")  # autocast to bfloat16 on the CPU: another model
    assert bf16.origin == "trained" and bf16.key != first.key
    assert bf16.config["metrics"]["precision"] == "bf16"
    assert bf16.config["metrics"]["final_loss"] == pytest.approx(
        first.config["metrics"]["final_loss"], abs=0.1)


def test_compile_setting_runs_the_loss_through_torch_compile(mnist_train, monkeypatch):
    compiled = []

    def fake_compile(fn):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = create_classifier("lenet", "mnist")
    fit_classifier(model, mnist_train, TrainSettings(max_images=64, batch_size=64))
    assert compiled == []
    fit_classifier(model, mnist_train, TrainSettings(max_images=64, batch_size=64, compile=True))
    assert len(compiled) == 1


def test_no_host_sync_per_step(mnist_train, monkeypatch):
    """The loss is read back to the host every LOSS_READ_EVERY steps for the progress bar,
    plus once at the end; the models skip their range check (decoded uint8 data)."""
    monkeypatch.setenv("AEPURIFY_PROGRESS", "1")
    reads = []
    for method in ("__float__", "__int__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method):
            reads.append(_method)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, method, counting)
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: reads.append("aminmax") or aminmax(*a, **k))
    model = create_classifier("lenet", "mnist")
    # SGD: Adam reads its CPU-side step counter with .item(), which is no device sync
    settings = TrainSettings(epochs=2, batch_size=16, max_images=800, optimizer="sgd")
    metrics = run_minibatches(model.parameters(), lambda x, y: F.cross_entropy(model(x), y),
                              mnist_train, settings, desc="sync test", modules=[model])
    assert metrics["steps"] == 100  # 50 per epoch: 2 bar reads per epoch, 2 at the end
    assert len(reads) <= 2 * 2 + 2, reads


def test_augmented_training_is_seeded(mnist_train):
    def train(seed: int) -> torch.Tensor:
        seed_everything(0)
        model = create_classifier("lenet", "mnist")
        fit_classifier(model, mnist_train, TrainSettings(max_images=64, batch_size=32,
                                                         augment=True, seed=seed))
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(train(1), train(1))
    assert not torch.equal(train(1), train(2))


def test_channels_last_context_restores_layouts():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3))
    net[1].weight.data = net[1].weight.data.contiguous(memory_format=torch.channels_last)
    before = [p.clone() for p in net.parameters()]
    with precision_module.channels_last_weights([net], enabled=True):
        assert all(p.is_contiguous(memory_format=torch.channels_last)
                   for p in net.parameters() if p.dim() == 4)
    assert net[0].weight.is_contiguous()
    assert net[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
