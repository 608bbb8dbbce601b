"""Classifiers and checkpoints: shapes, registry errors, safetensors round trip, mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch

from aepurify.checkpoint import save_checkpoint
from aepurify.errors import CheckpointError, ConfigError, InputError
from aepurify.models import CLASSIFIERS, create_classifier, load_classifier


@pytest.mark.parametrize("arch,dataset", [("lenet", "mnist"), ("small-cnn", "mnist"),
                                          ("resnet18", "cifar10"), ("vgg11", "cifar10"),
                                          ("lenet", "cifar10-jpeg")])
def test_classifier_shapes(arch, dataset):
    torch.manual_seed(0)
    params = {"width": 8} if arch in ("resnet18", "vgg11") else {}
    model = create_classifier(arch, dataset, **params).eval()
    c, s = model.input_shape[0], model.input_shape[1]
    x = torch.rand(3, c, s, s)
    assert model(x).shape == (3, 10)
    assert model.features(x).ndim == 2


def test_normalisation_lives_inside_the_module():
    model = create_classifier("lenet", "mnist")
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.1307]))
    assert "mean" in model.state_dict()


def test_classifier_rejects_bad_images():
    model = create_classifier("lenet", "mnist")
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        model(torch.full((2, 1, 28, 28), 2.0))
    with pytest.raises(InputError, match="28x28"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(InputError, match="channel"):
        model(torch.rand(2, 3, 28, 28))


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="unknown classifier 'lenett'.*did you mean 'lenet'"):
        create_classifier("lenett", "mnist")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("lenet", "mnist").eval()
    save_checkpoint(model, tmp_path / "ck", kind="classifier", name="lenet", dataset="mnist",
                    seed=0)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["hparams"]["in_channels"] == 1 and config["seed"] == 0
    assert config["code_version"] and config["dataset"] == "mnist"
    loaded, _ = load_classifier(tmp_path / "ck", "lenet")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in (tmp_path / "ck").iterdir())


def test_checkpoint_of_another_architecture(tmp_path):
    model = create_classifier("lenet", "mnist")
    save_checkpoint(model, tmp_path / "ck", kind="classifier", name="lenet")
    with pytest.raises(CheckpointError, match="holds classifier 'lenet'.*'small-cnn'"):
        load_classifier(tmp_path / "ck", "small-cnn")


def test_checkpoint_with_mismatched_shapes(tmp_path):
    small = create_classifier("small-cnn", "mnist", width=8)
    save_checkpoint(small, tmp_path / "ck", kind="classifier", name="small-cnn")
    config_path = tmp_path / "ck" / "config.json"
    config = json.loads(config_path.read_text())
    config["hparams"]["width"] = 16  # the weights are for width 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match architecture 'small-cnn'.*shape"):
        load_classifier(tmp_path / "ck")


def test_corrupt_and_missing_checkpoints(tmp_path):
    model = create_classifier("lenet", "mnist")
    save_checkpoint(model, tmp_path / "ck", kind="classifier", name="lenet")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_classifier(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_classifier(tmp_path / "missing")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint config"):
        load_classifier(tmp_path / "ck")


def test_registry_lists_the_three_required_architectures():
    assert {"lenet", "small-cnn", "resnet18"} <= set(CLASSIFIERS.names())
