"""ImageNet material offline: the packaged EfficientNet-Lite0 (one forward pass on the 20 foolbox
samples), imagenet-samples, image folders (made here), multi-scale crops, and the config paths
that reach them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from aepurify.data import (ImageFolderOptions, dataset_spec, imagenet_classes, load_crops,
                           load_dataset, load_image_folder, load_training_data, register_dataset)
from aepurify.data.crops import multiscale_crops
from aepurify.data.folders import resize_center_crop
from aepurify.errors import ConfigError, DataError
from aepurify.models import create_classifier, is_pretrained
from aepurify.training import TrainSettings, get_classifier


@pytest.fixture(scope="module")
def samples():
    return load_dataset("imagenet-samples", "test")


@pytest.fixture(scope="module")
def effnet():
    return create_classifier("efficientnet-lite0", dataset="imagenet-samples")


def test_imagenet_samples_are_the_foolbox_images(samples):
    assert samples.images.shape == (20, 3, 224, 224) and samples.images.dtype == torch.uint8
    assert samples.labels.tolist()[:4] == [243, 559, 438, 990]  # imagenet_00_243.jpg, ...
    assert samples.num_classes == 1000 and samples.classes[243] == "Bullmastiff"
    assert "foolbox" in samples.source
    spec = dataset_spec("imagenet-samples")
    assert spec.image_shape == (3, 224, 224) and "foolbox samples" in spec.note
    with pytest.raises(ConfigError, match="test set only"):  # never trained on
        load_dataset("imagenet-samples", "train")


def test_efficientnet_lite0_pretrained_accuracy_on_the_samples(samples, effnet):
    """One forward pass of the packaged weights: 18 of the 20 samples (0.90), the figure
    measured by hand with the TF-Lite input convention (docs/imagenet.md)."""
    x, y = samples.tensors()
    with torch.no_grad():
        logits = effnet(x)
    assert logits.shape == (20, 1000)
    assert (logits.argmax(1) == y).float().mean().item() >= 0.85
    assert effnet.mean.flatten().tolist() == pytest.approx([127 / 255] * 3)
    assert effnet.std.flatten().tolist() == pytest.approx([128 / 255] * 3)


def test_efficientnet_folded_batchnorm_matches_and_gradient_is_nchw(samples, effnet):
    x, _ = samples.tensors(slice(0, 2))
    plain = create_classifier("efficientnet-lite0", fold=False)
    with torch.no_grad():
        assert torch.allclose(effnet(x), plain(x), atol=1e-3)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(effnet(xg)[:, 0].sum(), xg)
    assert grad.is_contiguous() and grad.abs().sum() > 0  # channels-last inside, NCHW out


def test_efficientnet_is_pretrained_not_trained():
    assert is_pretrained("efficientnet-lite0") and not is_pretrained("lenet")
    trained = get_classifier("efficientnet-lite0", "imagenet-samples", train_data=None)
    assert trained.origin == "pretrained" and trained.path is None
    with pytest.raises(ConfigError, match="does not fit data set mnist"):
        create_classifier("efficientnet-lite0", dataset="mnist")
    with pytest.raises(ConfigError, match="1000 ImageNet classes"):
        create_classifier("efficientnet-lite0", num_classes=10)


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet paper"


def _write_folder(root, classes, per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_by_class_folders(tmp_path):
    _write_folder(tmp_path, ["zebra", "apple"], per_class=3)
    data = load_image_folder({"root": str(tmp_path), "image_size": 16})
    assert data.images.shape == (6, 3, 16, 16)
    assert data.classes == ("apple", "zebra")
    assert data.labels.tolist() == [0, 1, 0, 1, 0, 1]  # round-robin over the classes
    assert data.name == f"imagefolder-{tmp_path.name}"
    assert len(load_image_folder({"root": str(tmp_path), "image_size": 16,
                                  "max_images": 4})) == 4


def test_image_folder_of_imagenet_synsets_uses_imagenet_indices(tmp_path):
    _write_folder(tmp_path, ["n01443537", "n01440764"], per_class=1)  # goldfish, tench
    data = load_image_folder({"root": str(tmp_path), "image_size": 8})
    assert data.num_classes == 1000 and sorted(data.labels.tolist()) == [0, 1]
    assert data.classes[1] == "goldfish"
    assert load_image_folder({"root": str(tmp_path), "image_size": 8,
                              "classes": "folders"}).classes == ("n01440764", "n01443537")


def test_image_folder_from_csv(tmp_path):
    _write_folder(tmp_path, ["imgs"], per_class=3)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([("file", "label", "class"), ("imgs/0.png", 2, "cat"),
                          ("imgs/1.png", 0, "dog"), ("imgs/2.png", 2, "cat")])
    data = load_image_folder({"root": str(tmp_path), "csv": "labels.csv", "image_size": 12})
    assert data.classes == ("dog", "1", "cat") and data.labels.tolist() == [0, 2, 2]
    (tmp_path / "bad.csv").write_text("file,label\nimgs/0.png,x\n")
    with pytest.raises(DataError, match="line 2: label 'x' is not an integer"):
        load_image_folder({"root": str(tmp_path), "csv": "bad.csv", "image_size": 12})


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder({"root": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder({"root": str(tmp_path / "empty")})
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.jpg").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_image_folder({"root": str(tmp_path / "broken"), "image_size": 8})
    with pytest.raises(ConfigError, match="image_size"):
        register_dataset({"kind": "imagefolder", "root": str(tmp_path), "image_size": "big"})
    with pytest.raises(ConfigError, match="built-in data set"):
        register_dataset({"kind": "imagefolder", "root": str(tmp_path / "broken"),
                          "name": "mnist"})


def test_resize_256_center_crop_224():
    image = Image.new("RGB", (512, 384))
    image.paste((255, 0, 0), (0, 0, 512, 384))
    image.paste((0, 0, 255), (0, 0, 40, 384))  # a blue band that the center crop drops
    crop = resize_center_crop(image, 224)
    assert crop.size == (224, 224)  # shorter side 384 -> 256, width 512 -> 341, then 224
    assert np.asarray(crop)[:, :, 2].max() < 30


def test_image_folder_as_config_dataset(tmp_path):
    from aepurify.evaluation.config_file import parse_config

    _write_folder(tmp_path / "val", ["a", "b", "c"], per_class=2)
    folder = {"kind": "imagefolder", "root": str(tmp_path / "val"), "image_size": 32,
              "name": "my-folder"}
    config = parse_config({"dataset": folder, "classifier": {"arch": "small-cnn"}})
    assert config.dataset == "my-folder" and config.dataset_source == folder
    spec = dataset_spec("my-folder")
    assert spec.image_shape == (3, 32, 32) and spec.num_classes == 3
    assert len(load_dataset("my-folder", "test")) == 6
    again = parse_config(config.model_dump(mode="json"))  # a dumped config registers it again
    assert again.dataset == "my-folder"


def test_multiscale_crops_mosaic_small_scales():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    gen = torch.Generator().manual_seed(0)
    crops, origin = multiscale_crops(images, 16, [1.0, 4.0], 6, gen)
    assert crops.shape == (6, 3, 16, 16) and origin.shape == (6,)
    mosaic, zoomed = crops[0], crops[1]  # x1: a 2 x 2 grid of 8 px images; x4: one image
    assert mosaic[:, :8, :8].unique().numel() == 1
    assert zoomed.unique().tolist() == [int(images[origin[1], 0, 0, 0])]


def test_crops_of_cifar10_jpeg_as_training_source(shared_data):
    settings = TrainSettings(data={"kind": "crops", "size": 48, "scales": [1, 3], "count": 40})
    assert settings.model_dump()["data"]["source"] == "cifar10-jpeg"  # part of the cache key
    data = load_training_data(settings.data, shared_data)
    assert data.images.shape == (40, 3, 48, 48) and data.name == "crops-cifar10-jpeg-48px"
    again = load_crops(settings.data, str(shared_data))
    assert torch.equal(data.images, again.images)  # seeded
    with pytest.raises(ConfigError, match="scales"):
        load_training_data({"kind": "crops", "scales": [0]}, shared_data)


def test_image_folder_options_defaults():
    opts = ImageFolderOptions(root="x")
    assert opts.image_size == 224 and opts.resize is None and opts.classes == "auto"


@pytest.mark.parametrize("name", ["s2snet-imagenet", "apudae-imagenet", "patch-vae-imagenet"])
def test_shipped_imagenet_paper_configs_are_valid(name):
    from aepurify.evaluation.config_file import load_config
    from aepurify.resources import find_config

    config = load_config(find_config(f"papers/{name}"))
    assert config.dataset == "imagenet-samples" and config.classifier.arch == "efficientnet-lite0"
    assert all(p.train.data is not None for p in config.purifiers
               if p.name in ("s2snet", "apudae", "magnet", "patch-vae"))  # never the 20 images
    eps = {e for a in config.attacks for e in a.eps}
    assert 4 / 255 in eps and all(a.params.get("steps") in (10, 20) for a in config.attacks)


def test_imagenet_pipeline_end_to_end_on_two_samples(tmp_path):
    """EfficientNet-Lite0 (pretrained, not trained) on imagenet-samples, a MagNet reformer
    trained on crops of an image folder made here, attacked gray-box and white-box: the whole
    path a 224 px config takes, on 2 images."""
    from aepurify.evaluation import evaluate
    from aepurify.evaluation.config_file import parse_config

    _write_folder(tmp_path / "natural", ["a", "b"], per_class=4, size=(64, 48))
    crops = {"kind": "crops", "source": {"kind": "imagefolder", "root": str(tmp_path / "natural"),
                                         "image_size": 48}, "size": 32, "scales": [1, 2],
             "count": 32}
    config = parse_config({
        "name": "imagenet-tiny", "dataset": "imagenet-samples", "n_test": 2, "batch_size": 2,
        "classifier": {"arch": "efficientnet-lite0"},
        "purifiers": [{"name": "magnet", "params": {"in_channels": 3, "pool": False},
                       "train": {"epochs": 1, "batch_size": 16, "data": crops}}],
        "threat_models": ["gray-box", "white-box"],
        "attacks": [{"name": "fgsm", "norm": "linf", "eps": ["4/255"]}],
    })
    rows = evaluate(config, tmp_path / "run").rows
    got = {(r.purifier, r.threat_model) for r in rows}
    assert {("none", "none"), ("magnet", "none"), ("magnet", "gray-box"),
            ("magnet", "white-box")} <= got
    assert all(r.dataset == "imagenet-samples" and r.n == 2 for r in rows)
    record = (tmp_path / "run" / "run.json").read_text()
    assert "crops-imagefolder-natural-32px" in record and "pretrained" in record


@pytest.mark.parametrize("dataset, fragment", [
    ({"kind": "imagefolder", "root": "/nonexistent/val"},
     "image folder /nonexistent/val does not exist"),
    ({"kind": "imagefolder", "root": "x", "image_size": 2}, "image_size"),
    ({"kind": "tfrecords", "root": "x"}, "kind: imagefolder"),
])
def test_bad_image_folder_in_a_config_is_one_line(tmp_path, dataset, fragment):
    import yaml

    from .test_cli import assert_one_line_error, run_cli

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": dataset, "classifier": {"arch": "lenet"}}))
    assert_one_line_error(run_cli("evaluate", str(path), "--out", str(tmp_path / "o")), fragment)
