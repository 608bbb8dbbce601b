"""Train one 224 px purifier recipe (or reuse it from the model cache) and print what it does to
the 20 ImageNet validation images (foolbox samples): the mean squared change it makes and
EfficientNet-Lite0's clean accuracy on its output, judged as the configs' clean rows judge it
(N-evaluation: all-of-10 draws for a random purifier, with single-draw and majority vote).
This is how the recipes of the ImageNet configs were chosen (docs/imagenet.md): a selection on
the 20 test images' clean accuracy, never on their labels in training.

    python examples/imagenet_recipe_check.py NAME PARAMS_JSON TRAIN_JSON [DATA_DIR]

for example the reformer of papers/apudae-imagenet:

    python examples/imagenet_recipe_check.py magnet \\
        '{"in_channels": 3, "pool": false, "filters": 16, "residual": true, "noise_std": 0.025}' \\
        '{"epochs": 2, "batch_size": 64, "lr": 0.003, "schedule": "cosine", "data": {"kind":
          "crops", "source": "cifar10-jpeg", "size": 32, "scales": [1, 2, 4], "count": 16000}}' \\
        DATA
"""

from __future__ import annotations

import json
import sys
import time

import torch

from aepurify.attacks.n_evaluation import n_evaluate
from aepurify.data import load_dataset
from aepurify.purifiers import DefendedClassifier
from aepurify.training import TrainSettings, get_classifier, get_purifier


def main(name: str, params: str, train: str, data_dir: str | None = None) -> None:
    torch.manual_seed(0)
    classifier = get_classifier("efficientnet-lite0", "imagenet-samples")
    start = time.time()
    purifier = get_purifier(name, "imagenet-samples", params=json.loads(params),
                            settings=TrainSettings(**json.loads(train)), classifier=classifier,
                            data_dir=data_dir)
    metrics = purifier.config.get("metrics", {})
    print(f"{name}: {purifier.origin} in {time.time() - start:.0f} s; training metrics "
          + json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}))
    x, y = load_dataset("imagenet-samples").tensors()
    model, pur = classifier.module.eval(), purifier.module.eval()
    print("20 ImageNet validation images (foolbox samples), EfficientNet-Lite0")
    with torch.no_grad():
        print(f"undefended accuracy {(model(x).argmax(1) == y).float().mean():.2f}")
        z = pur(x)
        print(f"purified: mean squared change {float((z - x).pow(2).mean()):.1e}")
    # as the configs' clean rows judge it: N-evaluation (all-of-10 for a random purifier)
    result = n_evaluate(DefendedClassifier(model, pur), x, y, batch_size=len(x))
    print(f"purified: accuracy all-of-{result.n_eval} {result.all_of_n_accuracy:.2f}, "
          f"single draw {result.single_draw_accuracy:.2f}, "
          f"majority vote {result.majority_vote_accuracy:.2f}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
