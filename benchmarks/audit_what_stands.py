"""What attacking only what still stands saves: ``aepurify.audit`` on ART-style defenses (ART's
own preprocessors, wrapped as a user would wrap them for ``aepurify audit --purifier
MODULE:FACTORY``), once with every attack on every example (before) and once in AutoAttack's
order (after, the default), side by side in one run, with the robust accuracy of each.

    python benchmarks/audit_what_stands.py [--images 100] [--eps 0.3] [--version standard]
        [--defenses median squeeze] [--threads 2] [--repeats 1]

The classifier is LeNet trained one epoch on 2,000 MNIST training images (the embedded copy).
The defenses are numpy preprocessors of the Adversarial Robustness Toolbox, so the audit probes
them as not differentiable and attacks them with BPDA (identity backward pass):

- ``median``: ``SpatialSmoothing`` (a 3x3 median filter), which BPDA breaks: after PGD-20 few
  examples stand, so APGD-CE, APGD-T and Square have little left to attack;
- ``squeeze``: ``FeatureSqueezing`` to 1 bit, which holds at L-inf 0.3 on MNIST (pixels sit
  near 0 and 1): most examples stand, so the later attacks save less;
- ``tvm``: ``TotalVarMin`` (random: N-evaluation and EOT; slow, not in the default set), the
  defense of the review that found the audit attacking broken examples.

Lines per defense: seconds of the whole ``audit`` call before and after (best of
``--repeats``), their ratio, the robust accuracy of each, and the robust accuracy after each
attack of the after run. The two robust accuracies agree up to the attacks' own randomness: an
attack's random start is drawn per batch, and the after run's batches hold other examples.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

import aepurify as ap
from aepurify.data import load_dataset

from audit_overhead import quick_lenet  # the same classifier, beside this script


def art_purifier(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ART preprocessor as a purifier function: images (N, C, H, W) in [0, 1] -> same."""
    from art.defences.preprocessor import FeatureSqueezing, SpatialSmoothing, TotalVarMin

    art = {"median": lambda: SpatialSmoothing(window_size=3, channels_first=True,
                                              clip_values=(0.0, 1.0)),
           "squeeze": lambda: FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=1),
           "tvm": lambda: TotalVarMin(prob=0.3, norm=2, lamb=0.5, max_iter=5,
                                      clip_values=(0.0, 1.0))}[name]()

    def purify(x: torch.Tensor) -> torch.Tensor:
        out, _ = art(x.detach().cpu().numpy())
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    purify.__name__ = f"art-{name}"
    return purify


def timed_audit(model: torch.nn.Module, purifier: Callable, x: torch.Tensor, y: torch.Tensor,
                eps: float, version: str, what_stands: bool) -> tuple[float, ap.AuditResult]:
    start = time.perf_counter()
    result = ap.audit(model, ap.as_purifier(purifier, name=purifier.__name__), x, y, eps=eps,
                      version=version, device="cpu", attack_what_stands=what_stands)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--version", default="standard", choices=["quick", "standard"])
    parser.add_argument("--defenses", nargs="+", default=["median", "squeeze"],
                        choices=["median", "squeeze", "tvm"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = quick_lenet()
    x, y = load_dataset("mnist", "test").tensors(slice(0, args.images))
    print(f"{args.images} MNIST images, LeNet, L-inf eps {args.eps:g}, version {args.version}, "
          f"{args.threads} threads, best of {args.repeats}")
    for name in args.defenses:
        purifier = art_purifier(name)
        before = after = float("inf")
        for _ in range(args.repeats):  # alternate, so both meet the same machine load
            seconds, every = timed_audit(model, purifier, x, y, args.eps, args.version, False)
            before = min(before, seconds)
            seconds, stands = timed_audit(model, purifier, x, y, args.eps, args.version, True)
            after = min(after, seconds)
        print(f"\n{purifier.__name__} ({', '.join(stands.threat_models_used)}): "
              f"clean {stands.clean_accuracy:.3f}")
        print(f"  every attack on every example {before:8.1f} s   robust accuracy "
              f"{every.robust_accuracy:.3f}")
        print(f"  attack only what still stands {after:8.1f} s   robust accuracy "
              f"{stands.robust_accuracy:.3f}   before/after {before / after:.2f}x")
        order = [r for r in stands.per_attack
                 if r["purifier"] == stands.purifier and "robust_after" in r]
        print("  robust accuracy after each attack: " + ", ".join(
            f"{r['attack']}{'*' if 'attacked' in r else ''} {r['robust_after']:.3f}"
            for r in order) + "   (* attacked only what stood)")


if __name__ == "__main__":
    main()
