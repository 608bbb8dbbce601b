"""What the audit adds to the attacks it runs: ``aepurify.audit`` on the undefended classifier
against the same attacks called directly on torchattacks, on the same module and images, side by
side in one run.

    python benchmarks/audit_overhead.py [--images 500] [--eps 0.1] [--version standard]
                                        [--threads 2] [--repeats 2]

The classifier is the demo's LeNet trained for one epoch on 2,000 MNIST training images (the
embedded copy), so attacks break most images but not all (Square and the targeted APGD then work
on the survivors, as they do in a real audit). The direct run builds each attack of the version
with torchattacks' own classes and the audit's settings (PGD-20 with step 2.5 eps / 20 and a
random start, APGD-CE / APGD-T with 100 steps and seed 0, Square with 5,000 queries, PGD-10 and
PGD-100), crafts on all images in batches of the audit's size, and classifies the adversarial
images. Lines: seconds of the direct attacks, the audit's attack rows (crafting and classifying,
the sum of the rows' ``seconds``) and the whole ``audit`` call (wrapping, validation, probing,
the results store, summary and checks; no report is written), each the best of ``--repeats``,
and ratio = direct / audit (goal: >= 0.95 for the attack rows, i.e. the audit adds at most 5 %).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchattacks

import aepurify as ap
from aepurify.audit.suite import SANITY_STEPS, SQUARE_QUERIES
from aepurify.data import load_dataset
from aepurify.models import create_classifier
from aepurify.training import TrainSettings, fit_classifier
from aepurify.utils import batches, seed_everything


def direct_attacks(model: torch.nn.Module, eps: float, version: str) -> list[torchattacks.Attack]:
    """The attacks of ``version`` on the undefended classifier, built with torchattacks."""
    def pgd(steps: int) -> torchattacks.Attack:
        return torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                random_start=True)

    out = [pgd(20), torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1,
                                      seed=0, loss="ce")]
    if version == "quick":
        return out
    targeted = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=0,
                                  n_classes=10)
    targeted.n_target_classes = 9
    return out + [targeted, torchattacks.Square(model, norm="Linf", eps=eps,
                                                n_queries=SQUARE_QUERIES, seed=0),
                  pgd(SANITY_STEPS[0]), pgd(SANITY_STEPS[1])]


def run_direct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               version: str, batch: int) -> tuple[float, list[float]]:
    """Seconds to craft and classify every attack directly, and each attack's accuracy."""
    start = time.perf_counter()
    accuracies = []
    for attack in direct_attacks(model, eps, version):
        correct = 0
        for sl in batches(x.shape[0], batch):
            x_adv = attack(x[sl], y[sl])
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y[sl]).sum())
        accuracies.append(correct / x.shape[0])
    return time.perf_counter() - start, accuracies


def quick_lenet() -> torch.nn.Module:
    """The demo's LeNet trained one epoch on 2,000 MNIST training images (seed 0), eval mode:
    attacks break most test images, not all."""
    seed_everything(0)
    model = create_classifier("lenet", dataset="mnist")
    fit_classifier(model, load_dataset("mnist", "train"),
                   TrainSettings(epochs=1, batch_size=64, max_images=2000))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--version", default="standard", choices=["quick", "standard"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = quick_lenet()
    x, y = load_dataset("mnist", "test").tensors(slice(0, args.images))
    batch = min(args.images, 500)
    direct = audit_rows = audit_call = float("inf")
    for _ in range(args.repeats):  # alternate, so both meet the same machine load
        seconds, accuracies = run_direct(model, x, y, args.eps, args.version, batch)
        direct = min(direct, seconds)
        start = time.perf_counter()
        # every attack on every example, as the direct run does (benchmarks/audit_what_stands.py
        # measures the audit's default, attacking only what still stands)
        result = ap.audit(model, None, x, y, eps=args.eps, version=args.version, device="cpu",
                          attack_what_stands=False)
        audit_call = min(audit_call, time.perf_counter() - start)
        audit_rows = min(audit_rows, sum(r["seconds"] for r in result.per_attack
                                         if r["attack"] != "none"))
    print(f"{args.images} MNIST images, LeNet, L-inf eps {args.eps:g}, version {args.version}, "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"direct torchattacks accuracies: {', '.join(f'{a:.3f}' for a in accuracies)}; "
          f"audit robust accuracy {result.robust_accuracy:.3f}")
    print(f"direct attacks   {direct:8.2f} s")
    print(f"audit attack rows {audit_rows:7.2f} s   ratio direct/audit {direct / audit_rows:.3f} "
          "(goal >= 0.95)")
    print(f"audit whole call {audit_call:8.2f} s   ratio direct/audit {direct / audit_call:.3f}")


if __name__ == "__main__":
    main()
