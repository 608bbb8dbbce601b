"""Untrusted files cannot exhaust memory: a gzip bomb in a data folder is inflated no further
than its IDX header says, and a checkpoint's config.json cannot ask for a model whose weights
its safetensors file could not hold."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib

import pytest

from aepurify.checkpoint import save_checkpoint
from aepurify.data.mnist import MAX_IDX_BYTES, read_idx_gz
from aepurify.errors import CheckpointError, DataError
from aepurify.models import create_classifier, load_classifier
from aepurify.purifiers import create_purifier, load_purifier

from .conftest import REPO


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def _gzip_stream(path, head: bytes, zeros: int) -> None:
    """Write head + ``zeros`` zero bytes gzip-compressed, without holding them in memory."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(comp.compress(head))
        for _ in range(zeros // len(chunk)):
            f.write(comp.compress(chunk))
        f.write(comp.flush())


def test_gzip_bomb_is_not_inflated(tmp_path):
    bomb = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _gzip_stream(bomb, _idx_header(10_000), 256 << 20)  # 256 MiB of zeros after 10,000 labels
    assert bomb.stat().st_size < 2 << 20  # a bomb: 1 MiB on disk or so, 256 MiB inflated
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="payload has more than 10,000 bytes"):
            read_idx_gz(bomb, "0" * 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"inflated {peak:,} bytes"


def test_idx_header_above_the_cap_is_refused(tmp_path):
    huge = tmp_path / "train-images-idx3-ubyte.gz"
    huge.write_bytes(gzip.compress(_idx_header(2**31, 28, 28)))
    with pytest.raises(DataError, match="more than any MNIST file holds"):
        read_idx_gz(huge, "0" * 32)
    assert 60_000 * 28 * 28 + 16 < MAX_IDX_BYTES  # the real training images fit


def test_real_mnist_still_reads():
    from aepurify.data.mnist import RAW_MD5

    name = "t10k-labels-idx1-ubyte.gz"
    labels = read_idx_gz(REPO / "data" / "mnist" / name, RAW_MD5["mnist"][name])
    assert labels.shape == (10_000,) and labels.max() == 9


def test_truncated_payload_is_named(tmp_path):
    short = tmp_path / "t10k-labels-idx1-ubyte.gz"
    short.write_bytes(gzip.compress(_idx_header(100) + bytes(40)))
    with pytest.raises(DataError, match="payload has 40 bytes, not 100 bytes"):
        read_idx_gz(short, "0" * 32)


@pytest.mark.parametrize("kind,build,load,hparams", [
    ("purifier", lambda: create_purifier("magnet", "mnist"), load_purifier,
     {"filters": 1_000_000}),  # 9e12 weights: tens of terabytes
    ("classifier", lambda: create_classifier("small-cnn", "mnist"), load_classifier,
     {"width": 200_000}),
])
def test_crafted_hparams_are_refused_before_allocation(tmp_path, kind, build, load, hparams):
    module = build()
    name = "magnet" if kind == "purifier" else "small-cnn"
    ckpt = save_checkpoint(module, tmp_path / name, kind=kind, name=name, dataset="mnist")
    config = json.loads((ckpt / "config.json").read_text())
    config["hparams"].update(hparams)
    (ckpt / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not match architecture .* has shape"):
        load(ckpt)
    assert time.perf_counter() - start < 10  # nothing of that size was built


def test_checkpoint_name_must_be_a_string(tmp_path):
    ckpt = save_checkpoint(create_purifier("magnet", "mnist"), tmp_path / "m", kind="purifier",
                           name="magnet", dataset="mnist")
    config = json.loads((ckpt / "config.json").read_text())
    config["name"] = ["magnet"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'name' must be a string"):
        load_purifier(ckpt)
