"""``aepurify audit``: audit a purifier (yours or a registered one) in front of a classifier.

    aepurify audit --classifier my_models:small_cnn --classifier-arg width=32 \\
        --purifier my_models:denoiser --data mnist --norm linf --eps 0.3 \\
        --version standard --n-test 200 --out runs/audit

``--classifier`` takes ``MODULE:FACTORY`` (an ``nn.Module`` mapping images in [0, 1] to logits,
from a module in the current directory or on sys.path), a classifier checkpoint folder, or a
registered pretrained classifier (``efficientnet-lite0``). ``--purifier`` takes ``MODULE:FACTORY``
(a factory returning a Purifier or any callable images -> images, or that purifier itself: a
module instance or a function of the images), a purifier checkpoint folder, a registered
purifier that needs no training (``jpeg``, ``bit-depth``, ``median``) or ``none`` (the
undefended classifier). ``--data`` takes a registered data set (its test split) or an image
folder (one sub-folder per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError
from .app import INTERRUPTED, DataDir, Device, _params, app, console

DEFAULT_N_TEST = 100


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} takes numbers separated by commas; got {text!r}") from None


def load_audit_classifier(spec: str, args: dict[str, Any], mean: list[float] | None,
                          std: list[float] | None, sample: Any = None) -> Any:
    """The classifier ``--classifier`` names: an entry point's module, a checkpoint, or a
    registered pretrained classifier; an entry point's module wrapped with the normalisation
    ``--mean``/``--std`` give, its number of classes read from a forward pass on ``sample``
    (images (N, C, H, W) in [0, 1]).

    Raises:
        ConfigError: an unknown or untrained name; ``--mean``/``--std`` for a checkpoint or a
            registered classifier, which normalise inside themselves; a mean or std whose
            length is neither 1 nor the images' channels."""
    from ..entry_points import call_entry_point, is_entry_point, own_label
    from ..models import CLASSIFIERS, as_classifier, create_classifier, is_pretrained
    from ..models import load_classifier

    path = Path(spec)
    if is_entry_point(spec) and not path.exists():
        module = call_entry_point(spec, args, "classifier")
        label = own_label(module, spec)
    else:
        if args:
            raise ConfigError("--classifier-arg sets an entry point's factory arguments; "
                              f"{spec!r} is not one")
        if mean is not None or std is not None:
            raise ConfigError(f"--mean/--std put a normalisation in front of an entry point's "
                              f"module; {spec!r} is an aepurify classifier, which normalises "
                              "inside itself with the statistics it was trained with")
        if path.exists():
            module, config = load_classifier(path)
            label = str(config.get("name"))
        elif spec in CLASSIFIERS and not is_pretrained(spec):
            raise ConfigError(f"classifier {spec!r} must be trained first (aepurify train "
                              "classifier ... --out DIR); pass the checkpoint folder")
        elif spec in CLASSIFIERS:
            module, label = create_classifier(spec), spec
        else:
            raise ConfigError(f"--classifier {spec!r} is not MODULE:FACTORY, a checkpoint "
                              "folder or a registered pretrained classifier")
    _name(module, label)
    if mean is None and std is None:
        return module
    return as_classifier(module, mean=mean, std=std, sample=sample,
                         input_shape=None if sample is not None else
                         getattr(module, "input_shape", None))


def load_audit_purifier(spec: str, args: dict[str, Any], channels: int,
                        dataset: str | None) -> Any:
    """The purifier ``--purifier`` names (None for ``none``)."""
    from ..entry_points import build_purifier, is_entry_point, own_label
    from ..purifiers import as_purifier, create_purifier, load_purifier, purifier_class

    path = Path(spec)
    if spec == "none":
        if args:
            raise ConfigError("--purifier-arg needs a purifier; --purifier none has none")
        return None
    if is_entry_point(spec) and not path.exists():
        built = build_purifier(spec, args)  # a factory, or the purifier itself
        label = own_label(built, spec)
        return built if _name(built, label) else as_purifier(built, name=label)
    if path.exists():
        if args:
            raise ConfigError("--purifier-arg sets a purifier given by name or entry point; a "
                              "checkpoint brings its own parameters")
        module, config = load_purifier(path)
    elif purifier_class(spec).trainable:
        raise ConfigError(f"purifier {spec!r} must be trained first (aepurify train purifier "
                          f"{spec} ... --out DIR); pass the checkpoint folder")
    elif dataset is not None:
        module, config = create_purifier(spec, dataset, **args), {"name": spec}
    else:
        module, config = create_purifier(spec, **{"in_channels": channels, **args}), {"name": spec}
    _name(module, str(config.get("name")))
    return module


def _name(obj: Any, label: str) -> bool:
    """Give a module the CLI built its row label (the audit reads ``name``), as ``evaluate``
    labels a registered model by its name; False for an object that is not a module."""
    from torch import nn

    if not isinstance(obj, nn.Module):
        return False
    if not isinstance(getattr(obj, "name", None), str):
        obj.name = label
    return True


def load_audit_data(data: str, n_test: int | None, data_dir: Path | None, image_size: int,
                    channels: int) -> Any:
    """The first ``n_test`` images of a data set's test split, or of an image folder (None:
    :data:`DEFAULT_N_TEST`, or all if there are fewer; a number asked for past the data set's
    size is logged)."""
    from ..data import DATASETS, load_dataset, register_dataset

    asked = n_test is not None
    n_test = n_test if n_test is not None else DEFAULT_N_TEST
    if Path(data).is_dir() and data not in DATASETS:
        name = register_dataset({"kind": "imagefolder", "root": data, "image_size": image_size,
                                 "channels": channels, "max_images": n_test})
        data_set = load_dataset(name, "test")
    else:
        data_set = load_dataset(data, "test", data_dir)
    return data_set.first(n_test, "--n-test") if asked else data_set.take(n_test)


@app.command()
def audit(
    classifier: Annotated[str, typer.Option(
        help="MODULE:FACTORY, a classifier checkpoint folder or a pretrained name.")],
    data: Annotated[str, typer.Option(help="A data set name (test split) or an image folder.")],
    eps: Annotated[str, typer.Option(help="Budget on the [0, 1] scale, e.g. 8/255 or 0.3.")],
    purifier: Annotated[str, typer.Option(
        help="MODULE:FACTORY, a purifier checkpoint folder, a registered transform (jpeg, "
             "bit-depth, median) or none.")] = "none",
    classifier_arg: Annotated[Optional[list[str]], typer.Option(
        help="Keyword argument key=value of the classifier factory (repeatable).")] = None,
    purifier_arg: Annotated[Optional[list[str]], typer.Option(
        help="Keyword argument key=value of the purifier factory or transform (repeatable).")
    ] = None,
    mean: Annotated[Optional[str], typer.Option(
        help="Normalisation put in front of the classifier: per-channel means, e.g. "
             "0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel standard deviations.")] = None,
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    version: Annotated[str, typer.Option(help="quick, standard or thorough.")] = "standard",
    n_test: Annotated[Optional[int], typer.Option(
        help=f"Number of images (the first N; default {DEFAULT_N_TEST}).")] = None,
    n_eval: Annotated[Optional[int], typer.Option(
        help="Evaluations per example of a random purifier (default 10).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder: results.db, results.csv, summary.csv, sanity.csv, report.md, "
             "report.html (an existing run resumes).")] = None,
    image_size: Annotated[int, typer.Option(help="Image side for an image folder.")] = 224,
    channels: Annotated[int, typer.Option(help="1 or 3 channels for an image folder.")] = 3,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per attack batch.")] = None,
    attack_what_stands: Annotated[bool, typer.Option(
        "--attack-what-stands/--attack-every-example",
        help="As AutoAttack: the attacks after the rows the checks compare run only on the "
             "examples every earlier attack left correct (the default); or run every attack "
             "on every example.")] = True,
    precision: Annotated[str, typer.Option(
        help="Arithmetic of the attack gradients: fp32 (the default: a third-party module may "
             "not run under autocast), auto or bf16 (2 to 4x faster for conv nets on a CPU "
             "with bf16 units or a GPU). Verdicts run in fp32 either way.")] = "fp32",
    seed: int = 0, data_dir: DataDir = None, device: Device = "auto",
) -> None:
    """Audit a purifier in front of a classifier: every threat model that applies, the attacks
    of --version, random purifiers judged over n_eval evaluations, the sanity checks."""
    from ..audit import audit as run_audit
    from ..utils import parse_eps

    if n_test is not None and n_test < 1:
        raise ConfigError(f"--n-test must be >= 1; got {n_test}")
    if channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3; got {channels}")
    try:
        budget = parse_eps(eps)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--eps: {exc}") from None
    test = load_audit_data(data, n_test, data_dir, image_size, channels)
    x, y = test.tensors()
    clf = load_audit_classifier(classifier, _params(classifier_arg, "--classifier-arg"),
                                _floats(mean, "--mean"), _floats(std, "--std"), sample=x)
    dataset = data if not Path(data).is_dir() else test.name
    pur = load_audit_purifier(purifier, _params(purifier_arg, "--purifier-arg"), x.shape[1],
                              dataset if not Path(data).is_dir() else None)
    try:
        result = run_audit(clf, pur, x, y, norm=norm, eps=budget, version=version,
                           n_eval=n_eval, out=out, device=device, seed=seed,
                           batch_size=batch_size, dataset=test.name,
                           classes=list(test.classes), attack_what_stands=attack_what_stands,
                           precision=precision)
    except KeyboardInterrupt:  # typer would turn it into a silent exit 130
        console.print(INTERRUPTED if out is not None else "interrupted", highlight=False)
        raise typer.Exit(130) from None
    print(result)
