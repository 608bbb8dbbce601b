"""EOT gradient cost at 224 px past the graph budget, before and after EOT learned to skip work
that does not depend on the draw, measured side by side in one run.

    python benchmarks/eot_imagenet.py [--images 4] [--samples 24] [--repeats 1] [--threads 2]

The setting of the ImageNet paper configs: 3x224x224 images, EfficientNet-Lite0, and

- APuDAE (adaptive, REDNet-6 with 16 channels) under bpda+eot. Before: each chunk was
  recomputed whole in the backward pass, the 13-step refinement included. After: the refinement
  runs once per chunk, outside the checkpoint; only the classifier is recomputed.
- the patch VAE (16 px, half stride, latent 512, width 32) under white-box+eot. Before: every
  draw ran the whole VAE. After: the patches' posterior is computed once for all draws
  (``Purifier.shared_part``); each draw decodes only.

Before is reproduced by hiding the defended classifier's type from EOT (a plain ``nn.Module``
around it). Weights are untrained: the cost does not depend on them. One line per purifier:
seconds for one gradient of the EOT loss each way, the best of ``--repeats``, and the ratio.
"""

from __future__ import annotations

import argparse

import torch
from eot_chunking import gradient_seconds  # same folder: the same timing
from torch import nn

from aepurify.attacks.threat_models import EOT, EOT_GRAPH_PIXELS, BPDAClassifier
from aepurify.models import create_classifier
from aepurify.purifiers import DefendedClassifier, create_purifier


class Hidden(nn.Module):
    """``module`` behind a plain ``nn.Module``: EOT takes its generic path (whole module per
    chunk, recomputed whole in the backward pass)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.images, 3, 224, 224)
    y = torch.randint(0, 1000, (args.images,))
    classifier = create_classifier("efficientnet-lite0").eval()
    apudae = create_purifier("apudae", in_channels=3, mode="adaptive", layers=3,
                             features=16).eval()
    patch_vae = create_purifier("patch-vae", in_channels=3, patch_sizes=[16], latent_dim=512,
                                width=32, recon_loss="mse", kl_weight=1e-4).eval()
    setups = {
        "apudae bpda+eot": BPDAClassifier(DefendedClassifier(classifier, apudae)),
        "patch-vae white-box+eot": DefendedClassifier(classifier, patch_vae),
    }
    recomputed = args.samples * x.numel() > EOT_GRAPH_PIXELS
    print(f"{args.images} images 3x224x224, {args.samples} EOT draws "
          f"({'past' if recomputed else 'within'} the graph budget), {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'setting':<24} {'before (s)':>11} {'after (s)':>10} {'speed-up':>9}")
    for name, model in setups.items():
        before = gradient_seconds(EOT(Hidden(model), args.samples), x, y, args.repeats)
        after = gradient_seconds(EOT(model, args.samples), x, y, args.repeats)
        print(f"{name:<24} {before:>11.1f} {after:>10.1f} {before / after:>8.1f}x")


if __name__ == "__main__":
    main()
