"""The S2SNet paper's two analyses (Folz et al., WACV 2020), as report sections.

- ``s2snet-signal-transfer``: an S2SNet tuned (stage 2) for classifier A feeds classifier B; the
  accuracy matrix over every pair of the config's classifiers, clean and, optionally, on
  gray-box adversarial examples crafted on the bare B. The diagonal is the defense as trained;
  off the diagonal is the question whether the decoder's "signal" is classifier-specific.
- ``s2snet-gradients``: the distribution of input gradients ``dCE(f(x), y)/dx`` of the bare
  classifier against ``dCE(f(S(x)), y)/dx`` through the S2SNet (the paper's gradient-distribution
  shift), as a plot and summary statistics.

Both need an S2SNet entry in the config (``purifier``: its label, default ``s2snet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from ..attacks import build_attack
from ..errors import ConfigError
from ..purifiers import DefendedClassifier, Purifier
from ..utils import batches, derive_seed, parse_eps, progress, seed_everything
from .analyses import ANALYSES, AnalysisResult
from .formats import fmt_eps, md_text, write_records_csv
from .run import craft, predict

if TYPE_CHECKING:
    from .experiment import Experiment
    from .store import ResultRow


def _s2snets(exp: Experiment, purifier: str) -> dict[str, Purifier]:
    """classifier label -> the S2SNet (label ``purifier``) tuned for that classifier."""
    found = {clf: t.module for (clf, label), t in exp.purifiers.items() if label == purifier}
    if not found:
        raise ConfigError(f"analysis needs purifier label {purifier!r} in the config; labels: "
                          f"{', '.join(sorted({p for _, p in exp.purifiers}))}")
    return found  # type: ignore[return-value]


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    return int((predict(model, x, batch_size) == y).sum()) / max(len(x), 1)


def signal_transfer(exp: Experiment, rows: list[ResultRow], out_dir: Path,
                    purifier: str = "s2snet", n: int | None = None,
                    attack: dict[str, Any] | None = None) -> AnalysisResult:
    """Accuracy of classifier B reading the reconstruction of the S2SNet tuned for classifier A.

    Args:
        exp: the prepared experiment (needs the S2SNet for each classifier).
        rows: finished rows (unused; the matrix is measured here).
        out_dir: output folder; writes ``s2snet-signal-transfer.csv``.
        purifier: label of the S2SNet entry.
        n: first n test images (default: all of the run's).
        attack: optional ``{name, eps, norm, params}``: also measure the matrix on examples
            crafted gray-box on the bare B (pixels in [0, 1], eps on that scale).

    Returns:
        A report section with one matrix per setting (rows: S2SNet tuned for A, plus "no
        S2SNet"; columns: classifier B).

    Raises:
        ConfigError: no purifier with that label, or a bad attack entry.
    """
    nets = _s2snets(exp, purifier)
    x_all, y_all = exp.test.tensors(slice(0, n), exp.device)
    bs = exp.config.batch_size
    targets = list(exp.classifiers)
    settings: list[tuple[str, dict[str, torch.Tensor]]] = [("clean", {b: x_all for b in targets})]
    if attack:
        try:  # eps as a number or a fraction such as 8/255, like the config's epsilons
            name, eps = attack["name"], parse_eps(attack["eps"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError("s2snet-signal-transfer attack needs a name and an eps (a number "
                              f"or a fraction such as 8/255); got {attack!r}") from None
        norm, params = attack.get("norm", "linf"), attack.get("params", {})
        crafted = {}
        for b in targets:  # gray-box on the bare B: the S2SNet in front is unknown to it
            seed_everything(derive_seed(exp.config.seed, "s2snet-signal-transfer", b))
            atk = build_attack(name, exp.classifiers[b].module.eval(), eps, norm, params)
            crafted[b] = craft(atk, x_all, y_all, bs, f"signal transfer: {name} on {b}")
        settings.append((f"{name} {norm} eps={fmt_eps(eps)}, gray-box on B", crafted))
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    for setting, inputs in settings:
        table = matrix.setdefault(setting, {})
        table["no S2SNet"] = {b: _accuracy(exp.classifiers[b].module, inputs[b], y_all, bs)
                              for b in targets}
        for a, net in nets.items():
            table[f"S2SNet tuned for {a}"] = {
                b: _accuracy(DefendedClassifier(exp.classifiers[b].module, net), inputs[b],
                             y_all, bs) for b in targets}
    path = out_dir / "s2snet-signal-transfer.csv"
    write_records_csv(
        ({"setting": setting, "purifier": row, "classifier": b, "n": len(x_all),
          "accuracy": f"{acc:.4f}"}
         for setting, table in matrix.items() for row, accs in table.items()
         for b, acc in accs.items()),
        ("setting", "purifier", "classifier", "n", "accuracy"), path)
    lines = [f"Accuracy of classifier B (columns) reading the reconstruction of the S2SNet "
             f"tuned for classifier A (rows), first {len(x_all)} test images. The diagonal is "
             "the defense as trained; off the diagonal the decoder's signal meets a classifier "
             "it was not tuned for."]
    for setting, table in matrix.items():
        lines += ["", f"**{md_text(setting)}**", "",
                  "| | " + " | ".join(md_text(t) for t in targets) + " |",
                  "|---|" + "---:|" * len(targets)]
        for row, accs in table.items():
            lines.append(f"| {md_text(row)} | " + " | ".join(f"{accs[b]:.4f}" for b in targets)
                         + " |")
    return AnalysisResult("S2SNet signal transfer", "\n".join(lines), [path.name],
                          {"n": len(x_all), "matrix": matrix})


def _input_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int) -> torch.Tensor:
    """dCE(model(x), y)/dx per image (summed loss, so each image's gradient is its own)."""
    model.eval()
    out = []
    for sl in batches(len(x), batch_size):
        xb = x[sl].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xb), y[sl], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        out.append(grad.detach())
    return torch.cat(out)


def _gradient_stats(g: torch.Tensor) -> dict[str, float]:
    flat = g.flatten(1).double()
    v = flat.flatten()
    centred = v - v.mean()
    var = float(centred.pow(2).mean())
    kurt = float(centred.pow(4).mean() / var ** 2 - 3) if var > 0 else float("nan")
    l1, l2 = flat.abs().sum(1), flat.norm(dim=1)
    return {"mean_abs": float(v.abs().mean()), "median_abs": float(v.abs().median()),
            "std": var ** 0.5, "excess_kurtosis": kurt,
            "zero_fraction": float((v == 0).double().mean()),
            "mean_l2_per_image": float(l2.mean()),
            # L1 / (L2 sqrt(d)) is 1 for a flat gradient and 1/sqrt(d) for a single pixel
            "density": float((l1 / (l2 * flat.shape[1] ** 0.5).clamp_min(1e-30)).mean())}


def gradients(exp: Experiment, rows: list[ResultRow], out_dir: Path, purifier: str = "s2snet",
              n: int = 500, bins: int = 80) -> AnalysisResult:
    """Input-gradient statistics of each classifier with and without its S2SNet.

    Args:
        exp: the prepared experiment.
        rows: finished rows (unused).
        out_dir: writes ``s2snet-gradients.png`` and ``s2snet-gradients.csv``.
        purifier: label of the S2SNet entry.
        n: first n test images.
        bins: histogram bins.

    Returns:
        A report section: statistics per (classifier, with/without S2SNet), the cosine
        similarity of the two gradients per image, and the plot.

    Raises:
        ConfigError: no purifier with that label.
    """
    import matplotlib.pyplot as plt  # the Agg backend is set by .report.plots

    nets = _s2snets(exp, purifier)
    x, y = exp.test.tensors(slice(0, n), exp.device)
    bs = exp.config.batch_size
    stats: dict[str, dict[str, dict[str, float]]] = {}
    fig, axes = plt.subplots(len(nets), 2, figsize=(10, 3.2 * len(nets)), squeeze=False)
    for i, (clf_label, net) in enumerate(progress(list(nets.items()), desc="input gradients",
                                                  unit="classifier")):
        clf = exp.classifiers[clf_label].module
        g_bare = _input_gradients(clf, x, y, bs)
        g_def = _input_gradients(DefendedClassifier(clf, net), x, y, bs)
        cos = F.cosine_similarity(g_bare.flatten(1), g_def.flatten(1), dim=1, eps=1e-30)
        stats[clf_label] = {"without S2SNet": _gradient_stats(g_bare),
                            "with S2SNet": _gradient_stats(g_def)}
        stats[clf_label]["with S2SNet"]["cosine_to_bare"] = float(cos.mean())
        values = {k: g.flatten().cpu().numpy()  # one copy to the host per gradient
                  for k, g in (("without S2SNet", g_bare), ("with S2SNet", g_def))}
        mags = {k: np.abs(v) for k, v in values.items()}
        logs = {k: np.log10(v[v > 0]) for k, v in mags.items()}  # exact zeros: zero_fraction
        lo = min(float(np.percentile(v, 0.5)) for v in logs.values() if v.size)
        hi = max(float(v.max()) for v in logs.values() if v.size)
        ax = axes[i, 0]
        for k, v in logs.items():
            ax.hist(v, bins=np.linspace(lo, hi, bins), density=True, histtype="step", lw=1.5,
                    label=k)
        ax.set(title=f"{clf_label}: |dL/dx| per pixel", xlabel="log10 |gradient|",
               ylabel="density")
        ax.legend(fontsize=8)
        ax = axes[i, 1]
        for k, v in values.items():
            z = v / (v.std() or 1.0)
            ax.hist(np.clip(z, -8, 8), bins=np.linspace(-8, 8, bins), density=True,
                    histtype="step", lw=1.5, log=True, label=k)
        ax.set(title=f"{clf_label}: gradient / its std (clipped to +-8)",
               xlabel="standardised gradient",
               ylabel="density (log)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / "s2snet-gradients.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    csv_path = out_dir / "s2snet-gradients.csv"
    keys = ["mean_abs", "median_abs", "std", "excess_kurtosis", "zero_fraction",
            "mean_l2_per_image", "density", "cosine_to_bare"]
    write_records_csv(
        ({"classifier": clf_label, "setting": setting, "n": len(x),
          **{k: f"{s[k]:.6g}" if k in s else "" for k in keys}}
         for clf_label, per in stats.items() for setting, s in per.items()),
        ("classifier", "setting", "n", *keys), csv_path)
    lines = [f"Input gradients dCE/dx of the loss on the first {len(x)} test images, of the bare "
             "classifier and through its S2SNet. `density` is L1 / (L2 sqrt(d)) per image (1: "
             "spread evenly over the pixels; small: concentrated on few); `cosine` compares the "
             "two gradients of each image.", "",
             "| classifier | setting | mean abs | median abs | excess kurtosis | zero fraction "
             "| L2 per image | density | cosine to bare |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for clf_label, per in stats.items():
        for setting, s in per.items():
            cos_text = f"{s['cosine_to_bare']:.3f}" if "cosine_to_bare" in s else "-"
            lines.append(f"| {md_text(clf_label)} | {setting} | {s['mean_abs']:.3g} | "
                         f"{s['median_abs']:.3g} | {s['excess_kurtosis']:.3g} | "
                         f"{s['zero_fraction']:.3f} | {s['mean_l2_per_image']:.3g} | "
                         f"{s['density']:.3f} | {cos_text} |")
    lines += ["", f"![input-gradient distributions with and without the S2SNet]({png.name})"]
    return AnalysisResult("S2SNet input-gradient statistics", "\n".join(lines),
                          [png.name, csv_path.name], {"n": len(x), "stats": stats})


# Registered once, even if this module is imported again (e.g. reloaded by a test).
for _name, _fn in (("s2snet-signal-transfer", signal_transfer), ("s2snet-gradients", gradients)):
    if _name not in ANALYSES:
        ANALYSES.register(_name)(_fn)
