"""Row groupings the report's tables and plots share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..formats import fmt_eps
from ..store import CLEAN, ResultRow

Defense = tuple[str, str]  # (classifier label, purifier label)


def several_classifiers(items: Iterable[Any]) -> bool:
    """True when rows (or summary rows, or sanity results) span more than one classifier: then
    a defense is named ``classifier / purifier``, else by its purifier alone."""
    return len({item.classifier for item in items}) > 1


def defense_label(classifier: str, purifier: str, several: bool) -> str:
    """How a defense is named in tables and plots (raw text: escape it for markdown)."""
    return f"{classifier} / {purifier}" if several else purifier


def by_defense(items: Iterable[Any]) -> list[Any]:
    """Summary rows (anything with classifier, purifier, norm, eps) ordered by defense, then
    norm, then eps; defenses and norms in the order they first appear."""
    items = list(items)
    first: dict[tuple[str, str], int] = {}
    norms: dict[str, int] = {}
    for s in items:
        first.setdefault((s.classifier, s.purifier), len(first))
        norms.setdefault(s.norm, len(norms))
    return sorted(items, key=lambda s: (first[(s.classifier, s.purifier)], norms[s.norm], s.eps))


def clean_accuracy(rows: list[ResultRow]) -> dict[Defense, float]:
    """(classifier, purifier) -> clean accuracy."""
    return {(r.classifier, r.purifier): r.accuracy for r in rows if r.attack == CLEAN}


def column(row: ResultRow) -> str:
    """Table column of a row: attack, norm and budget (raw text)."""
    return f"{row.attack} {row.norm} {fmt_eps(row.eps)}"


def pivot(rows: list[ResultRow]) -> dict[str, tuple[list[str], dict[Defense, dict[str, ResultRow]]]]:
    """threat model -> (column labels, (classifier, purifier) -> column -> row)."""
    out: dict[str, tuple[list[str], dict[Defense, dict[str, ResultRow]]]] = {}
    for r in rows:
        if r.attack == CLEAN:
            continue
        cols, table = out.setdefault(r.threat_model, ([], defaultdict(dict)))
        col = column(r)
        if col not in cols:
            cols.append(col)
        table[(r.classifier, r.purifier)][col] = r
    return out
