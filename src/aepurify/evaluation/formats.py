"""Plain formats every stage shares: CSV files of records, epsilons as text, and untrusted text
(labels from a config, a checkpoint or a file name; error messages) made safe for markdown."""

from __future__ import annotations

import csv
import html
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

# Characters python-markdown gives a meaning to inside a line: code spans, emphasis, links and
# images, table cells. ``<``, ``>`` and ``&`` become entities instead (no raw HTML).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_UNSAFE_IN_FILE_NAMES = re.compile(r"[^A-Za-z0-9_.-]+")


def write_records_csv(records: Iterable[Any], columns: Sequence[str], path: Path,
                      convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Path:
    """Write ``records`` (dataclasses or dicts) as CSV rows with the header ``columns``;
    ``convert`` edits each row's dict (formatting) before it is written. Returns ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for record in records:
            rec = asdict(record) if is_dataclass(record) else dict(record)
            writer.writerow(convert(rec) if convert else rec)
    return path


def fmt_eps(eps: float) -> str:
    """8/255 for multiples of 1/255 that are not round decimals, else the number (0.3, 2)."""
    k = eps * 255
    if 0 < eps < 1 and abs(k - round(k)) < 1e-6 and abs(eps * 100 - round(eps * 100)) > 1e-9:
        return f"{round(k)}/255"
    return f"{eps:g}"


def md_text(value: Any) -> str:
    """``value`` as markdown that renders to exactly its text, on one line.

    For every string the report did not write itself (config names and labels, checkpoint
    fields, file names, error messages, details that quote them): ``<``, ``>`` and ``&`` become
    HTML entities, so no tag reaches the page, and markdown's in-line syntax (code spans,
    emphasis, links, images, table pipes) is backslash-escaped, so ``[x](javascript:...)``
    stays text and a ``|`` does not split a table cell. Line breaks become spaces.
    """
    text = _LINE_BREAKS.sub(" ", str(value))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def safe_file_name(text: str) -> str:
    """``text`` (labels, from a config) as a file name inside the output folder: every run of
    characters other than letters, digits, ``_``, ``.`` and ``-`` becomes ``_``, and leading
    dots go, so no label reaches another folder or breaks a markdown image link."""
    return _UNSAFE_IN_FILE_NAMES.sub("_", text).lstrip(".") or "_"
