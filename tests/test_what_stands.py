"""Attack only what still stands (AutoAttack's order) in the audit, and the sanity checks that
read its rows: square-vs-gradient per example, failures explained as findings (issue 23)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import aepurify as ap
from aepurify.evaluation.config import SanitySettings
from aepurify.evaluation.report.console import print_summary, summary_console
from aepurify.evaluation.report.markdown import sanity_verdict
from aepurify.evaluation.sanity import SanityResult, run_checks
from aepurify.evaluation.store import ResultRow


def quantize(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 4) / 4


def noisy_quantize(t: torch.Tensor) -> torch.Tensor:
    return (torch.round(t * 4) / 4 + 0.2 * torch.randn_like(t)).clamp(0, 1)


def _audit_rows(result: ap.AuditResult) -> list[dict]:
    return [r for r in result.per_attack if r["purifier"] == result.purifier
            and r["attack"] != "none"]


def test_later_attacks_run_only_on_what_earlier_ones_left(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:40], mnist_batch[1][:40]
    result = ap.audit(tiny_lenet, quantize, x, y, eps=0.15, version="quick")
    pgd, apgd = _audit_rows(result)
    assert (pgd["attack"], apgd["attack"]) == ("pgd", "apgd-ce")
    assert "attacked" not in pgd and pgd["n"] == 40
    survivors = round(pgd["accuracy"] * 40)
    assert apgd["attacked"] == survivors  # only what PGD-20 left correct
    rows = {r.attack: r for r in result.rows if r.purifier == result.purifier}
    assert not (rows["apgd-ce"].correct & ~rows["pgd"].correct).any()  # cumulative
    assert apgd["accuracy"] == apgd["robust_after"] == result.robust_accuracy
    assert "* bpda / apgd-ce" in str(result) and "attacked" in str(result)
    every = ap.audit(tiny_lenet, quantize, x, y, eps=0.15, version="quick",
                     attack_what_stands=False)
    assert all("attacked" not in r for r in _audit_rows(every))
    # the same worst case, up to APGD's random start drawn per batch
    assert abs(every.robust_accuracy - result.robust_accuracy) <= 0.05


def test_a_random_purifier_counts_only_examples_correct_in_every_evaluation(tiny_lenet,
                                                                            mnist_batch):
    x, y = mnist_batch[0][:24], mnist_batch[1][:24]
    result = ap.audit(tiny_lenet, noisy_quantize, x, y, eps=0.1, version="quick", n_eval=4)
    rows = {r.attack: r for r in result.rows if r.purifier == result.purifier}
    assert rows["pgd"].details["n_eval"] == 4
    assert rows["apgd-ce"].details["attacked"] == int(rows["pgd"].correct.sum())  # all-of-4
    assert "upper bounds" in str(result)


def test_a_following_row_whose_earlier_row_failed_fails_too(tmp_path):
    from aepurify.attacks import resolve_threat_model
    from aepurify.evaluation.cells import AttackSpec, DefenseKeys, attack_what_stands
    from aepurify.evaluation.run import standing
    from aepurify.evaluation.store import ResultStore

    keys = DefenseKeys("mnist", 0, "lenet", "k", "none", "none")
    tm = resolve_threat_model("gray-box", ap.create_purifier("none"))
    first = keys.attack_cell(tm, AttackSpec("pgd", "pgd", "linf", {"steps": 2}, 1, 0), 0.1, 8)
    later = keys.attack_cell(tm, AttackSpec("apgd-ce", "apgd-ce", "linf", {}, 1, 1), 0.1, 8)
    before = later.spec_hash
    attack_what_stands([first, later], lambda c: c is later)
    assert later.after == (first.key,) and later.spec_hash != before and not later.shared
    with ResultStore(tmp_path / "r.db") as store:
        with pytest.raises(RuntimeError, match="earlier row"):
            standing(store, later)
        correct = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
        store.put(ResultRow(*first.key[:6], eps=0.1, n=8, accuracy=0.5, seconds=0.0,
                            correct=correct, spec_hash=first.spec_hash))
        assert standing(store, later).tolist() == correct.tolist()


def _row(tm: str, label: str, correct: list[int], eps: float = 0.3, purifier: str = "p",
         **details) -> ResultRow:
    c = np.array(correct, dtype=bool)
    return ResultRow("mnist", "lenet", purifier, tm, label, "linf", eps, len(c),
                     float(c.mean()), 0.0, correct=c, details=details)


def _check(results: list[SanityResult], name: str) -> SanityResult:
    return next(r for r in results if r.check == name)


def test_a_single_step_attack_weaker_through_the_purifier_is_a_finding():
    rows = [_row("gray-box", "fgsm", [0, 0, 0, 1, 1, 1, 1, 1, 1, 1], attack="fgsm"),
            _row("white-box", "fgsm", [1] * 10, attack="fgsm"),
            _row("gray-box", "pgd", [0] * 8 + [1, 1], attack="pgd"),
            _row("white-box", "pgd", [0] * 9 + [1], attack="pgd")]
    check = _check(run_checks(rows, SanitySettings(), {"p": False}), "white-box-vs-gray-box")
    assert check.passed is False and not check.unexplained
    assert "single-step" in check.finding and "white-box pgd leaves 0.100" in check.finding
    # the iterative attack through the purifier is weak too: no explanation
    rows[3] = _row("white-box", "pgd", [1] * 10, attack="pgd")
    check = _check(run_checks(rows, SanitySettings(), {"p": False}), "white-box-vs-gray-box")
    assert check.passed is False and check.unexplained


def test_fewer_eot_draws_than_asked_is_a_finding_none_is_not():
    few = [_row("white-box+eot", "pgd", [1, 0, 1, 0], eot_samples=4)]
    check = _check(run_checks(few, SanitySettings(), {"p": True}), "eot-samples")
    assert check.passed is False and "4 EOT draws" in check.finding
    none = [_row("white-box", "pgd", [1, 0, 1, 0])]
    check = _check(run_checks(none, SanitySettings(), {"p": True}), "eot-samples")
    assert check.passed is False and check.unexplained


def test_square_is_compared_with_the_worst_case_of_every_gradient_attack():
    settings = SanitySettings(enabled=True, square_queries=10, tolerance=0.0)
    sq = f"sanity-square-{settings.square_queries}"
    rows = [_row("white-box", "sanity-pgd-10", [0, 1, 1, 1]),
            _row("white-box", "sanity-pgd-100", [0, 1, 1, 1]),
            _row("bpda", "pgd", [1, 0, 1, 1]),       # another attack breaks example 1
            _row("black-box", sq, [0, 0, 1, 1])]      # Square: nothing past the others
    check = _check(run_checks(rows, settings, {"p": False}), "square-vs-gradient")
    assert check.passed is True, check.detail
    rows[3] = _row("black-box", sq, [0, 0, 0, 1])      # breaks example 2, which all left
    check = _check(run_checks(rows, settings, {"p": False}), "square-vs-gradient")
    assert check.passed is False and "breaks 0.250" in check.detail


def test_report_and_console_tell_findings_from_failures():
    results = [SanityResult("eot-samples", "mnist", "lenet", "apudae", False, "4 draws",
                            "the run's settings attack it with 4 EOT draws. More."),
               SanityResult("large-eps", "mnist", "lenet", "jpeg", False, "0.9 at eps 1"),
               SanityResult("more-restarts", "mnist", "lenet", "jpeg", None, "not run")]
    text = sanity_verdict(results)
    assert "1 of 3 checks failed without a known explanation" in text
    assert "1 failed check(s) are findings" in text and "1 did not run" in text
    assert sanity_verdict(results[2:]) == "No check ran. 1 did not run (each says why)."
    buf = io.StringIO()
    print_summary(summary_console(buf), [], results)
    out = buf.getvalue()
    assert "sanity check failed: large-eps (jpeg)" in out
    assert "finding, not a bug: eot-samples (apudae)" in out and "More." not in out
    assert "sanity check failed: eot-samples" not in out
