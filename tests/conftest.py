"""Shared fixtures: offline, quiet, a private model cache, real MNIST (embedded copy), and a tiny
LeNet trained in about a second on 2,000 real MNIST images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before aepurify is imported anywhere: no downloads, no progress bars, private cache.
os.environ["AEPURIFY_OFFLINE"] = "1"
os.environ["AEPURIFY_PROGRESS"] = "0"
os.environ.pop("AEPURIFY_DATA", None)
# precision auto picks fp32 here, on any CPU: the suite computes the same on a CI machine with
# or without bf16 units; the bf16 paths are tested by asking for bf16 explicitly
os.environ["AEPURIFY_CPU_BF16"] = "0"

import torch  # noqa: E402

from aepurify.allocator import tune_allocator  # noqa: E402

tune_allocator()  # as the aepurify command does: freed tensors' memory is reused, not re-faulted

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (or $AEPURIFY_SHARED_DATA), if present."""
    for cand in (os.environ.get("AEPURIFY_SHARED_DATA"), REPO.parent / "shared" / "data",
                 Path("/work/shared/data")):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["AEPURIFY_CACHE"] = str(tmp_path_factory.mktemp("aepurify-cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not available on this machine")
    return path


@pytest.fixture(scope="session")
def mnist_test():
    from aepurify.data import load_dataset

    return load_dataset("mnist", "test")


@pytest.fixture(scope="session")
def mnist_train():
    from aepurify.data import load_dataset

    return load_dataset("mnist", "train")


@pytest.fixture(scope="session")
def tiny_lenet(mnist_train):
    """LeNet trained one epoch on 2,000 real MNIST training images (about 90 % accurate)."""
    from aepurify.models import create_classifier
    from aepurify.training import TrainSettings, fit_classifier
    from aepurify.utils import seed_everything

    seed_everything(0)
    model = create_classifier("lenet", dataset="mnist")
    fit_classifier(model, mnist_train, TrainSettings(epochs=1, batch_size=64, max_images=2000))
    return model.eval()


@pytest.fixture(scope="session")
def mnist_batch(mnist_test):
    """The first 200 MNIST test images (200, 1, 28, 28) in [0, 1] and their labels."""
    return mnist_test.tensors(slice(0, 200))
