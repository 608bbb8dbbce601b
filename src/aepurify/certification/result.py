"""What a certification found: :class:`CertifyResult`, which prints in 80 columns and saves the
run's files (see :mod:`.report`)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..evaluation.report import summary_console
from ..evaluation.report.console import wrapped
from ..evaluation.report.html import write_html
from .bracket import BracketRow
from .report import (FIGURE, console_table, markdown_lines, write_attacked_csv,
                     write_certify_csv, write_figure, write_summary_csv)
from .run import CertifySettings, DefenseRun


@dataclass
class CertifyResult:
    """Certified and attacked accuracy of one smoothed classifier.

    Attributes:
        run: per-image answers (CERTIFY; PREDICT on the attacked examples).
        rows: per L2 radius: certified accuracy (lower bound), attacked accuracy (upper
            bound), abstentions and the check (:class:`~aepurify.certification.bracket.BracketRow`).
        settings: sigma, n, n0, alpha, radii, attack, seed.
        record: the run record (run.json): settings, models, code version, device, times.
        out_dir: where the files were written (None: not saved).
    """

    run: DefenseRun
    rows: list[BracketRow]
    settings: CertifySettings
    record: dict[str, Any]
    out_dir: Path | None = None

    def certified_accuracy(self, radius: float) -> float:
        """Fraction of images certified with their true class at L2 radius >= ``radius``."""
        return float(self.run.certified_correct(radius).mean())

    def row(self, radius: float) -> BracketRow:
        """The bracket row at ``radius`` (one of ``settings.radii``).

        Raises:
            KeyError: not a radius of the run.
        """
        for r in self.rows:
            if abs(r.radius - radius) < 1e-12:
                return r
        raise KeyError(f"radius {radius} is not one of {[r.radius for r in self.rows]}")

    @property
    def failed_checks(self) -> list[BracketRow]:
        """The radii where the check failed (certified above attacked beyond the allowance)."""
        return [r for r in self.rows if r.passed is False]

    @property
    def title(self) -> str:
        return (f"{self.record['defense']}, sigma {self.settings.sigma:g}: certified beside "
                "attacked accuracy")

    def save(self, out: str | Path) -> Path:
        """Write certify.csv, attacked.csv, summary.csv, certified.png, report.md, report.html
        and run.json into ``out``; returns the folder."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_certify_csv(self.run, folder / "certify.csv")
        if self.run.attacked:
            write_attacked_csv(self.run, folder / "attacked.csv")
        write_summary_csv(self.rows, self.record["dataset"], folder / "summary.csv")
        write_figure(self.rows, folder / FIGURE, self.title)
        md = folder / "report.md"
        md.write_text("\n".join(markdown_lines(self.run, self.rows, self.record)) + "\n")
        write_html(md, folder / "report.html", f"Certification: {self.record['name']}")
        status = "finished" if not self.failed_checks else "finished, check failed"
        (folder / "run.json").write_text(json.dumps({**self.record, "status": status}, indent=2,
                                                    default=str) + "\n")
        self.out_dir = folder
        return folder

    def __str__(self) -> str:
        buf = io.StringIO()
        console = summary_console(file=buf)
        console.print(escape(wrapped("", self.title)))
        console.print(console_table(self.rows))
        for r in self.failed_checks:
            console.print(f"check FAILED at L2 radius {r.radius:g}: {r.contradictions} certified "
                          f"image(s) attacked into another class, {r.allowance} allowed",
                          soft_wrap=False)
        return buf.getvalue().rstrip("\n")
