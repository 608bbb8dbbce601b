"""``detection.csv`` and the report's section on defenses that reject (MagNet;
docs/evaluation.md, "Defenses that reject"), read from the finished rows and the run record.

Per row of a defense with detectors: the defense's clean rejection rate (its clean row, on the
row's images), the adversarial rejection rate (the row's own), the accuracy on the inputs its
detectors accepted, the row's accuracy (MagNet's rule: rejection is an error on a clean image
and correct on an adversarial one) and each detector's rejection rate. Rates count evaluations:
for a random purifier every example was evaluated ``n_eval`` times.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .formats import fmt_eps, md_text, write_records_csv
from .store import CLEAN, ResultRow
from .summary import SummaryRow, clean_rejection

DETECTION_COLUMNS = ("dataset", "classifier", "purifier", "threat_model", "attack", "norm", "eps",
                     "n", "n_eval", "detectors", "clean_rejection_rate",
                     "adversarial_rejection_rate", "accepted_accuracy", "accuracy",
                     "per_detector")


def _detection(row: ResultRow) -> dict[str, Any] | None:
    return row.details.get("detection")


def detection_records(rows: list[ResultRow]) -> Iterator[dict[str, Any]]:
    """One record per row of a defense with detectors, with :data:`DETECTION_COLUMNS`."""
    clean = {(r.classifier, r.purifier): r for r in rows if r.attack == CLEAN}
    for r in rows:
        det = _detection(r)
        if det is None:
            continue
        clean_row = clean.get((r.classifier, r.purifier))
        clean_rate = clean_rejection(clean_row, r.n)
        adversarial = r.attack != CLEAN
        accepted = det.get("accepted_accuracy")
        base = {k: v for k, v in r.csv_record().items() if k != "seconds"}
        yield {**base, "n_eval": det.get("n_eval", 1),
               "detectors": " ".join(det.get("detectors", [])),
               "clean_rejection_rate": "" if clean_rate != clean_rate else round(clean_rate, 6),
               "adversarial_rejection_rate": round(det["rejection_rate"], 6) if adversarial
               else "",
               "accepted_accuracy": "" if accepted is None else round(accepted, 6),
               "per_detector": "; ".join(f"{k}={v:.6g}"
                                         for k, v in det.get("per_detector", {}).items())}


def write_detection_csv(rows: list[ResultRow], path: Path) -> Path:
    """``detection.csv`` (a header only when no defense has detectors)."""
    return write_records_csv(detection_records(rows), DETECTION_COLUMNS, path)


def _num(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def detection_lines(rows: list[ResultRow], summary: list[SummaryRow], record: dict[str, Any],
                    several: bool) -> list[str]:
    """The report's section on defenses that reject: their thresholds, each row's rejection
    rates, detector-aware against gray-box robust accuracy per budget, and Tramer's bound."""
    records = list(detection_records(rows))
    if not records:
        return []

    def name(clf: str, pur: str) -> str:
        return md_text(f"{clf} / {pur}" if several else pur)

    lines = ["## Defenses that reject (detectors)", "",
             "A detector is a score and a threshold fixed on clean held-out training images at a "
             "chosen false-positive rate, before any attack; an input is rejected if any detector "
             "fires (MagNet, Meng and Chen 2017). Every row of such a defense counts rejection "
             "MagNet's way: a clean image is correct only if it is accepted and classified "
             "correctly, an adversarial image if it is rejected or accepted and classified "
             "correctly. `detection.csv` has these numbers for every row.", ""]
    thresholds = record.get("detectors") or {}
    if thresholds:
        lines += ["| defense | detector | score | false-positive rate | calibration images | "
                  "threshold |", "|---|---|---|---:|---:|---:|"]
        for defense, items in thresholds.items():
            for c in items:
                lines.append(f"| {md_text(defense)} | {md_text(c['label'])} | "
                             f"{md_text(c['detector'])} | {c['false_positive_rate']:g} | "
                             f"{c['calibration_images']} | {c['threshold']:.6g} |")
        lines.append("")
    lines += ["| defense | threat model | attack | norm | eps | n | accuracy | clean rejection | "
              "adversarial rejection | accuracy on accepted | per detector |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        lines.append(
            f"| {name(r['classifier'], r['purifier'])} | {md_text(r['threat_model'])} | "
            f"{md_text(r['attack'])} | {md_text(r['norm'])} | {fmt_eps(r['eps'])} | {r['n']} | "
            f"{r['accuracy']:.3f} | {_cell(r['clean_rejection_rate'])} | "
            f"{_cell(r['adversarial_rejection_rate'])} | {_cell(r['accepted_accuracy'])} | "
            f"{md_text(r['per_detector'])} |")
    return lines + [""] + _aware_lines(rows, summary, name)


def _cell(value: Any) -> str:
    return "-" if value == "" else f"{float(value):.3f}"


def _aware_lines(rows: list[ResultRow], summary: list[SummaryRow], name: Any) -> list[str]:
    """Gray-box (MagNet's own protocol) against detector-aware robust accuracy per budget, with
    Tramer's bound."""
    aware: dict[tuple, float] = {}
    for r in rows:
        if r.threat_model.split("+")[0] == "detector-aware":
            key = (r.classifier, r.purifier, r.norm, round(r.eps, 10))
            aware[key] = min(aware.get(key, 1.0), r.accuracy)
    lines = ["Detector-aware attacks (orthogonal PGD: fool the classifier and keep every detector "
             "under its threshold) against MagNet's own gray-box protocol (the attacker ignores "
             "the defense), per budget; rejection counts as correct in both. The detector-aware "
             "number must not be the higher one (the `detector-aware-vs-oblivious` sanity check "
             "flags it).", "",
             "| defense | norm | eps | clean | clean rejection | gray-box robust | "
             "detector-aware (strongest row) | adaptive robust |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    shown = [s for s in summary if s.clean_rejection_rate == s.clean_rejection_rate]
    for s in shown:
        a = aware.get((s.classifier, s.purifier, s.norm, round(s.eps, 10)))
        lines.append(f"| {name(s.classifier, s.purifier)} | {md_text(s.norm)} | "
                     f"{fmt_eps(s.eps)} | {s.clean:.3f} | {s.clean_rejection_rate:.3f} | "
                     f"{_num(s.graybox_robust)} | {_num(a)} | **{s.adaptive_robust:.3f}** |")
    lines += ["", "Tramer (ICML 2022, \"Detecting adversarial examples is (nearly) as hard as "
              "classifying them\"): a detector robust at eps yields an (inefficient) classifier "
              "robust at eps / 2. A robust accuracy with rejection at eps is therefore a claim "
              "about robust classification at half the budget; one that beats the best robust "
              "classifiers known at eps / 2 is implausible and points to an attack that is too "
              "weak. Read each adaptive number above that way:", ""]
    for s in shown:
        lines.append(f"- {name(s.classifier, s.purifier)}, {md_text(s.norm)} eps "
                     f"{fmt_eps(s.eps)}: {s.adaptive_robust:.3f} with rejection would imply a "
                     f"classifier about that robust at eps {fmt_eps(s.eps / 2)}.")
    return lines
