"""Training reproducibility on a CPU: the demo's LeNet and HGD trained side by side in one run
under different thread settings, with their weight differences and HGD's white-box rows.

    python benchmarks/train_threads.py [--images 1000]

Three trainings from empty caches (settings read from configs/demo-mnist.yaml): the process at 1
and at 2 intra-op threads with training's pinned threads (aepurify.utils.TRAIN_THREADS), which
must give bit-identical weights; and the pin overridden to 1 (AEPURIFY_TRAIN_THREADS=1), which
gives other last bits in every float sum and so another model: the README's demo table moved by
0.18 in HGD's white-box FGSM row at 0.3 that way (docs/evaluation.md, "Reproducibility").
Rows: white-box FGSM at L-inf 0.3 on the first ``--images`` test images and 20-step PGD at 0.2
on the first 200, as in the demo.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from aepurify.attacks import attack_module, build_attack, resolve_threat_model
from aepurify.data import load_dataset
from aepurify.evaluation.config_file import load_config
from aepurify.purifiers import DefendedClassifier
from aepurify.training.cache import get_classifier, get_purifier
from aepurify.utils import TRAIN_THREADS, TRAIN_THREADS_ENV, seed_everything

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo-mnist.yaml"


def robust_accuracy(defended: DefendedClassifier, attack: str, eps: float, params: dict,
                    x: torch.Tensor, y: torch.Tensor) -> float:
    seed_everything(0)
    tm = resolve_threat_model("white-box", defended.purifier)
    x_adv = torch.cat([build_attack(attack, attack_module(tm, defended), eps, "linf",
                                    params)(x[i:i + 500], y[i:i + 500])
                       for i in range(0, len(x), 500)])
    with torch.no_grad():
        return float((defended(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    config = load_config(DEMO)
    lenet = config.classifier
    hgd = next(p for p in config.purifiers if p.name == "hgd")
    train = load_dataset("mnist", "train")
    x, y = load_dataset("mnist", "test").tensors(slice(0, args.images))
    settings = [(f"process 1 thread, pinned {TRAIN_THREADS}", 1, None),
                (f"process 2 threads, pinned {TRAIN_THREADS}", 2, None),
                ("process 2 threads, pin overridden to 1", 2, "1")]
    before, saved_env = torch.get_num_threads(), os.environ.get(TRAIN_THREADS_ENV)
    results = []
    try:
        for label, threads, pin in settings:
            torch.set_num_threads(threads)
            os.environ.pop(TRAIN_THREADS_ENV, None)
            if pin is not None:
                os.environ[TRAIN_THREADS_ENV] = pin
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as cache:
                clf = get_classifier("lenet", "mnist", params=lenet.params, settings=lenet.train,
                                     train_data=lambda: train, cache_dir=cache)
                pur = get_purifier("hgd", "mnist", params=hgd.params, settings=hgd.train,
                                   classifier=clf, train_data=lambda: train, cache_dir=cache)
            seconds = time.perf_counter() - start
            defended = DefendedClassifier(clf.module, pur.module)
            weights = {f"lenet.{k}": v for k, v in clf.module.state_dict().items()}
            weights.update({f"hgd.{k}": v for k, v in pur.module.state_dict().items()})
            fgsm = robust_accuracy(defended, "fgsm", 0.3, {}, x, y)
            pgd = robust_accuracy(defended, "pgd", 0.2, {"steps": 20}, x[:200], y[:200])
            results.append((label, weights, fgsm, pgd, seconds))
    finally:
        torch.set_num_threads(before)
        os.environ.pop(TRAIN_THREADS_ENV, None)
        if saved_env is not None:
            os.environ[TRAIN_THREADS_ENV] = saved_env
    reference = results[0][1]
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    print(f"{'training':42} {'max |dw| vs first':>17} {'FGSM 0.3':>9} {'PGD 0.2':>8} {'train s':>8}")
    for label, weights, fgsm, pgd, seconds in results:
        diff = max(float((weights[k].double() - reference[k].double()).abs().max())
                   for k in reference)
        print(f"{label:42} {diff:17.3g} {fgsm:9.3f} {pgd:8.3f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
