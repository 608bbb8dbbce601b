"""Throughput of the project's hot paths against plain PyTorch doing the same work, measured side
by side in one run on whatever device is present (so the ratios hold on a loaded machine too).

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--repeats 3] [--threads 1]

Three ratios, each with its goal (issue 14):

1. training: images/s of ``aepurify.training.fit_classifier`` (the loop every classifier and
   purifier trains with) against a hand-written loop of the same model, optimiser (SGD, nesterov,
   cosine), precision and batch, with the uint8 data already on the device and, on CUDA, bf16
   autocast and channels-last; goal >= 0.9.
2. PGD-20: one PGD-20 of torchattacks through the threat-model layer (``build_attack`` over
   ``attack_module(white-box)`` of a ``DefendedClassifier``, as the evaluation runs it) against
   bare torchattacks on a module that computes the same function without aepurify's wrappers;
   goal >= 0.97.
3. APuDAE: one adaptive purification (13 Adam steps through the DAE, the paper's main mode)
   against one forward pass of the same DAE; goal <= 30x. Twice: on inputs like the DAE's
   calibration set (clean-looking: at or below mu, no gradient, and on a CPU no backward pass)
   and with every input above mu (perturbed inputs: a forward and a backward pass per step,
   whose floor is about 13 x (1 + backward / forward)).

Sizes: on CUDA the paper's (ResNet-18 at full width, batch 512, 50,000 images resident;
MagNet's CIFAR-10 reformer; REDNet-30 with 64 channels); on a CPU small enough to finish in a
couple of minutes on 2 cores (ResNet-18 at a quarter width on 1,024 images; REDNet-10 with 32
channels). Weights are untrained: the cost does not depend on them. Each figure is the best of
``--repeats`` runs, the two sides alternating; on a CPU "images/s" are per second of the
process's CPU time (see :func:`best_of`) and the default is one thread: with more, threads
that wait for each other on a busy machine spin and bill CPU time for it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torchattacks
from torch import nn
from torch.nn import functional as F

from aepurify.attacks import attack_module, build_attack, resolve_threat_model
from aepurify.data import ImageDataset
from aepurify.models import create_classifier
from aepurify.purifiers import DefendedClassifier, create_purifier
from aepurify.training import TrainSettings, fit_classifier
from aepurify.utils import pick_device

SIZES = {
    "cpu": {"width": 16, "train_images": 512, "batch": 128, "epochs": 1, "attack_images": 32,
            "dae": (5, 32), "purify_images": 32},
    "cuda": {"width": 64, "train_images": 50_000, "batch": 512, "epochs": 2,
             "attack_images": 1000, "dae": (15, 64), "purify_images": 500},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
            ) -> dict[str, float]:
    """The shortest time of each function over ``repeats`` alternating rounds: wall seconds on
    an accelerator; on a CPU the process's CPU seconds (all threads), which a machine shared
    with other work disturbs far less than the wall clock."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            clock = time.perf_counter if device.type != "cpu" else time.process_time
            sync(device)
            start = clock()
            fn()
            sync(device)
            best[name] = min(best[name], clock() - start)
    return best


class Bare(nn.Module):
    """classifier(purifier(x)) with no aepurify wrapper in the way: no input checks, no
    threat-model layer; the same parameters and the same arithmetic."""

    def __init__(self, classifier: nn.Module, purifier: nn.Module) -> None:
        super().__init__()
        self.classifier, self.purifier = classifier, purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.classifier
        return c.head(c.body(c.normalize(self.purifier.purify(x))))


def plain_training(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   settings: TrainSettings, device: torch.device) -> None:
    """The textbook fast loop: data on the device, SGD (nesterov) with a cosine schedule,
    autocast and channels-last on CUDA, no host reads."""
    cuda = device.type == "cuda"
    model.to(device).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                          weight_decay=settings.weight_decay, **({"fused": True} if cuda else {}))
    n, b = len(images), settings.batch_size
    steps = (n + b - 1) // b * settings.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    for _ in range(settings.epochs):
        order = torch.randperm(n, device=device)
        for start in range(0, n, b):
            idx = order[start:start + b]
            x = images[idx].contiguous(memory_format=fmt).float().div_(255.0)
            with torch.autocast(device.type, torch.bfloat16,
                                enabled=settings.precision == "bf16"):
                loss = F.cross_entropy(model.head(model.body(model.normalize(x))), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def training_ratio(device: torch.device, size: dict, repeats: int) -> tuple[str, float, float]:
    n = size["train_images"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    data = ImageDataset("cifar10", "train", images, labels, tuple("0123456789"), "synthetic")
    settings = TrainSettings(epochs=size["epochs"], batch_size=size["batch"], lr=0.1,
                             weight_decay=5e-4, optimizer="sgd", schedule="cosine"
                             ).resolved(device)
    resident = (images.to(device), labels.to(device))
    model = create_classifier("resnet18", "cifar10", width=size["width"]).to(device)
    done = n * settings.epochs
    warm = settings.model_copy(update={"epochs": 1, "max_images": 4 * size["batch"]})
    fit_classifier(model, data, warm, device=device)  # warm-up: kernels, allocator, autotuning
    plain_training(model, *resident, warm.model_copy(update={"epochs": 1}), device)

    best = best_of({"project": lambda: fit_classifier(model, data, settings, device=device),
                    "plain": lambda: plain_training(model, *resident, settings, device)},
                   repeats, device)
    what = (f"training ResNet-18 (width {size['width']}), batch {size['batch']}, "
            f"{settings.precision}: images/s")
    return what, done / best["project"], done / best["plain"]


def attack_ratio(device: torch.device, size: dict, repeats: int) -> tuple[str, float, float]:
    torch.manual_seed(0)
    classifier = create_classifier("resnet18", "cifar10", width=size["width"]).to(device).eval()
    purifier = create_purifier("magnet", "cifar10", pool=False, noise_std=0.025).to(device).eval()
    defended = DefendedClassifier(classifier, purifier).eval()
    n = size["attack_images"]
    x = torch.rand(n, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    eps, steps = 8 / 255, 20
    tm = resolve_threat_model("white-box", purifier)
    layered = build_attack("pgd", attack_module(tm, defended), eps, params={"steps": steps})
    bare = torchattacks.PGD(Bare(classifier, purifier).eval(), eps=eps,
                            alpha=2.5 * eps / steps, steps=steps)
    layered(x[:8], y[:8]), bare(x[:8], y[:8])  # warm-up
    best = best_of({"layer": lambda: layered(x, y), "bare": lambda: bare(x, y)}, repeats, device)
    return "PGD-20 white-box, MagNet + ResNet-18: images/s", n / best["layer"], n / best["bare"]


def apudae_ratio(device: torch.device, size: dict, repeats: int, calibrated: bool
                 ) -> tuple[str, float, float]:
    """APuDAE's adaptive purification against one DAE forward pass, on inputs like those its
    mu and sigma were calibrated on (``calibrated``: clean-looking inputs, most of which stay at
    or below mu and get no gradient, which the refinement skips on a CPU), or with mu = 0, so
    that every input is above mu at every step (perturbed inputs: the worst case)."""
    torch.manual_seed(0)
    layers, features = size["dae"]
    purifier = create_purifier("apudae", "cifar10", mode="adaptive", layers=layers,
                               features=features).to(device).eval()
    n = size["purify_images"]
    x = torch.rand(n, 3, 32, 32, device=device)
    if calibrated:  # held-out images from the same distribution as x
        purifier.calibrate(torch.rand(4 * n, 3, 32, 32, device=device))
    with torch.no_grad():
        purifier(x[:8]), purifier.dae(x[:8])  # warm-up
        best = best_of({"purify": lambda: purifier(x), "dae": lambda: purifier.dae(x)}, repeats,
                       device)
    inputs = "inputs like its calibration set" if calibrated else "every input above mu"
    return (f"APuDAE adaptive (REDNet-{2 * layers}, {features} ch), {inputs}, vs one DAE "
            "forward: images/s", n / best["purify"], n / best["dae"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--only", choices=("training", "pgd", "apudae"), nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    size = SIZES["cuda" if device.type == "cuda" else "cpu"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {args.threads} CPU threads, "
          f"best of {args.repeats}")
    checks = {"training": (training_ratio, ">= 0.9", lambda a, b: a / b, 0.9, "project/plain"),
              "pgd": (attack_ratio, ">= 0.97", lambda a, b: a / b, 0.97, "layer/bare"),
              "apudae": (partial(apudae_ratio, calibrated=True), "<= 30", lambda a, b: b / a,
                         30.0, "purify/forward"),
              "apudae-perturbed": (partial(apudae_ratio, calibrated=False), "<= 30",
                                   lambda a, b: b / a, 30.0, "purify/forward")}
    for key, (fn, goal, ratio_of, limit, label) in checks.items():
        if args.only and key.split("-")[0] not in args.only:
            continue
        what, ours, reference = fn(device, size, args.repeats)
        ratio = ratio_of(ours, reference)
        met = ratio >= limit if goal.startswith(">=") else ratio <= limit
        print(f"{what}\n  {ours:,.0f} vs {reference:,.0f}; ratio {label} = {ratio:.3f} "
              f"(goal {goal}: {'met' if met else 'NOT met'})", flush=True)


if __name__ == "__main__":
    main()
