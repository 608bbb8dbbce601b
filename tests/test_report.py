"""The report stage: the 80-column console summary, the headline figure first, and untrusted
strings (config names, labels, error messages) escaped in report.md and report.html."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import yaml

from aepurify.evaluation import evaluate, print_summary, summary_console
from aepurify.evaluation import run as run_mod
from aepurify.evaluation.formats import md_text
from aepurify.evaluation.report.html import render_markdown
from aepurify.evaluation.run import FailedRow
from aepurify.evaluation.sanity import SanityResult
from aepurify.evaluation.summary import SummaryRow

LONG = "feature-dae-with-a-label-long-enough-to-need-two-lines-in-any-table-x"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SCRIPT = "<script>alert('x')</script>"
IMG = "<img src=x onerror=alert(1)>"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _summary() -> list[SummaryRow]:
    rows = []
    for i, (pur, eps) in enumerate([("none", 0.1), ("none", 0.3), (LONG, 0.1), (LONG, 8 / 255),
                                    ("jpeg", 0.3)]):
        rows.append(SummaryRow("mnist", "lenet", pur, "linf", eps, 200, 0.981 - i / 100,
                               0.812 - i / 100, 0.345 - i / 100,
                               "white-box+eot / sanity-pgd-10x5", 0.401 - i / 100, 12))
    rows.append(SummaryRow("mnist", "lenet", "vae", "l2", 2.0, 50, 0.9, float("nan"), 0.5,
                           "bpda / pgd", 0.5, 3))
    return rows


def _printed(file: io.StringIO) -> list[str]:
    return [ANSI.sub("", line) for line in file.getvalue().splitlines()]


@pytest.mark.parametrize("stream,columns,width", [
    (io.StringIO, 160, 80),  # a file or a pipe: rich alone would take $COLUMNS (160)
    (_Terminal, 200, 80),    # a wide terminal
    (_Terminal, 64, 64),     # a narrow terminal
])
def test_console_summary_fits_80_columns(monkeypatch, stream, columns, width):
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(shutil, "get_terminal_size",
                        lambda fallback=(80, 24): os.terminal_size((columns, 24)))
    out, err = stream(), stream()
    sanity = [SanityResult("white-box-vs-gray-box", "mnist", "lenet", LONG, False,
                           "largest excess of a purifier-aware attack over gray-box/transfer: "
                           "+0.265 at fgsm linf eps 0.3: white-box 0.470 vs gray-box 0.205 "
                           "(n=200) (6 comparisons, tolerance 0.03)"),
              SanityResult("large-eps", "mnist", "lenet", "jpeg", True, "fine")]
    failed = [FailedRow(f"mnist lenet {LONG} white-box pgd linf 0.3",
                        "RuntimeError: view size is not compatible with input tensor's size")]
    print_summary(summary_console(out), _summary(), sanity, failed,
                  problems=summary_console(err))
    table, problems = _printed(out), _printed(err)
    assert table and problems
    for line in table + problems:
        assert len(line) <= width, line
    text = "\n".join(table)
    assert "…" not in text  # nothing cut to "0.9…"
    for s in _summary():
        assert f"{s.adaptive_robust:.3f}" in text and f"{s.clean:.3f}" in text
        assert f"{s.worst_accuracy:.3f}" in text
    assert "8/255" in text and "l2 2" in text
    header = next(line for line in table if line.lstrip().startswith("defense"))
    first_column = "".join(line[:header.index("eps")].strip() for line in table)
    assert LONG in first_column  # folded over lines, not cut
    assert sum("sanity check failed" in line for line in problems) == 1  # passed ones: silent
    assert sum("row failed" in line for line in problems) == 1
    assert "0.205" in "\n".join(problems) and "compatible" in "\n".join(problems)


def test_md_text_renders_as_its_text():
    for raw in (SCRIPT, IMG, "a | b", "[click](javascript:alert(1))", "*x* _y_ `z`", "a\\b"):
        html = render_markdown(f"| cell |\n|---|\n| {md_text(raw)} |\n\n{md_text(raw)}\n")
        assert "<script" not in html and "<img" not in html and "href" not in html
        assert html.count("<td>") == 1
        parser = _Page()
        parser.feed(html)
        assert parser.text.count(raw) == 2, (raw, html)
    assert "\n" not in md_text("two\nlines")


class _Page(HTMLParser):
    """Tags, attributes and visible text of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


def test_untrusted_strings_are_escaped_in_the_report(tmp_path, monkeypatch):
    config = {
        "name": SCRIPT, "dataset": "mnist", "n_test": 30, "batch_size": 30,
        "classifier": {"arch": "lenet", "label": IMG,
                       "train": {"epochs": 1, "batch_size": 64, "max_images": 2000}},
        "purifiers": [{"name": "jpeg", "label": "<b onmouseover=alert(2)>q|50 $\\frac{$</b>",
                       "params": {"quality": 50}},
                      {"name": "bit-depth", "label": "[x](javascript:alert(3))",
                       "params": {"bits": 1}}],
        "threat_models": ["gray-box", "bpda"],
        "attacks": [{"name": "fgsm", "label": IMG, "eps": [0.2]},
                    {"name": "pgd", "label": "<script>pgd</script>", "eps": [0.2],
                     "params": {"steps": 2}}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    real_craft = run_mod.craft_cell

    def failing(work, cell, *args):
        if cell.attack.label == "<script>pgd</script>" and cell.threat_model.name == "bpda":
            raise RuntimeError(f"{SCRIPT} {IMG}")
        return real_craft(work, cell, *args)

    monkeypatch.setattr(run_mod, "craft_cell", failing)
    result = evaluate(path, tmp_path / "run")
    assert result.failed and any(IMG in s.detail for s in result.sanity)  # details quote labels
    out = tmp_path / "run"
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for raw in (SCRIPT, IMG, "<b onmouseover", "<script>pgd"):
        assert raw not in md and raw not in page
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in md
    assert "<script" not in page and "<img src=x" not in page and "<b " not in page
    parsed = _Page()
    parsed.feed(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "iframe", "object"), tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert not (attrs.get("href") or "").lower().startswith("javascript:"), attrs
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "<" not in title and "&lt;script&gt;" in title
    for text in (SCRIPT, IMG, "<b onmouseover=alert(2)>q|50 $\\frac{$</b>",
                 "[x](javascript:alert(3))", "<script>pgd</script>", f"RuntimeError: {SCRIPT} {IMG}"):
        assert text in parsed.text, text  # still readable, as text
    # the headline figure opens the report, before any table
    first_image = md.index("![")
    assert md[first_image:].startswith("![gray-box against adaptive robust accuracy](headline.png)")
    assert first_image < md.index("|") and (out / "headline.png").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["name"] == SCRIPT


def test_evaluate_command_prints_a_summary_of_80_columns_to_a_pipe(tmp_path):
    """The command line, with stdout a pipe and $COLUMNS wide: the summary still fits."""
    config = {"name": "pipe", "dataset": "mnist", "n_test": 20, "batch_size": 20,
              "classifier": {"arch": "lenet",
                             "train": {"epochs": 1, "batch_size": 64, "max_images": 2000}},
              "purifiers": [{"name": "jpeg", "label": LONG, "params": {"quality": 50}}],
              "threat_models": ["gray-box", "bpda"],
              "attacks": [{"name": "fgsm", "eps": [0.1, 0.3]}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "COLUMNS": "160", "AEPURIFY_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "aepurify.cli", "evaluate", str(path), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), proc.stdout
    with open(tmp_path / "run" / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4  # none and the long label, at two budgets
    for s in summary:
        assert f"{float(s['adaptive_robust']):.3f}" in proc.stdout
