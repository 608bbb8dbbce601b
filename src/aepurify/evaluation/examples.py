"""Example images for the report: clean, adversarial, purified, and the perturbation, for the
strongest attack each defense met at its largest budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..utils import derive_seed, seed_everything  # noqa: E402
from .formats import safe_file_name  # noqa: E402
from .report.plots import plain  # noqa: E402
from .store import CLEAN, SANITY_PREFIX, ResultRow, ResultStore  # noqa: E402

if TYPE_CHECKING:
    from .run import Workload


def pick_rows(rows: list[ResultRow]) -> dict[tuple[str, str], ResultRow]:
    """Per (classifier, purifier): the lowest-accuracy attack row at the largest budget of the
    first norm (sanity rows excluded)."""
    picked: dict[tuple[str, str], ResultRow] = {}
    attack_rows = [r for r in rows if r.attack != CLEAN and not r.attack.startswith(SANITY_PREFIX)
                   and not r.details.get("after")]  # rows of every example, with their images
    if not attack_rows:
        return picked
    norm = attack_rows[0].norm
    for r in attack_rows:
        if r.norm != norm:
            continue
        best = picked.get((r.classifier, r.purifier))
        if best is None or (r.eps, -r.accuracy) > (best.eps, -best.accuracy):
            picked[(r.classifier, r.purifier)] = r
    return picked


def _show(ax, img: np.ndarray, title: str) -> None:  # noqa: ANN001
    img = img.transpose(1, 2, 0)
    ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def example_figures(work: Workload, rows: list[ResultRow], store: ResultStore,
                    out_dir: Path) -> list[tuple[str, str]]:
    """Write ``examples-<classifier>-<purifier>.png`` figures from the adversarial images the
    run stage kept in ``store``.

    Returns:
        (caption, file name) for each figure written; the caption quotes labels as they are
        (escape it before it goes into markdown).
    """
    written = []
    # class names, not indices; ImageNet's can be long: cut to fit a panel title
    classes = [c if len(c) <= 22 else c[:21] + "…" for c in work.classes]
    for (clf, pur), row in pick_rows(rows).items():
        adv = store.examples(row.key)
        if adv is None:
            continue
        k = adv.shape[0]
        x, y = work.x[:k], work.y[:k]
        x_adv = torch.from_numpy(adv).to(work.device).clamp(0, 1)
        defended = work.defended(clf, pur)
        seed_everything(derive_seed(work.seed, "examples", row.key))
        with torch.no_grad():
            purified = defended.purifier(x_adv)
            pred = defended(x_adv).argmax(1)
        diff = (x_adv - x).abs()
        scale = float(diff.max()) or 1.0
        fig, axes = plt.subplots(k, 4, figsize=(4 * 1.3, k * 1.45), squeeze=False)
        for i in range(k):
            _show(axes[i][0], x[i].cpu().numpy(), plain(f"clean: {classes[int(y[i])]}"))
            _show(axes[i][1], x_adv[i].cpu().numpy(),
                  plain(f"adversarial -> {classes[int(pred[i])]}"))
            _show(axes[i][2], purified[i].cpu().numpy(), "purified")
            _show(axes[i][3], (diff[i] / scale).cpu().numpy(), f"|delta| x{1 / scale:.1f}")
        fig.suptitle(plain(f"{pur} ({clf}): {row.threat_model} {row.attack} {row.norm} "
                           f"eps {row.eps:g}"), fontsize=8)
        fig.tight_layout()
        name = "examples-" + safe_file_name(f"{clf}-{pur}") + ".png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append((f"{pur} ({clf}), {row.threat_model} {row.attack} {row.norm} "
                        f"eps {row.eps:g}: accuracy {row.accuracy:.3f}", name))
    return written
