"""Progress bars: a terminal gets tqdm's bar; a log (stderr not a terminal) gets plain lines
every few seconds, with no carriage return or escape code left in it (issue 23)."""

from __future__ import annotations

import io
import sys
import time

from aepurify import utils


def _log(monkeypatch, interval: float) -> io.StringIO:
    """stderr as a log (not a terminal), inside the test (pytest's capture swaps sys.stderr
    back between a fixture's setup and the test)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("AEPURIFY_PROGRESS", "1")
    monkeypatch.setattr(utils, "PLAIN_INTERVAL", interval)
    return stream


def test_a_log_gets_plain_periodic_lines(monkeypatch):
    log = _log(monkeypatch, 0.05)
    bar = utils.progress_bar("train", total=6, leave=True, unit="step")
    assert isinstance(bar, utils.PlainProgress)
    for i in range(6):
        time.sleep(0.03)
        bar.update(1)
        bar.set_postfix(loss=0.5 - 0.1 * i)
    bar.close()
    for _ in utils.progress(range(50), desc="craft", unit="batch"):
        time.sleep(0.002)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12, lines  # periodic, not one per update or postfix
    assert all(line.startswith(("train:", "craft:")) for line in lines), lines
    assert "6/6" in [line for line in lines if line.startswith("train:")][-1]  # the last state


def test_a_short_step_leaves_no_line(monkeypatch):
    log = _log(monkeypatch, 30.0)
    for _ in utils.progress(range(3), desc="quick"):
        pass
    assert log.getvalue() == ""
