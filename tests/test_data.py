"""Data loaders on the real files: shapes, label counts, checksums, clear errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aepurify.data import load_dataset
from aepurify.data import cifar10 as cifar_mod
from aepurify.errors import ConfigError, DataError

from .conftest import REPO

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_test_split_from_embedded_copy(mnist_test):
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.images.dtype == torch.uint8
    assert torch.bincount(mnist_test.labels).tolist() == MNIST_TEST_COUNTS
    assert Path(mnist_test.source).resolve() == (REPO / "data" / "mnist").resolve()


def test_mnist_train_split(mnist_train):
    assert mnist_train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(mnist_train.labels).sum() == 60000
    assert torch.bincount(mnist_train.labels)[1] == 6742  # the canonical count of ones


def test_tensors_are_float_in_unit_range(mnist_test):
    x, y = mnist_test.tensors(slice(0, 64))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) == 1.0
    assert y.tolist()[:5] == [7, 2, 1, 0, 4]


def test_fashion_mnist_from_shared_copy(shared_data):
    test = load_dataset("fashion-mnist", "test", shared_data)
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[9] == "Ankle boot"


def test_cifar10_jpeg_copy(shared_data):
    test = load_dataset("cifar10-jpeg", "test", shared_data)
    assert test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.name == "cifar10-jpeg"  # travels into every result row


def _copy_mnist(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in (REPO / "data" / "mnist").glob("t10k-*.gz"):
        shutil.copy(f, folder / f.name)
    return folder


def test_corrupt_gzip_fails_with_clear_error(tmp_path):
    folder = _copy_mnist(tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", tmp_path)


def test_altered_pixels_fail_the_checksum(tmp_path):
    folder = _copy_mnist(tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[5000] ^= 0x01  # one pixel, valid gzip: only the checksum can notice
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("mnist", "test", tmp_path)


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", "test", tmp_path / "nowhere")


def test_missing_files_offline_names_the_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "test", tmp_path)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg and "\n" not in msg


def test_environment_variable_names_the_folder(tmp_path, monkeypatch):
    _copy_mnist(tmp_path)
    monkeypatch.setenv("AEPURIFY_DATA", str(tmp_path))
    test = load_dataset("mnist", "test")
    assert Path(test.source) == tmp_path / "mnist"
    monkeypatch.setenv("AEPURIFY_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="AEPURIFY_DATA"):
        load_dataset("mnist", "test")


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="unknown data set 'mnsit'.*mnist"):
        load_dataset("mnsit")
    with pytest.raises(ConfigError, match="split"):
        load_dataset("mnist", "validation")


def _fake_cifar_official(path: Path, batch_payload: dict | None = None) -> str:
    """A tiny archive in the official layout (5 + 1 batches of 4 images)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            payload = batch_payload or {
                b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                b"labels": [0, 1, 2, 3]}
            blob = pickle.dumps(payload, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar_official_is_verified_before_unpickling(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    md5 = _fake_cifar_official(path)
    with pytest.raises(DataError, match="checksum mismatch"):  # not the official md5
        cifar_mod.load_cifar10_official("test", path)
    data = cifar_mod.load_cifar10_official("train", path, expected_md5=md5)
    assert data.images.shape == (20, 3, 32, 32) and data.labels.tolist()[:4] == [0, 1, 2, 3]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_unpickler_refuses_code_even_with_matching_checksum(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    md5 = _fake_cifar_official(path, batch_payload={b"data": _Evil(), b"labels": [0]})
    with pytest.raises(DataError, match="not allowed"):
        cifar_mod.load_cifar10_official("test", path, expected_md5=md5)


def test_cifar_jpeg_format_reader(tmp_path):
    from PIL import Image

    path = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        csv_text = "index,label,class\n0,3,cat\n1,8,ship\n"
        for name, blob in [("cifar10-jpeg/test_labels.csv", csv_text.encode())] + [
            (f"cifar10-jpeg/test/{i:05d}.jpg", _jpeg_bytes(Image, i)) for i in (1, 0)]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="checksum mismatch"):
        cifar_mod.load_cifar10_jpeg("test", path)
    data = cifar_mod.load_cifar10_jpeg("test", path, expected_sha256=sha)
    assert data.images.shape == (2, 3, 32, 32) and data.labels.tolist() == [3, 8]
    assert int(data.images[1].float().mean()) > int(data.images[0].float().mean())  # order kept


def _jpeg_bytes(Image, value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value * 200, value * 200, value * 200)).save(buf, "JPEG")
    return buf.getvalue()


def test_cifar_jpeg_decoded_arrays_are_cached_by_checksum(tmp_path, monkeypatch):
    """The second load reads the cached arrays (no JPEG is decoded); a corrupt cache file is
    decoded anew; another archive (another checksum) gets its own entry."""
    from PIL import Image

    monkeypatch.setenv("AEPURIFY_CACHE", str(tmp_path / "cache"))

    def archive(name: str, values: tuple[int, int]) -> tuple[Path, str]:
        path = tmp_path / name / "cifar10-jpeg.tar.gz"
        path.parent.mkdir()
        with tarfile.open(path, "w:gz") as tf:
            csv_text = "index,label,class\n0,3,cat\n1,8,ship\n"
            for member, blob in [("cifar10-jpeg/test_labels.csv", csv_text.encode())] + [
                    (f"cifar10-jpeg/test/{i:05d}.jpg", _jpeg_bytes(Image, v))
                    for i, v in enumerate(values)]:
                info = tarfile.TarInfo(member)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
        return path, hashlib.sha256(path.read_bytes()).hexdigest()

    path, sha = archive("a", (0, 1))
    first = cifar_mod.load_cifar10_jpeg("test", path, expected_sha256=sha)
    cache_file = cifar_mod.decoded_cache_file(sha, "test")
    assert cache_file.is_file()
    with monkeypatch.context() as m:
        m.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded again"))
        again = cifar_mod.load_cifar10_jpeg("test", path, expected_sha256=sha)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.images.dtype == torch.uint8 and again.labels.dtype == torch.int64
    cache_file.write_bytes(b"not an npz")
    assert torch.equal(cifar_mod.load_cifar10_jpeg("test", path, expected_sha256=sha).images,
                       first.images)
    other, other_sha = archive("b", (1, 1))
    assert other_sha != sha
    assert cifar_mod.load_cifar10_jpeg("test", other, expected_sha256=other_sha).images[0].float(
        ).mean() > first.images[0].float().mean()
