"""The ``aepurify`` command.

    aepurify demo [--out DIR] [--n-test N] [--set dotted.key=value ...]
    aepurify evaluate CONFIG.yaml --out DIR [--n-test N] [--set dotted.key=value ...]
    aepurify train classifier --dataset mnist --arch lenet --epochs 2 --out DIR
    aepurify train purifier magnet --dataset mnist --out DIR
    aepurify train purifier s2snet --dataset mnist --classifier DIR --extra target=label --out DIR
    aepurify purify --purifier DIR_OR_NAME IMAGE... --out DIR
    aepurify audit --classifier MODULE:FACTORY --purifier NAME|DIR|MODULE:FACTORY --data mnist \\
        --eps 0.3 --out DIR
    aepurify certify certify/mnist-sigma0.5 --out DIR     (certified beside attacked accuracy)
    aepurify certify --classifier DIR --purifier DIR --data mnist --sigma 0.5 --out DIR
    aepurify list
    torchrun --nproc-per-node N -m aepurify evaluate|train ...   (several ranks: docs/scale.md)

Bad input (missing data, corrupt files, a checkpoint of another architecture, unknown names in
a config, images outside [0, 1]) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys

from ..allocator import tune_allocator
from ..errors import AepurifyError, RankFailedError
from . import audit, certify, evaluate, purify, train  # noqa: F401  (register the commands)
from .app import _overrides, app, console  # noqa: F401  (_overrides: tests import it here)
from .evaluate import _exit_on_failed_rows  # noqa: F401  (likewise)

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; turn aepurify's errors into one line and exit status 2."""
    # aepurify's own progress notes at INFO; other libraries' only from WARNING up (ART, for
    # one, announces "set ART_DATA_PATH to ..." at INFO when it is first imported)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("aepurify").setLevel(logging.INFO)
    tune_allocator()  # glibc keeps freed tensors' memory: 1.3x on CPU training (allocator.py)
    try:
        app(args=argv, prog_name="aepurify")
    except RankFailedError:  # under torchrun: the failed rank printed the problem itself
        sys.exit(2)
    except AepurifyError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # outside a command (typer maps a command's to exit 130)
        console.print("interrupted", highlight=False)
        sys.exit(130)
