"""The command line: one clear line on stderr and exit status 2 for bad input, never a
traceback; and the train / purify commands on real data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AEPURIFY_PROGRESS": "0", "AEPURIFY_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "aepurify.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "lenet"
    proc = run_cli("train", "classifier", "--dataset", "mnist", "--arch", "lenet", "--epochs", "1",
                   "--max-images", "1000", "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out


def test_train_classifier_writes_safetensors_and_json(lenet_checkpoint):
    config = json.loads((lenet_checkpoint / "config.json").read_text())
    assert config["kind"] == "classifier" and config["name"] == "lenet"
    assert config["metrics"]["test_accuracy"] > 0.7 and config["seed"] == 0
    assert (lenet_checkpoint / "model.safetensors").is_file()


def test_missing_data_directory(tmp_path):
    proc = run_cli("train", "classifier", "--dataset", "mnist", "--arch", "lenet",
                   "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "nope"))
    assert_one_line_error(proc, "data directory", "does not exist")


def test_corrupt_data_file(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in (REPO / "data" / "mnist").glob("*.gz"):
        shutil.copy(f, folder / f.name)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(bad.read_bytes())
    blob[-12] ^= 0xFF
    bad.write_bytes(bytes(blob))
    proc = run_cli("train", "classifier", "--dataset", "mnist", "--arch", "lenet",
                   "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path))
    assert_one_line_error(proc, "t10k-labels-idx1-ubyte.gz")


def test_checkpoint_of_another_architecture(tmp_path, lenet_checkpoint):
    config = {"dataset": "mnist", "n_test": 20,
              "classifier": {"arch": "small-cnn", "checkpoint": str(lenet_checkpoint)},
              "attacks": []}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("evaluate", str(path), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "holds classifier 'lenet'", "'small-cnn'")


@pytest.mark.parametrize("field,value,fragment", [
    ("purifiers", [{"name": "autoencoder"}], "unknown purifier 'autoencoder'"),
    ("attacks", [{"name": "deepfoool", "eps": [0.1]}], "unknown attack 'deepfoool'"),
])
def test_unknown_names_in_a_config(tmp_path, field, value, fragment):
    config = {"dataset": "mnist", "classifier": {"arch": "lenet"}, field: value}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("evaluate", str(path), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, fragment)


def test_missing_config_and_bad_yaml(tmp_path):
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "none.yaml"), "--out",
                                  str(tmp_path)), "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [mnist\n")
    assert_one_line_error(run_cli("evaluate", str(bad), "--out", str(tmp_path)), "not valid YAML")


def test_purify_images(tmp_path, mnist_test):
    from aepurify.data import save_image_files

    x, _ = mnist_test.tensors(slice(0, 3))
    files = [tmp_path / f"digit{i}.png" for i in range(3)]
    save_image_files(x, files)
    proc = run_cli("purify", *map(str, files), "--purifier", "bit-depth", "--param", "bits=1",
                   "--out", str(tmp_path / "clean"))
    assert proc.returncode == 0, proc.stderr
    from PIL import Image
    import numpy as np

    out = np.asarray(Image.open(tmp_path / "clean" / "digit0.png"))
    assert out.shape == (28, 28) and set(np.unique(out)) <= {0, 255}


def test_purify_bad_inputs(tmp_path):
    proc = run_cli("purify", str(tmp_path / "missing.png"), "--purifier", "jpeg", "--out",
                   str(tmp_path))
    assert_one_line_error(proc, "image file not found")
    proc = run_cli("purify", str(tmp_path / "x.png"), "--purifier", "magnet", "--out",
                   str(tmp_path))
    assert_one_line_error(proc, "must be trained first")


def test_bad_training_option(tmp_path):
    proc = run_cli("train", "classifier", "--dataset", "mnist", "--arch", "lenet", "--epochs",
                   "-1", "--out", str(tmp_path))
    assert_one_line_error(proc, "--epochs")
