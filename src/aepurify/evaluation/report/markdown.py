"""``report.md``: the headline figure, the adaptive-protocol summary, the sanity checks, how the
run was made, clean accuracy, one table and figure per threat model, the analyses, example
images, the rows that failed, the combinations not evaluated and the models.

Every string the report did not write itself (names and labels from a config or a checkpoint,
file names, error messages, details that quote them) goes through
:func:`~aepurify.evaluation.formats.md_text`, so it renders as its text, never as HTML or a link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analyses import AnalysisResult
from ..detection import detection_lines
from ..formats import fmt_eps, md_text
from ..sanity import SanityResult
from ..store import ResultRow
from ..summary import SummaryRow
from .tables import by_defense, clean_accuracy, defense_label, pivot, several_classifiers


def _defense(classifier: str, purifier: str, several: bool) -> str:
    return md_text(defense_label(classifier, purifier, several))


def headline_lines(headline: str | None) -> list[str]:
    """The figure the report opens with, and how to read it."""
    if headline is None:
        return []
    return ["Per defense, robust accuracy over epsilon: **gray-box** (blue: the attacker "
            "ignores the purifier) against **adaptive** (red: the per-example worst case over "
            "every attack and threat model this run tried), clean accuracy at eps 0 (black); "
            "dashed grey is the undefended classifier. The gap between blue and red is "
            "robustness that an attacker who adapts to the purifier takes away.", "",
            f"![gray-box against adaptive robust accuracy]({headline})", ""]


def summary_lines(summary: list[SummaryRow], several: bool) -> list[str]:
    """The adaptive-protocol table: clean, gray-box and adaptive robust accuracy (and, where a
    defense rejects, its clean rejection rate beside them)."""
    rejects = any(s.clean_rejection_rate == s.clean_rejection_rate for s in summary)
    extra = (" clean rejection |", "---:|") if rejects else ("", "")
    lines = ["## Adaptive robust accuracy", "",
             "Per-example worst case: an image counts as robust only if it survives every "
             "attack it met (gray-box: every gray-box attack; adaptive: every attack under every "
             "threat model), on the same images (n)."
             + (" A defense with detectors counts a rejected adversarial image as robust and a "
                "rejected clean image as an error; its clean rejection rate is shown beside "
                "(see the detection section)." if rejects else ""), "",
             f"| defense | norm | eps | n | clean |{extra[0]} gray-box robust | adaptive robust | "
             "worst single attack | rows |", f"|---|---|---:|---:|---:|{extra[1]}---:|---:|---|---:|"]
    for s in by_defense(summary):
        gray = "-" if s.graybox_robust != s.graybox_robust else f"{s.graybox_robust:.3f}"
        rej = f" {_num(s.clean_rejection_rate)} |" if rejects else ""
        lines.append(f"| {_defense(s.classifier, s.purifier, several)} | {md_text(s.norm)} | "
                     f"{fmt_eps(s.eps)} | {s.n} | {s.clean:.3f} |{rej} {gray} | "
                     f"**{s.adaptive_robust:.3f}** | {md_text(s.worst_attack)} "
                     f"({s.worst_accuracy:.3f}) | {s.attacks} |")
    return lines


def random_lines(summary: list[SummaryRow], several: bool) -> list[str]:
    """Random purifiers judged by N-evaluation: the adaptive robust accuracy under all-of-n
    (the verdict above), majority vote and a single draw, side by side."""
    random = [s for s in by_defense(summary) if s.n_eval > 1]
    if not random:
        return []
    lines = ["### Random defenses: N-evaluation", "",
             "Every example of a random purifier was classified n_eval times with fresh draws; "
             "the tables count it as correct only if every evaluation was (all-of-n, "
             "DiffHammer's N-evaluation). Beside it, the same per-example worst case under a "
             "majority vote and under a single draw (what one evaluation reports).", "",
             "| defense | norm | eps | n_eval | all-of-n (adaptive) | majority vote | "
             "single draw |", "|---|---|---:|---:|---:|---:|---:|"]
    for s in random:
        lines.append(f"| {_defense(s.classifier, s.purifier, several)} | {md_text(s.norm)} | "
                     f"{fmt_eps(s.eps)} | {s.n_eval} | **{s.adaptive_robust:.3f}** | "
                     f"{_num(s.adaptive_majority_vote)} | {_num(s.adaptive_single_draw)} |")
    return ["", *lines]


def _num(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def sanity_verdict(results: list[SanityResult]) -> str:
    """One sentence on the checks: how many passed, failed unexplained, failed as explained
    findings, and did not run."""
    unexplained = sum(r.unexplained for r in results)
    findings = sum(r.passed is False and bool(r.finding) for r in results)
    passed = sum(r.passed is True for r in results)
    not_run = sum(r.passed is None for r in results)
    parts = []
    if unexplained:
        parts.append(f"{unexplained} of {len(results)} checks failed without a known "
                     "explanation: read them as possible flaws of the evaluation.")
    if findings:
        parts.append(f"{findings} failed check(s) are findings, each explained beside it: a "
                     "property of the defense or of the run's settings, not a bug.")
    if not unexplained and not findings:
        parts.append(f"All {passed} checks that ran passed." if passed else
                     "No check ran.")
    if not_run:
        parts.append(f"{not_run} did not run (each says why).")
    return " ".join(parts)


def sanity_lines(results: list[SanityResult], several: bool) -> list[str]:
    """The gradient-masking checks, unexplained failures marked FAILED, explained ones
    "failed: finding" with their explanation."""
    lines = ["## Sanity checks (gradient masking)", "", sanity_verdict(results), "",
             "| check | defense | verdict | detail |", "|---|---|---|---|"]
    for r in results:
        verdict = {True: "passed", False: "FAILED", None: "not run"}[r.passed]
        detail = md_text(r.detail)
        if r.passed is False and r.finding:
            verdict, detail = "failed: finding", f"{detail}. **Finding:** {md_text(r.finding)}"
        lines.append(f"| {md_text(r.check)} | {_defense(r.classifier, r.purifier, several)} | "
                     f"{verdict} | {detail} |")
    return lines


def run_lines(record: dict[str, Any]) -> list[str]:
    """How the run was made: data, classifiers, seed, code version, command."""
    classifiers = ", ".join(md_text(c) for c in record.get("classifiers", []))
    return [
        "## This run", "",
        f"- data set: {md_text(record.get('dataset'))}, first {record.get('test_images')} test "
        "images (a row's n says how many it used)",
        f"- classifier(s): {classifiers}",
        f"- seed: {record.get('seed')}; code version: {md_text(record.get('code_version'))}; "
        f"torch {md_text(record.get('torch'))} on {md_text(record.get('device'))}",
        f"- command: {md_text(record.get('command'))}",
        "- accuracy is the fraction of the test images classified correctly (in [0, 1]); eps is "
        "on the [0, 1] pixel scale; threat models as in aepurify's docs/methods.md (gray-box "
        "crafts on the bare classifier, white-box through the purifier, bpda through its "
        "surrogate, eot averages the purifier's randomness).",
    ]


def _model(record: dict[str, Any], classifier: str, purifier: str) -> dict[str, Any]:
    models = record.get("models", {})
    return models.get(f"purifier:{purifier}") or models.get(f"purifier:{classifier}/{purifier}") \
        or {}


def grid_lines(rows: list[ResultRow], record: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Clean accuracy with each purifier's properties, then one table (and figure) per threat
    model: a row per defense, a column per attack and budget."""
    several = several_classifiers(rows)
    clean = clean_accuracy(rows)
    lines = ["## Clean accuracy", "", "| defense | clean accuracy | properties |", "|---|---:|---|"]
    for (clf, pur), acc in clean.items():
        props = _model(record, clf, pur).get("properties") or {}
        flags = ", ".join(k for k in ("differentiable", "stochastic") if props.get(k))
        sur = props.get("surrogate")
        lines.append(f"| {_defense(clf, pur, several)} | {acc:.4f} | {flags or '-'}"
                     f"{'; bpda surrogate: ' + md_text(sur) if sur else ''} |")
    for tm, (cols, table) in pivot(rows).items():
        lines += ["", f"## Threat model: {md_text(tm)}", "",
                  "| defense | clean | " + " | ".join(md_text(c) for c in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for (clf, pur), vals in table.items():
            cells = [f"{vals[c].accuracy:.4f}" if c in vals else "-" for c in cols]
            lines.append(f"| {_defense(clf, pur, several)} | "
                         f"{clean.get((clf, pur), float('nan')):.4f} | " + " | ".join(cells) + " |")
        ns = {r.n for vals in table.values() for r in vals.values()}
        if len(ns) > 1:
            lines += ["", f"Rows use different numbers of images (n = {sorted(ns)}); see "
                      "results.csv."]
        if tm in plots:
            lines += ["", f"![accuracy versus epsilon, {md_text(tm)}]({plots[tm]})"]
    return lines


def closing_lines(record: dict[str, Any], examples: list[tuple[str, str]] | None) -> list[str]:
    """Example images, failed rows, combinations not evaluated and the models."""
    lines: list[str] = []
    if examples:
        lines += ["", "## Examples", "",
                  "Clean image, adversarial image (with the defended prediction), purified image "
                  "and the perturbation (amplified), for the strongest attack at the largest "
                  "budget."]
        for caption, name in examples:
            lines += ["", f"**{md_text(caption)}**", "", f"![{md_text(caption)}]({name})"]
    if record.get("failed"):
        lines += ["", "## Failed rows", "",
                  "These rows raised an error and are not in the tables; `errors.log` has the "
                  "tracebacks, and running the same command again retries them.", "",
                  "| row | error |", "|---|---|"]
        for f in record["failed"]:
            lines.append(f"| {md_text(f['row'])} | {md_text(f['error'])} |")
    if record.get("skipped"):
        lines += ["", "## Not evaluated", "", "| purifier | threat model | why |", "|---|---|---|"]
        for s in record["skipped"]:
            lines.append(f"| {md_text(s['purifier'])} | {md_text(s['threat_model'])} | "
                         f"{md_text(s['reason'])} |")
    lines += ["", "## Models", "", "| model | origin | key | training metrics |", "|---|---|---|---|"]
    for name, m in record.get("models", {}).items():
        metrics = m.get("metrics") or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in metrics.items() if k in ("test_accuracy", "final_loss",
                                                               "steps", "seconds"))
        lines.append(f"| {md_text(name)} | {md_text(m.get('origin'))} | {md_text(m.get('key'))} "
                     f"| {md_text(shown) if shown else '-'} |")
    return lines


def write_markdown(path: Path, rows: list[ResultRow], record: dict[str, Any], *,
                   headline: str | None = None, plots: dict[str, str] | None = None,
                   summary: list[SummaryRow] | None = None,
                   sanity: list[SanityResult] | None = None,
                   analyses: list[AnalysisResult] | None = None,
                   examples: list[tuple[str, str]] | None = None) -> Path:
    """Write ``report.md`` from the rows and the run record (see the module docstring for the
    order of its sections). Returns ``path``."""
    several = several_classifiers(rows)
    lines = [f"# aepurify report: {md_text(record.get('name', 'experiment'))}", ""]
    if record.get("dataset_note"):
        lines += [f"**{md_text(record['dataset_note'])}.**", ""]
    lines += headline_lines(headline)
    if summary:
        lines += summary_lines(summary, several) + random_lines(summary, several) + [""]
    if sanity:
        lines += sanity_lines(sanity, several) + [""]
    lines += run_lines(record) + [""]
    detection = detection_lines(rows, summary or [], record, several)
    lines += detection + ([""] if detection else [])
    lines += grid_lines(rows, record, plots or {})
    for result in analyses or []:
        lines += ["", f"## {md_text(result.title)}", "", result.markdown.rstrip()]
    lines += closing_lines(record, examples)
    path.write_text("\n".join(lines) + "\n")
    return path
