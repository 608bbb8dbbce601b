"""Training is as reproducible as torch allows on a CPU: the weights depend neither on the
process's thread count (training pins its intra-op threads; float sums are split per thread)
nor on what the model cache already held (a feature extractor trained on first use inside a
purifier's training must not shift that purifier's random draws)."""

from __future__ import annotations

import json

import pytest
import torch

from aepurify.training import TrainSettings
from aepurify.training.cache import get_classifier, get_purifier
from aepurify.utils import TRAIN_THREADS, TRAIN_THREADS_ENV, train_threads


def _weights(trained) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trained.module.state_dict().items()}


def test_weights_do_not_depend_on_the_thread_count(tmp_path, mnist_train):
    settings = TrainSettings(epochs=1, batch_size=64, max_images=640)
    before = torch.get_num_threads()
    weights = {}
    try:
        for threads in (1, 3):  # the process's setting; training pins its own
            torch.set_num_threads(threads)
            trained = get_classifier("lenet", "mnist", settings=settings,
                                     train_data=lambda: mnist_train,
                                     cache_dir=tmp_path / f"cache{threads}")
            weights[threads] = _weights(trained)
            assert torch.get_num_threads() == threads  # restored after training
            recorded = json.loads((trained.path / "config.json").read_text())["environment"]
            assert recorded["threads"] == TRAIN_THREADS
            assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(weights[1][k], weights[3][k]) for k in weights[1])


def test_weights_do_not_depend_on_the_cache_state(tmp_path, monkeypatch, mnist_train):
    extra = {"feature_extractor": {"params": {"width": 4},
                                   "train": {"epochs": 1, "max_images": 128}},
             "pairs": {"sources": [{"kind": "clean"}, {"kind": "noise", "std": 0.1}]}}

    def train(cache, max_images):
        monkeypatch.setenv("AEPURIFY_CACHE", str(cache))  # the extractor's cache too
        settings = TrainSettings(epochs=1, batch_size=64, max_images=max_images, extra=extra)
        trained = get_purifier("feature-dae", "mnist", settings=settings,
                               train_data=lambda: mnist_train)
        return _weights(trained), trained.config["metrics"]["networks"][0]["origin"]

    cold, origin = train(tmp_path / "cold", 128)
    assert origin == "trained"  # its extractor was trained inside its training
    train(tmp_path / "warm", 64)  # another setting puts the same extractor in the cache
    warm, origin = train(tmp_path / "warm", 128)  # the first purifier again
    assert origin == "cache"
    assert all(torch.equal(cold[k], warm[k]) for k in cold)


def test_thread_override_is_checked_and_keyed(tmp_path, monkeypatch, mnist_train):
    from aepurify.errors import ConfigError

    monkeypatch.setenv(TRAIN_THREADS_ENV, "zero")
    with pytest.raises(ConfigError, match=TRAIN_THREADS_ENV):
        train_threads()
    settings = TrainSettings(epochs=0, max_images=64)
    monkeypatch.setenv(TRAIN_THREADS_ENV, "1")
    one = get_classifier("lenet", "mnist", settings=settings, train_data=lambda: mnist_train,
                         cache_dir=tmp_path)
    monkeypatch.delenv(TRAIN_THREADS_ENV)
    default = get_classifier("lenet", "mnist", settings=settings,
                             train_data=lambda: mnist_train, cache_dir=tmp_path)
    assert one.key != default.key  # models trained with other arithmetic are not mixed
