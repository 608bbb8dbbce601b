"""``aepurify purify`` (clean image files with a purifier) and ``aepurify list``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from .app import _params, app, console


@app.command()
def purify(
    images: Annotated[list[Path], typer.Argument(help="Image files of one size.")],
    purifier: Annotated[str, typer.Option(help="Checkpoint directory or purifier name.")],
    out: Annotated[Path, typer.Option(help="Folder for the purified images (PNG; inputs' "
                                           "sub-folders are mirrored).")],
    channels: Annotated[Optional[int], typer.Option(
        help="Convert the images to 1 (grayscale) or 3 (RGB) channels. Default: the "
             "checkpoint's channels, else the images' own; an image with other channels is "
             "refused rather than converted.")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        help="Purifier parameter key=value, for a purifier given by name.")] = None,
) -> None:
    """Purify image files with a trained purifier (or an untrained transform by name)."""
    import torch

    from ..data import read_image_files, save_image_files
    from ..purifiers import create_purifier, load_purifier, purifier_class

    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3; got {channels}")
    targets = _purified_paths(images, out)
    path = Path(purifier)
    module = None
    takes = None
    if path.exists():
        if param:
            raise ConfigError("--param sets a purifier given by name; a checkpoint brings its own "
                              "parameters")
        module, _ = load_purifier(path)
        takes = module.in_channels
        if channels is not None and takes is not None and channels != takes:
            raise ConfigError(f"--channels {channels} does not match the purifier {path}, which "
                              f"takes {takes} channel(s)")
    elif purifier_class(purifier).trainable:
        raise ConfigError(f"purifier {purifier!r} must be trained first; pass its checkpoint "
                          "directory")
    x, infos = read_image_files(images, channels or takes, convert=channels is not None)
    if module is None:
        module = create_purifier(purifier, **{"in_channels": x.shape[1], **_params(param)})
    with torch.no_grad():
        y = module.eval()(x)
    save_image_files(y, targets, bits=[info.bits for info in infos])
    console.print(f"purified {len(targets)} image(s) into {out}")


def _purified_paths(images: list[Path], out: Path) -> list[Path]:
    """Where each purified image goes: its path relative to the inputs' common folder, under
    ``out``, as PNG. Two inputs that would land on one file, an output that would replace its
    input (InputError), or a file where a folder of the outputs goes (ConfigError) are refused
    before anything is read."""
    import os

    from ..errors import InputError
    from ..utils import check_folder_path

    resolved = [p.resolve() for p in images]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    targets = [out / p.relative_to(root).with_suffix(".png") for p in resolved]
    seen: dict[Path, Path] = {}
    check_folder_path(out)
    for src, src_abs, target in zip(images, resolved, targets, strict=True):
        check_folder_path(target.parent)
        if target.is_dir():
            raise InputError(f"{target} is a folder; the purified {src} would be written there")
        key = target.resolve()
        if key == src_abs and src_abs.exists():
            raise InputError(f"purifying {src} into {out} would overwrite it; pick another --out")
        if key in seen:
            raise InputError(f"{seen[key]} and {src} would both be written to {target}; rename "
                             "one or purify them separately")
        seen[key] = src
    return targets


@app.command("list")
def list_registered() -> None:
    """List data sets, classifiers, purifiers, detectors, threat models and attacks."""
    from ..attacks import ATTACKS, BASES
    from ..data import DATASETS
    from ..detectors import DETECTORS
    from ..models import CLASSIFIERS
    from ..purifiers import PURIFIERS

    out = Console()
    out.print(f"data sets:     {', '.join(DATASETS.names())}")
    out.print(f"classifiers:   {', '.join(CLASSIFIERS.names())}")
    out.print(f"purifiers:     {', '.join(PURIFIERS.names())}")
    out.print(f"detectors:     {', '.join(DETECTORS.names())}")
    out.print(f"threat models: {', '.join(BASES)} (+eot or +fixed)")
    out.print(f"attacks:       {', '.join(ATTACKS.names())}")
