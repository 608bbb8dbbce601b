"""``aepurify certify``: certified (lower bound) beside attacked (upper bound) accuracy of a
smoothed classifier, per L2 radius.

    aepurify certify certify/mnist-sigma0.5 --out runs/certify-mnist        # a shipped config
    aepurify certify --classifier ckpt/lenet --purifier ckpt/denoiser --data mnist \\
        --sigma 0.5 --n 10000 --n-test 200 --out runs/certify                # the audit's inputs

A config trains or reuses its classifier and its denoiser (the model cache); ``--sigma``, ``--n``,
``--n0``, ``--alpha``, ``--radii``, ``--n-test`` and ``--seed`` override its values, ``--set``
any other (``--set purifier=null``: plain randomized smoothing). Without a config,
``--classifier``, ``--purifier`` and ``--data`` take what ``aepurify audit`` takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError
from .app import DataDir, Device, Overrides, _overrides, _params, app, console
from .audit import _floats, load_audit_classifier, load_audit_data, load_audit_purifier

INTERRUPTED = "interrupted: finished images are kept in certify.db; run again to resume"


@app.command()
def certify(
    config: Annotated[Optional[Path], typer.Argument(
        help="Certification config (YAML) or a shipped name, e.g. certify/mnist-sigma0.5; "
             "or give --classifier, --purifier and --data instead.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder: certify.db (resumable), certify.csv, attacked.csv, summary.csv, "
             "certified.png, report.md, report.html, run.json.")] = None,
    classifier: Annotated[Optional[str], typer.Option(
        help="MODULE:FACTORY, a classifier checkpoint folder or a pretrained name.")] = None,
    purifier: Annotated[str, typer.Option(
        help="MODULE:FACTORY, a purifier checkpoint folder (a Gaussian denoiser), a registered "
             "transform, or none (plain randomized smoothing).")] = "none",
    data: Annotated[Optional[str], typer.Option(
        help="A data set name (test split) or an image folder.")] = None,
    sigma: Annotated[Optional[float], typer.Option(
        help="Noise standard deviation, pixels in [0, 1].")] = None,
    n: Annotated[Optional[int], typer.Option(help="CERTIFY's estimation draws (100000).")] = None,
    n0: Annotated[Optional[int], typer.Option(help="CERTIFY's selection draws (100).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Failure probability (0.001).")] = None,
    radii: Annotated[Optional[str], typer.Option(
        help="L2 radii, comma-separated (0,0.25,0.5,0.75,1,1.5).")] = None,
    n_test: Annotated[Optional[int], typer.Option(help="Number of images (the first N).")] = None,
    attack_steps: Annotated[Optional[int], typer.Option(help="SmoothAdv PGD steps (20).")] = None,
    noise_draws: Annotated[Optional[int], typer.Option(
        help="SmoothAdv noise draws per step (16).")] = None,
    predict_n: Annotated[Optional[int], typer.Option(
        help="PREDICT's draws per attacked example (default: --n).")] = None,
    no_attack: Annotated[bool, typer.Option(
        "--no-attack", help="Certified accuracy only.")] = False,
    classifier_arg: Annotated[Optional[list[str]], typer.Option(
        help="Keyword argument key=value of the classifier factory (repeatable).")] = None,
    purifier_arg: Annotated[Optional[list[str]], typer.Option(
        help="Keyword argument key=value of the purifier factory (repeatable).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation means, comma-separated.")
                    ] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation standard deviations.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side for an image folder.")] = 224,
    channels: Annotated[int, typer.Option(help="1 or 3 channels for an image folder.")] = 3,
    seed: Annotated[Optional[int], typer.Option(help="Seed of every noise draw (0).")] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="Arithmetic of the counting passes, part of what is certified: fp32 (default), "
             "bf16 (3-4x faster on an AMX CPU; certifies the bf16 network) or auto.")] = None,
    data_dir: DataDir = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Model cache folder.")] = None,
    device: Device = "auto",
    set_: Overrides = None,
) -> None:
    """Certify a smoothed classifier (a purifier as Gaussian denoiser in front of a classifier,
    or none) and attack it: certified and attacked accuracy side by side per L2 radius."""
    values = {"sigma": sigma, "n": n, "n0": n0, "alpha": alpha, "n_test": n_test, "seed": seed,
              "radii": _floats(radii, "--radii"), "attack.steps": attack_steps,
              "attack.noise_draws": noise_draws, "attack.predict_n": predict_n,
              "precision": precision}
    values = {k: v for k, v in values.items() if v is not None}
    if no_attack:
        values["attack.enabled"] = False
    try:
        if config is not None:
            result = _from_config(config, out, values, set_, data_dir, cache_dir, device,
                                  classifier, purifier, data, classifier_arg, purifier_arg)
        else:
            result = _from_inputs(out, values, set_, classifier, purifier, data, classifier_arg,
                                  purifier_arg, mean, std, image_size, channels, data_dir, device)
    except KeyboardInterrupt:  # typer would turn it into a silent exit 130
        console.print(INTERRUPTED if out is not None else "interrupted", highlight=False)
        raise typer.Exit(130) from None
    print(result)
    if result.out_dir is not None:
        console.print(f"report: {result.out_dir / 'report.md'} (and report.html)\n"
                      f"per image: {result.out_dir / 'certify.csv'}; per radius: "
                      f"{result.out_dir / 'summary.csv'}", highlight=False)


def _from_config(config: Path, out: Path | None, values: dict[str, Any],
                 set_: list[str] | None, data_dir: Path | None, cache_dir: Path | None,
                 device: str, classifier: str | None, purifier: str, data: str | None,
                 classifier_arg: list[str] | None, purifier_arg: list[str] | None) -> Any:
    from ..certification.config import load_certify_config
    from ..certification.experiment import run_config
    from ..resources import find_config

    given = [name for name, v in (("--classifier", classifier), ("--data", data),
                                  ("--classifier-arg", classifier_arg),
                                  ("--purifier-arg", purifier_arg)) if v]
    if purifier != "none":
        given.append("--purifier")
    if given:
        raise ConfigError(f"{', '.join(given)}: a config names its own models and data; change "
                          "them with --set (e.g. --set purifier=null)")
    if out is None:
        raise ConfigError("--out is required with a config (the models' training and the "
                          "certificates are kept there)")
    overrides = {**_overrides(set_), **values}
    parsed = load_certify_config(find_config(config), overrides=overrides)
    return run_config(parsed, out, data_dir=data_dir, cache_dir=cache_dir,
                      device=None if device == "auto" else device)


def _from_inputs(out: Path | None, values: dict[str, Any], set_: list[str] | None,
                 classifier: str | None, purifier: str, data: str | None,
                 classifier_arg: list[str] | None, purifier_arg: list[str] | None,
                 mean: str | None, std: str | None, image_size: int, channels: int,
                 data_dir: Path | None, device: str) -> Any:
    from ..certification import certify as run_certify

    missing = [name for name, v in (("--classifier", classifier), ("--data", data),
                                    ("--sigma", values.get("sigma"))) if v is None]
    if missing:
        raise ConfigError(f"give a config, or {', '.join(missing)}")
    if set_:
        raise ConfigError("--set changes a config's values; without a config use the options")
    if channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3; got {channels}")
    assert classifier is not None and data is not None
    test = load_audit_data(data, values.pop("n_test", 200), data_dir, image_size, channels)
    x, y = test.tensors()
    clf = load_audit_classifier(classifier, _params(classifier_arg, "--classifier-arg"),
                                _floats(mean, "--mean"), _floats(std, "--std"))
    dataset = data if not Path(data).is_dir() else None
    pur = load_audit_purifier(purifier, _params(purifier_arg, "--purifier-arg"), x.shape[1],
                              dataset)
    attack = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("attack.")}
    plain = {k: v for k, v in values.items() if not k.startswith("attack.")}
    return run_certify(clf, pur, x, y, attack=attack if attack.get("enabled", True) else False,
                       out=out, device=device, dataset=test.name, **plain)
