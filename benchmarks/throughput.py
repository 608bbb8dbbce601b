"""Throughput of the project's hot paths against the best plain PyTorch loop doing the same work
on the same device, measured side by side in one run, and the project's own speed-up from fp32 to
``precision: auto``.

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--repeats 3] [--threads 2] \
        [--only training pgd apudae speedup classifiers]

"Best plain loop": hand-written PyTorch with the data already on the device and, where the
hardware runs bf16 fast (CUDA; a CPU with AMX or AVX512-BF16, see ``aepurify.precision``),
bf16 autocast and channels-last weights and activations; fp32 elsewhere. The project runs with
``precision: auto``, which picks the same. Ratios and goals (issue "The CPU at full speed"):

1. training, images/s of the project's loop (``fit_classifier`` with airbench94's recipe; the
   shared minibatch loop over APuDAE's denoising loss for REDNet-30 / 64 channels) against a
   plain loop of the same model, optimiser, batch and loss; goal >= 0.9. Augmentation is off
   on both sides (the plain loop has none); the recipe's schedule and lookahead count against
   the project.
2. PGD-20 of torchattacks through the threat-model layer (``build_attack`` over the white-box
   module of a ``DefendedClassifier``: MagNet's CIFAR-10 reformer + airbench94, whose forward
   averages the logits of the image and its mirror) against bare torchattacks on a plain module
   computing the same function in the same precision; goal >= 0.95.
3. APuDAE: one adaptive purification (13 Adam steps through REDNet-30 / 64) against one forward
   pass of the same DAE, on inputs like its calibration set and with every input above mu (the
   worst case); goal <= 30x.
4. speed-up: the project's images/s with ``precision: fp32`` and ``auto``, per model and step
   (training, an attack's input gradient, APuDAE's refinement), and their ratio.
5. classifiers: training images/s of the CIFAR-10 classifiers through the project's loop in
   ``auto`` with augmentation on (airbench94, airbench95 by their recipe; the full-width CIFAR
   ResNet-18 by the standard loop, SGD, batch 512), to see what fits a time budget.

Sizes are the papers' (airbench94, REDNet-30 / 64 channels) on both device kinds; a CPU runs
fewer images. Weights are untrained: the cost does not depend on them. Each figure is the best of
``--repeats`` runs, the two sides alternating, in wall-clock seconds: measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchattacks
from torch import nn
from torch.nn import functional as F

from aepurify.attacks import attack_module, build_attack, resolve_threat_model
from aepurify.data import ImageDataset
from aepurify.models import create_classifier
from aepurify.precision import autocast, fast_layout, resolve_precision, with_precision
from aepurify.purifiers import DefendedClassifier, create_purifier
from aepurify.training import TrainSettings, fit_classifier, run_minibatches
from aepurify.utils import channels_last_input, pick_device

SIZES = {
    "cpu": {"train_images": 4096, "dae_images": 1024, "attack_images": 512,
            "purify_images": 128},
    "cuda": {"train_images": 50_000, "dae_images": 10_000, "attack_images": 2000,
             "purify_images": 1000},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
            ) -> dict[str, float]:
    """The shortest wall time of each function over ``repeats`` alternating rounds."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def synthetic(n: int, shape: tuple[int, ...], seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageDataset("cifar10", "train", images, labels, tuple("0123456789"), "synthetic")


def plain_steps(model: nn.Module, params: list[nn.Parameter], loss_of: Callable,
                opt: torch.optim.Optimizer, data: ImageDataset, batch: int, precision: str,
                device: torch.device) -> None:
    """The textbook fast loop: uint8 images resident on the device, shuffled, converted per
    batch; channels-last and bf16 autocast where ``precision`` is bf16; no host reads."""
    fast = fast_layout(precision, device)
    fmt = torch.channels_last if fast else torch.contiguous_format
    model.to(memory_format=fmt).train()
    images, labels = data.images.to(device), data.labels.to(device)
    order = torch.randperm(len(data), device=device)
    for start in range(0, len(data), batch):
        idx = order[start:start + batch]
        x = images[idx].contiguous(memory_format=fmt).float().div_(255.0)
        with autocast(precision, device):
            loss = loss_of(x, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.to(memory_format=torch.contiguous_format).eval()


def classifier_training(device: torch.device, size: dict, repeats: int, precision: str
                        ) -> tuple[str, float, float]:
    """airbench94 trained by the project (its recipe) against a plain loop."""
    data = synthetic(size["train_images"], (3, 32, 32))
    settings = TrainSettings(epochs=1, batch_size=1024, lr=11.5, weight_decay=0.0153,
                             optimizer="sgd", precision=precision, seed=0)
    torch.manual_seed(0)
    model = create_classifier("airbench94", "cifar10").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.85, nesterov=True)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=0.2)

    def project() -> None:
        fit_classifier(model, data, settings, device=device)

    def plain() -> None:
        plain_steps(model, list(model.parameters()), loss_of, opt, data, 1024, precision, device)

    project(), plain()  # warm-up: kernels, allocator
    best = best_of({"project": project, "plain": plain}, repeats, device)
    n = len(data)
    return f"training airbench94, batch 1024, {precision}", n / best["project"], n / best["plain"]


def dae_training(device: torch.device, size: dict, repeats: int, precision: str
                 ) -> tuple[str, float, float]:
    """REDNet-30 / 64 trained by the shared loop on APuDAE's denoising loss against a plain
    loop (Adam, the same noisy-input MSE)."""
    data = synthetic(size["dae_images"], (3, 32, 32))
    settings = TrainSettings(epochs=1, batch_size=128, lr=1e-3, precision=precision, seed=0)
    torch.manual_seed(0)
    purifier = create_purifier("apudae", "cifar10", layers=15, features=64,
                               noise_std=0.05).to(device)
    opt = torch.optim.Adam(purifier.dae.parameters(), lr=1e-3)

    def project() -> None:
        run_minibatches(purifier.dae.parameters(), purifier.training_loss, data, settings,
                        desc="dae", device=device, modules=[purifier])

    def plain() -> None:
        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
            return F.mse_loss(purifier.dae(noisy), x)

        plain_steps(purifier.dae, list(purifier.dae.parameters()), loss_of, opt, data, 128,
                    precision, device)

    project(), plain()
    best = best_of({"project": project, "plain": plain}, repeats, device)
    n = len(data)
    return f"training REDNet-30/64 (APuDAE's DAE), batch 128, {precision}", \
        n / best["project"], n / best["plain"]


class Plain(nn.Module):
    """classifier(purifier(x)) with no aepurify wrapper in the way (no input checks, no
    threat-model layer), in ``precision`` the plain way: channels-last input, autocast, fp32
    logits out; the same parameters and the same arithmetic."""

    def __init__(self, classifier: nn.Module, purifier: nn.Module, precision: str) -> None:
        super().__init__()
        self.classifier, self.purifier, self.precision = classifier, purifier, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.classifier
        if self.precision == "bf16":
            x = channels_last_input(x)
        with autocast(self.precision, x.device):
            h = self.purifier.purify(x)
            h = c.normalize(torch.cat([h, h.flip(-1)]))
            both = c.head(c.body(h))
        both = both.float()
        return 0.5 * (both[:x.shape[0]] + both[x.shape[0]:])


def pgd_attack(device: torch.device, size: dict, repeats: int, precision: str
               ) -> tuple[str, float, float]:
    """PGD-20 white-box through the threat-model layer against bare torchattacks."""
    torch.manual_seed(0)
    classifier = create_classifier("airbench94", "cifar10").to(device).eval()
    purifier = create_purifier("magnet", "cifar10", pool=False, noise_std=0.025).to(device).eval()
    defended = DefendedClassifier(classifier, purifier).eval()
    n = size["attack_images"]
    x = torch.rand(n, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    eps, steps = 8 / 255, 20
    tm = resolve_threat_model("white-box", purifier)
    module = with_precision(attack_module(tm, defended), precision)
    layered = build_attack("pgd", module, eps, params={"steps": steps})
    bare = torchattacks.PGD(Plain(classifier, purifier, precision).eval(), eps=eps,
                            alpha=2.5 * eps / steps, steps=steps)
    layered(x[:8], y[:8]), bare(x[:8], y[:8])  # warm-up
    best = best_of({"layer": lambda: layered(x, y), "bare": lambda: bare(x, y)}, repeats, device)
    return f"PGD-20 white-box, MagNet + airbench94, {precision}", n / best["layer"], \
        n / best["bare"]


def apudae_purification(device: torch.device, size: dict, repeats: int, precision: str,
                        calibrated: bool) -> tuple[str, float, float]:
    """APuDAE's adaptive purification against one DAE forward pass, on inputs like those its
    mu and sigma were calibrated on (most stay at or below mu and get no gradient, which the
    refinement skips on a CPU), or with mu = 0 (every input above mu at every step)."""
    torch.manual_seed(0)
    purifier = create_purifier("apudae", "cifar10", mode="adaptive", layers=15,
                               features=64).to(device).eval().set_precision(precision)
    n = size["purify_images"]
    x = torch.rand(n, 3, 32, 32, device=device)
    if calibrated:  # held-out images from the same distribution as x
        purifier.calibrate(torch.rand(4 * n, 3, 32, 32, device=device))
    dae = with_precision(purifier.dae, precision)
    with torch.no_grad():
        purifier(x[:8]), dae(x[:8])  # warm-up
        best = best_of({"purify": lambda: purifier(x), "dae": lambda: dae(x)}, repeats, device)
    inputs = "inputs like its calibration set" if calibrated else "every input above mu"
    return f"APuDAE adaptive (REDNet-30, 64 ch), {inputs}, {precision}", \
        n / best["purify"], n / best["dae"]


def input_gradient(device: torch.device, size: dict, repeats: int, precision: str,
                   arch: str, dataset: str, shape: tuple[int, ...]) -> float:
    """Images/s of one loss gradient with respect to the input through the project's attack
    module (the bare classifier under gray-box) in ``precision``."""
    torch.manual_seed(0)
    classifier = create_classifier(arch, dataset).to(device).eval()
    module = with_precision(classifier, precision)
    n = size["attack_images"]
    x = torch.rand(n, *shape, device=device)
    y = torch.randint(0, 10, (n,), device=device)

    def step() -> None:
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(module(xa), y), xa)

    step()
    return n / best_of({"step": step}, repeats, device)["step"]


def speedups(device: torch.device, size: dict, repeats: int, auto: str) -> None:
    """The project's images/s in fp32 and in ``precision: auto`` (here ``auto``), per model."""
    print(f"speed-up fp32 -> auto ({auto}), the project's own images/s:")
    rows = [
        ("airbench94 training", lambda p: classifier_training(device, size, repeats, p)[1]),
        ("REDNet-30/64 training", lambda p: dae_training(device, size, repeats, p)[1]),
        ("airbench94 input gradient", lambda p: input_gradient(
            device, size, repeats, p, "airbench94", "cifar10", (3, 32, 32))),
        ("LeNet (MNIST) input gradient", lambda p: input_gradient(
            device, size, repeats, p, "lenet", "mnist", (1, 28, 28))),
        ("PGD-20 MagNet + airbench94", lambda p: pgd_attack(device, size, repeats, p)[1]),
        ("APuDAE refinement, above mu", lambda p: apudae_purification(
            device, size, repeats, p, calibrated=False)[1]),
    ]
    for what, fn in rows:
        fp32, fast = fn("fp32"), fn(auto)
        print(f"  {what:32s} {fp32:8,.0f} -> {fast:8,.0f}  ({fast / fp32:.2f}x)", flush=True)


def classifiers(device: torch.device, size: dict, repeats: int, auto: str) -> None:
    """Training images/s of the CIFAR-10 classifiers, augmentation on, in ``auto``."""
    print(f"CIFAR-10 classifiers, training images/s ({auto}, augmentation on):")
    data = synthetic(size["train_images"] // 2, (3, 32, 32))
    for arch, batch, lr, decay in (("airbench94", 1024, 11.5, 0.0153),
                                   ("airbench95", 1024, 10.0, 0.0153),
                                   ("resnet18", 512, 0.1, 5e-4)):
        torch.manual_seed(0)
        model = create_classifier(arch, "cifar10").to(device)
        settings = TrainSettings(epochs=1, batch_size=batch, lr=lr, weight_decay=decay,
                                 optimizer="sgd", augment=True, precision=auto)
        fit_classifier(model, data.take(batch), settings, device=device)  # warm-up
        best = best_of({"fit": lambda: fit_classifier(model, data, settings, device=device)},
                       repeats, device)["fit"]
        print(f"  {arch:12s} {len(data) / best:8,.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--only", choices=("training", "pgd", "apudae", "speedup", "classifiers"),
                        nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    size = SIZES["cuda" if device.type == "cuda" else "cpu"]
    auto = resolve_precision("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {args.threads} CPU threads, "
          f"precision auto = {auto}, best of {args.repeats}")
    checks = {
        "training": [(classifier_training, 0.9), (dae_training, 0.9)],
        "pgd": [(pgd_attack, 0.95)],
        "apudae": [(lambda *a: apudae_purification(*a, calibrated=True), 1 / 30),
                   (lambda *a: apudae_purification(*a, calibrated=False), 1 / 30)],
    }
    for key, items in checks.items():
        if args.only and key not in args.only:
            continue
        for fn, goal in items:
            what, ours, reference = fn(device, size, args.repeats, auto)
            if key == "apudae":  # a cost: purification / forward, the lower the better
                ratio, text = reference / ours, f"purify/forward = {reference / ours:.1f}x"
                met, want = ratio <= 1 / goal, f"<= {1 / goal:.0f}x"
            else:
                ratio, text = ours / reference, f"project/plain = {ours / reference:.3f}"
                met, want = ratio >= goal, f">= {goal}"
            print(f"{what}: images/s\n  {ours:,.0f} vs {reference:,.0f}; {text} "
                  f"(goal {want}: {'met' if met else 'NOT met'})", flush=True)
    if not args.only or "speedup" in args.only:
        speedups(device, size, args.repeats, auto)
    if not args.only or "classifiers" in args.only:
        classifiers(device, size, args.repeats, auto)


if __name__ == "__main__":
    main()
