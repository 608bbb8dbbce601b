"""Probes a reliability review ran against the command line as a new user would, each kept as a
test: its input, then one line on stderr, exit status 2 and no file lost (or the right answer).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from .test_cli import assert_one_line_error, run_cli

# A user's own models, as `aepurify audit` imports them from the current folder.
MY_MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def net():
    torch.manual_seed(0)
    return Net()


class RgbNet(nn.Module):
    """Reads normalised 3-channel images."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def rgb_net():
    torch.manual_seed(0)
    return RgbNet()
'''

# The smallest run of `evaluate`: a LeNet trained on 500 images, FGSM on 20.
TINY = {"dataset": "mnist", "n_test": 20,
        "classifier": {"arch": "lenet", "train": {"epochs": 1, "max_images": 500}},
        "attacks": [{"name": "fgsm", "eps": [0.1]}]}


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    return tmp_path


def _audit(cwd: Path, *extra: str):
    return run_cli("audit", "--classifier", "my_models:net", "--data", "mnist", "--n-test", "8",
                   "--version", "quick", *extra, cwd=cwd)


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header announces width x height 8-bit gray pixels (and holds none): Pillow
    checks its pixel limit on the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                     chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_16_bit_png_in_an_image_folder_keeps_its_grey(tmp_path):
    from aepurify.data.folders import load_image_folder

    (tmp_path / "cls").mkdir()
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "cls" / "grey.png")
    assert Image.open(tmp_path / "cls" / "grey.png").mode == "I;16"
    data = load_image_folder({"root": str(tmp_path), "image_size": 16, "channels": 1})
    assert data.images.unique().tolist() == [128]  # 32768 / 65535 of white, not clipped to 255


@pytest.mark.parametrize("width,height,fragment", [
    (30000, 30000, "could be decompression bomb"),   # past twice the limit: Pillow raises
    (10000, 10000, "100000000 pixels"),              # 100 megapixels: Pillow only warns
])
def test_a_huge_image_in_an_image_folder_is_refused(user_dir, width, height, fragment):
    folder = user_dir / "images" / "cls"
    folder.mkdir(parents=True)
    _png_header(folder / "huge.png", width, height)
    proc = run_cli("audit", "--classifier", "my_models:rgb_net", "--data", str(user_dir / "images"),
                   "--image-size", "8", "--eps", "0.1", "--version", "quick", cwd=user_dir)
    assert_one_line_error(proc, "refusing image", "huge.png", fragment)
    assert (folder / "huge.png").is_file()


def test_an_epsilon_past_a_float_is_one_line(user_dir, tmp_path):
    assert_one_line_error(_audit(user_dir, "--eps", "1e400"), "--eps", "finite")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    proc = run_cli("evaluate", str(config), "--out", str(tmp_path / "run"),
                   "--set", "attacks.0.eps=[1e400]")
    assert_one_line_error(proc, "attacks.0.eps", "finite")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("below", [False, True])
def test_an_out_that_is_a_file_is_one_line_and_the_file_stays(user_dir, tmp_path, below):
    taken = tmp_path / "taken.txt"
    taken.write_text("my notes\n")
    out = taken / "sub" if below else taken
    fragment = f"lies below {taken}, which is a file" if below else "is a file, not a folder"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    for proc in (_audit(user_dir, "--eps", "0.1", "--out", str(out)),
                 run_cli("evaluate", str(config), "--out", str(out)),
                 run_cli("purify", str(image), "--purifier", "jpeg", "--out", str(out))):
        assert_one_line_error(proc, f"--out {out}", fragment)
        assert taken.read_text() == "my notes\n"


def test_a_directory_where_the_lock_goes_is_one_line(user_dir, tmp_path):
    out = tmp_path / "run"
    (out / ".aepurify.lock").mkdir(parents=True)
    assert_one_line_error(_audit(user_dir, "--eps", "0.1", "--out", str(out)),
                          ".aepurify.lock is not a file")
    assert (out / ".aepurify.lock").is_dir()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"name: caf\xe9\n" + yaml.safe_dump(TINY).encode())  # Latin-1 e-acute
    proc = run_cli("evaluate", str(config), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "latin1.yaml", "not UTF-8")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_corrupt_results_db_is_one_line_and_the_finished_run_stays(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    first = run_cli("evaluate", str(config), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    db = bytearray((out / "results.db").read_bytes())
    page = 4096  # SQLite's page size here: the first page (its header) stays intact
    assert len(db) > 2 * page
    db[page:] = bytes((i * 37) % 256 for i in range(len(db) - page))
    (out / "results.db").write_bytes(bytes(db))
    before = _snapshot(out)
    proc = run_cli("evaluate", str(config), "--out", str(out))
    assert_one_line_error(proc, "results.db is not a usable results database")
    assert _snapshot(out) == before  # run.json still says finished; nothing else touched


def test_audit_mean_and_std_normalise_an_entry_point(user_dir, tmp_path):
    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    args = ["audit", "--classifier", "my_models:rgb_net", "--data", str(tmp_path / "images"),
            "--image-size", "8", "--eps", "0.1", "--version", "quick"]
    ok = run_cli(*args, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                 cwd=user_dir)
    assert ok.returncode == 0, ok.stderr
    assert "4 classes" in ok.stdout
    wrong = run_cli(*args, "--mean", "0.5,0.5", cwd=user_dir)
    assert_one_line_error(wrong, "mean has 2 values for images of 3 channel(s)")


def test_audit_mean_and_std_of_a_checkpoint_say_why_not(user_dir, tmp_path):
    from aepurify.checkpoint import save_checkpoint
    from aepurify.models import create_classifier

    save_checkpoint(create_classifier("lenet", "mnist"), tmp_path / "lenet", kind="classifier",
                    name="lenet", dataset="mnist")
    proc = run_cli("audit", "--classifier", str(tmp_path / "lenet"), "--data", "mnist",
                   "--n-test", "8", "--eps", "0.1", "--mean", "0.1307", "--std", "0.3081",
                   cwd=user_dir)
    assert_one_line_error(proc, "--mean/--std", "normalises inside itself")


def test_n_test_past_the_data_set_says_so(user_dir, tmp_path):
    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    proc = run_cli("audit", "--classifier", "my_models:rgb_net", "--data",
                   str(tmp_path / "images"), "--image-size", "8", "--eps", "0.1", "--version",
                   "quick", "--n-test", "999999", cwd=user_dir)
    assert proc.returncode == 0, proc.stderr
    assert "--n-test 999999 is more than the 3 images" in proc.stderr
    assert "3 images" in proc.stdout


def test_a_rerun_with_nothing_to_do_never_says_running(tmp_path, monkeypatch):
    from aepurify.evaluation import evaluate, outputs

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    statuses: list[str] = []
    write = outputs.write_record

    def spy(out, record, status):
        statuses.append(status)
        write(out, record, status)

    monkeypatch.setattr(outputs, "write_record", spy)
    evaluate(config, tmp_path / "run")
    assert statuses == ["running", "finished"]
    statuses.clear()
    evaluate(config, tmp_path / "run")
    assert statuses == ["finished"]  # written once the outputs are, never "running" first


def test_lock_folder_check_leaves_no_empty_out(tmp_path):
    from aepurify.errors import ConfigError
    from aepurify.evaluation.lock import output_lock

    taken = tmp_path / "f"
    taken.write_text("x")
    with pytest.raises(ConfigError, match="which is a file"):
        with output_lock(taken / "a" / "b"):
            pass
    assert taken.read_text() == "x"
