"""What an audit found: :class:`AuditResult`, which prints in 80 columns, renders as markdown and
saves the same files as ``evaluate``."""

from __future__ import annotations

import io
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.analyses import AnalysisResult
from ..evaluation.formats import fmt_eps
from ..evaluation.report import print_summary, summary_console, write_report
from ..evaluation.report.markdown import write_markdown
from ..evaluation.sanity import SanityResult
from ..evaluation.store import ResultRow
from ..evaluation.summary import SummaryRow
from ..purifiers import PurifierProperties
from ..utils import make_folder

WIDTH = 80


@dataclass
class SanityItem:
    """One gradient-masking check of the audit.

    Attributes:
        name: the check (``large-eps``, ``more-iterations``, ``square-vs-gradient``, ...).
        passed: True, False, or None when it did not run (``detail`` says why).
        detail: the numbers behind the verdict.
        finding: for a failed check a known mechanism explains, the explanation (not a bug);
            empty otherwise (:mod:`aepurify.evaluation.findings`).
    """

    name: str
    passed: bool | None
    detail: str
    finding: str = ""


@dataclass
class AuditResult:
    """The verdict of :func:`aepurify.audit`.

    Accuracies are fractions in [0, 1] of the audited images. For a random purifier every
    example was classified ``n_eval`` times with fresh draws and counts as correct only if every
    evaluation was (all-of-n, N-evaluation); ``n_eval_accuracies`` gives majority-vote and
    single-draw figures beside it.

    Attributes:
        clean_accuracy: the defended classifier on the clean images.
        graybox_accuracy: per-example worst case over the gray-box attacks (crafted on the bare
            classifier); None when the version ran none (``quick`` on a purifier).
        robust_accuracy: per-example worst case over every attack and threat model run.
        per_attack: one dict per row as in results.csv (``dataset, classifier, purifier,
            threat_model, attack, norm, eps, n, accuracy, seconds``; random purifiers add
            ``n_eval``, ``majority_vote``, ``single_draw``), the audited defense's rows first,
            in run order; at the audit's budget ``robust_after``: the robust accuracy after
            that attack and every earlier one (AutoAttack's cumulative figure); a row that
            attacked only what earlier ones left correct adds ``attacked`` (how many), and its
            ``accuracy`` is that cumulative figure.
        sanity: the gradient-masking checks.
        threat_models_used: resolved threat models of the audited defense's attack rows.
        properties: the purifier's declared and probed properties with their evidence (None for
            the undefended classifier).
        version, norm, eps, n, n_eval, seed, device: how the audit ran.
        plan: lines saying which threat models were picked or skipped, and why.
        classifier, purifier: the labels in the rows.
        num_classes: K of the classifier.
        rows, summary, sanity_results, record: what the report stage reads (save() writes them).
        clean_rejection_rate: with ``detector=``, the fraction of clean evaluations a detector
            rejected (counted as errors in ``clean_accuracy``; rejected adversarial images count
            as robust); None without detectors.
        out_dir: where the audit wrote its files, if ``out`` was given.
    """

    clean_accuracy: float
    graybox_accuracy: float | None
    robust_accuracy: float
    per_attack: list[dict[str, Any]]
    sanity: list[SanityItem]
    threat_models_used: list[str]
    properties: PurifierProperties | None
    version: str
    norm: str
    eps: float
    n: int
    n_eval: int
    seed: int
    device: str
    plan: list[str]
    classifier: str
    purifier: str
    num_classes: int
    rows: list[ResultRow] = field(repr=False, default_factory=list)
    summary: list[SummaryRow] = field(repr=False, default_factory=list)
    sanity_results: list[SanityResult] = field(repr=False, default_factory=list)
    record: dict[str, Any] = field(repr=False, default_factory=dict)
    n_eval_accuracies: dict[str, float] = field(default_factory=dict)
    clean_rejection_rate: float | None = None
    out_dir: Path | None = None

    @property
    def failed_checks(self) -> list[SanityItem]:
        return [s for s in self.sanity if s.passed is False]

    def _plan_section(self) -> AnalysisResult:
        from ..evaluation.formats import md_text

        lines = [f"Version `{self.version}`, {md_text(self.norm)} eps {fmt_eps(self.eps)}, "
                 f"{self.n} images, seed {self.seed}.", ""]
        if self.properties is not None:
            lines += ["Purifier properties (declared or probed, with the evidence):", ""]
            lines += [f"- {md_text(line)}" for line in self.properties.lines()] + [""]
        lines += ["Threat models picked (and skipped), and why:", ""]
        lines += [f"- {md_text(line)}" for line in self.plan]
        return AnalysisResult("Audit: what it picked and why", "\n".join(lines),
                              data={"plan": self.plan})

    def _order_section(self) -> AnalysisResult:
        from ..evaluation.formats import md_text

        mine = [r for r in self.per_attack if r["purifier"] == self.purifier
                and "robust_after" in r]
        lines = ["The attacks at the audit's budget in the order they ran. AutoAttack's "
                 "practice: the rows the sanity checks compare attack every example; each "
                 "later attack (\\*) attacks only the examples every earlier one left correct"
                 + (f" (for this random purifier: correct in all {self.n_eval} evaluations)"
                    if self.n_eval > 1 else "") + ". *Robust after* is the fraction of the "
                 f"{self.n} images still correct after that attack and every earlier one.", "",
                 "| threat model / attack | accuracy (this attack) | attacked | robust after |",
                 "|---|---:|---:|---:|"]
        for r in mine:
            follows = "attacked" in r
            mark = "\\* " if follows else ""
            own = "-" if follows else f"{r['accuracy']:.3f}"
            attacked = r["attacked"] if follows else r["n"]
            lines.append(f"| {mark}{md_text(r['threat_model'])} / {md_text(r['attack'])} | "
                         f"{own} | {attacked} | {r['robust_after']:.3f} |")
        return AnalysisResult("Audit: robust accuracy after each attack", "\n".join(lines),
                              data={"order": [{k: r[k] for k in ("threat_model", "attack",
                                                                  "robust_after")}
                                              for r in mine]})

    def save(self, directory: str | Path) -> Path:
        """Write results.csv, summary.csv, sanity.csv, the figures, report.md and report.html
        (the files ``evaluate`` writes) into ``directory`` (created). Returns it.

        Raises:
            ConfigError: ``directory`` is a file, lies below one, or cannot be created."""
        out = make_folder(directory, "save():")
        write_report(out, self.rows, self.record, summary=self.summary,
                     sanity=self.sanity_results,
                     analyses=[self._plan_section(), self._order_section()])
        return out

    def to_markdown(self) -> str:
        """The report (report.md without its figures) as markdown text."""
        with tempfile.TemporaryDirectory(prefix="aepurify-audit-") as tmp:
            path = Path(tmp) / "report.md"
            write_markdown(path, self.rows, self.record, summary=self.summary,
                           sanity=self.sanity_results,
                           analyses=[self._plan_section(), self._order_section()])
            return path.read_text()

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self, width: int = WIDTH) -> list[str]:
        """The summary in lines of at most ``width`` (<= 80) columns: what was audited, what
        the audit picked and why, the verdict, each attack, the sanity checks."""
        def wrap(text: str, indent: str = "", more: str = "    ") -> list[str]:
            return textwrap.wrap(text, width=width, initial_indent=indent,
                                 subsequent_indent=indent + more, break_on_hyphens=False) or [""]

        what = "no purifier" if self.purifier == "none" else self.purifier
        out = wrap(f"aepurify audit ({self.version}): {what} in front of {self.classifier} "
                   f"({self.num_classes} classes); {self.n} images, {self.norm} eps "
                   f"{fmt_eps(self.eps)}, seed {self.seed}, {self.device}")
        if self.properties is not None:
            out.append("properties:")
            for line in self.properties.lines():
                out += wrap(line, "  ")
        out.append("picked:")
        for line in self.plan:
            out += wrap(line, "  ")
        buf = io.StringIO()
        print_summary(summary_console(buf), self.summary, title="robust accuracy")
        out += [line.rstrip() for line in buf.getvalue().splitlines()]
        out += self._verdict_lines(wrap)
        return [line[:width] if len(line) > width else line for line in out]

    def _verdict_lines(self, wrap: Any) -> list[str]:
        def num(v: float | None) -> str:
            return "-" if v is None or v != v else f"{v:.3f}"

        rule = f" (all of {self.n_eval} evaluations correct)" if self.n_eval > 1 else ""
        gray = num(self.graybox_accuracy)
        if self.graybox_accuracy is None:
            gray += (f"  (the {self.version} version runs no gray-box attack on a purifier; "
                     "standard does)" if self.version == "quick" else "  (no gray-box row)")
        out = ["verdict:",
               f"  clean accuracy      {num(self.clean_accuracy)}{rule}"]
        if self.clean_rejection_rate is not None:
            out += wrap(f"clean rejection     {num(self.clean_rejection_rate)}  (clean images a "
                        "detector rejected: errors above; a rejected adversarial image counts "
                        "as robust)", "  ")
        rows = len([r for r in self.per_attack
                    if r["purifier"] == self.purifier and r["attack"] != "none"])
        out += [*wrap(f"gray-box robust     {gray}", "  ", "                      "),
                f"  robust accuracy     {num(self.robust_accuracy)}  (per-example worst case "
                f"over {rows} rows)"]
        followed = any("attacked" in r for r in self.per_attack)
        if self.n_eval_accuracies:
            a = self.n_eval_accuracies
            bound = " (upper bounds: later attacks skip what all-of-n already broke)" \
                if followed else ""
            out += wrap(f"robust accuracy by rule: all-of-{self.n_eval} "
                        f"{num(a.get('all_of_n'))}, majority vote {num(a.get('majority_vote'))}, "
                        f"single draw {num(a.get('single_draw'))}{bound}", "  ")
        out += wrap("per attack, in run order (threat model / attack: its accuracy; after: "
                    "robust accuracy after it and every earlier attack; * attacked only what "
                    "still stood, as AutoAttack does):" if followed else
                    "per attack (threat model / attack: accuracy):")
        for r in self.per_attack:
            if r["purifier"] != self.purifier or r["attack"] == "none":
                continue
            extra = ""
            if "single_draw" in r and "attacked" not in r:
                extra = f" (1 draw {num(r['single_draw'])}, majority {num(r['majority_vote'])})"
            head = f"{r['threat_model']} / {r['attack']} eps {fmt_eps(r['eps'])}:"
            if "attacked" in r:
                line = f"* {head} after {num(r['robust_after'])} (attacked {r['attacked']})"
            elif followed and "robust_after" in r:
                line = f"{head} {num(r['accuracy'])}{extra}, after {num(r['robust_after'])}"
            else:
                line = f"{head} {num(r['accuracy'])}{extra}"
            out += wrap(line, "  ")
        ran = [s for s in self.sanity if s.passed is not None]
        failed = [s for s in self.sanity if s.passed is False and not s.finding]
        findings = [s for s in self.sanity if s.passed is False and s.finding]
        if not ran:
            out.append("sanity checks: none ran" + (" (the quick version runs few; standard runs "
                                                    "them)" if self.version == "quick" else ""))
            return out + self._report_lines(wrap)
        counts = f"sanity checks: {len(ran) - len(failed) - len(findings)} passed, " \
                 f"{len(failed)} failed, "
        if findings:
            counts += f"{len(findings)} failed as findings (explained, not bugs), "
        out += wrap(counts + f"{len(self.sanity) - len(ran)} not run")
        for s in self.sanity:
            mark = {True: "ok", False: "FAILED", None: "not run"}[s.passed]
            if s.passed is False and s.finding:
                out += wrap(f"finding {s.name}: {s.detail}; {s.finding}", "  ")
            else:
                out += wrap(f"{mark} {s.name}: {s.detail}", "  ")
        return out + self._report_lines(wrap)

    def _report_lines(self, wrap: Any) -> list[str]:
        if self.out_dir is None:
            return []
        return wrap(f"report: {self.out_dir / 'report.md'} (and report.html)")
