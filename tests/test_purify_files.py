"""`aepurify purify` keeps every image it is given and changes none silently: same-stem inputs,
16-bit PNGs, grayscale versus colour, alpha channels and decompression bombs."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aepurify.data import read_image_files
from aepurify.errors import DataError, InputError

from .test_cli import assert_one_line_error, run_cli


def _grey(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _rgb(path: Path) -> Path:
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height 8-bit grey pixels (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def test_same_stem_inputs_are_mirrored_not_overwritten(tmp_path):
    a = _grey(tmp_path / "img" / "digit.png", 0)
    b = _grey(tmp_path / "img" / "sub" / "digit.png", 1)
    out = tmp_path / "clean"
    proc = run_cli("purify", str(a), str(b), "--purifier", "median", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "purified 2 image(s)" in proc.stderr
    first = np.asarray(Image.open(out / "digit.png"))
    second = np.asarray(Image.open(out / "sub" / "digit.png"))
    assert not np.array_equal(first, second)  # two inputs, two different outputs


def test_inputs_that_would_share_an_output_are_refused(tmp_path):
    png = _grey(tmp_path / "img" / "digit.png")
    sub = _grey(tmp_path / "img" / "sub" / "digit.png")
    jpg = tmp_path / "img" / "digit.jpg"
    Image.open(png).save(jpg)
    out = tmp_path / "clean"
    proc = run_cli("purify", str(png), str(sub), str(jpg), "--purifier", "jpeg", "--out",
                   str(out))
    assert_one_line_error(proc, "digit.png", "digit.jpg", "would both be written")
    assert not out.exists()  # refused before anything was written
    proc = run_cli("purify", str(png), "--purifier", "jpeg", "--out", str(png.parent))
    assert_one_line_error(proc, "would overwrite it")


def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    levels = (np.arange(28 * 28).reshape(28, 28) % 72 * 900).astype(np.uint16)  # 72 levels
    src = tmp_path / "deep.png"
    Image.fromarray(levels).save(src)
    x, infos = read_image_files([src])
    assert infos[0].bits == 16 and x.shape == (1, 1, 28, 28)
    assert torch.allclose(x[0, 0], torch.from_numpy(levels.astype(np.float32) / 65535))
    proc = run_cli("purify", str(src), "--purifier", "median", "--param", "kernel_size=1",
                   "--out", str(tmp_path / "clean"))
    assert proc.returncode == 0, proc.stderr
    back = np.asarray(Image.open(tmp_path / "clean" / "deep.png"))
    assert back.dtype == np.uint16 and len(np.unique(back)) == 72
    assert np.array_equal(back, levels)  # kernel 1 is the identity, at 16 bits


def test_channels_come_from_the_image_or_the_checkpoint(tmp_path):
    from aepurify.checkpoint import save_checkpoint
    from aepurify.purifiers import create_purifier

    photo = _rgb(tmp_path / "photo.png")
    proc = run_cli("purify", str(photo), "--purifier", "jpeg", "--out", str(tmp_path / "c1"))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "c1" / "photo.png").mode == "RGB"  # not turned grey

    grey_ckpt = save_checkpoint(create_purifier("magnet", "mnist"), tmp_path / "magnet",
                                kind="purifier", name="magnet", dataset="mnist")
    proc = run_cli("purify", str(photo), "--purifier", str(grey_ckpt), "--out",
                   str(tmp_path / "c2"))
    assert_one_line_error(proc, "photo.png", "colour", "--channels 1")
    proc = run_cli("purify", str(photo), "--purifier", str(grey_ckpt), "--channels", "3",
                   "--out", str(tmp_path / "c2"))
    assert_one_line_error(proc, "--channels 3 does not match", "takes 1 channel")
    proc = run_cli("purify", str(photo), "--purifier", str(grey_ckpt), "--param", "filters=8",
                   "--out", str(tmp_path / "c2"))
    assert_one_line_error(proc, "--param sets a purifier given by name")


def test_mixed_channels_and_explicit_conversion(tmp_path):
    grey, photo = _grey(tmp_path / "g.png"), _rgb(tmp_path / "c.png")
    with pytest.raises(InputError, match="mix grayscale and colour"):
        read_image_files([grey, photo])
    x, infos = read_image_files([grey, photo], channels=1)
    assert x.shape == (2, 1, 28, 28) and [i.channels for i in infos] == [1, 3]
    with pytest.raises(InputError, match="pass --channels 1"):
        read_image_files([grey, photo], channels=1, convert=False)


def test_decompression_bomb_is_one_line(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DataError, match="refusing image"):
        read_image_files([bomb])
    proc = run_cli("purify", str(bomb), "--purifier", "jpeg", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "bomb.png", "pixels")


def test_alpha_channel_dropped_is_said(tmp_path, caplog):
    rgba = np.random.default_rng(2).integers(0, 256, (28, 28, 4), dtype=np.uint8)
    path = tmp_path / "logo.png"
    Image.fromarray(rgba).save(path)
    with caplog.at_level(logging.WARNING):
        x, infos = read_image_files([path, _rgb(tmp_path / "plain.png")])
    assert x.shape == (2, 3, 28, 28) and [i.alpha for i in infos] == [True, False]
    said = [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]
    assert len(said) == 1 and "logo.png" in said[0] and "plain.png" not in said[0]
    assert torch.allclose(x[0], torch.from_numpy(rgba[..., :3].transpose(2, 0, 1) / 255).float())
