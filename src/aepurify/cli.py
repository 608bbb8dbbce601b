"""The ``aepurify`` command.

    aepurify demo [--out DIR] [--n-test N]
    aepurify evaluate CONFIG.yaml --out DIR [--n-test N]
    aepurify train classifier --dataset mnist --arch lenet --epochs 2 --out DIR
    aepurify train purifier magnet --dataset mnist --out DIR
    aepurify train purifier s2snet --dataset mnist --classifier DIR --extra target=label --out DIR
    aepurify purify --purifier DIR_OR_NAME IMAGE... --out DIR
    aepurify list
    torchrun --nproc-per-node N -m aepurify evaluate|train ...   (several ranks: docs/scale.md)

Bad input (missing data, corrupt files, a checkpoint of another architecture, unknown names in
a config, images outside [0, 1]) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from .errors import AepurifyError, ConfigError, RankFailedError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Autoencoder-based adversarial purification: train purifiers, attack "
                       "them under every threat model, report what robustness is real.")
train_app = typer.Typer(no_args_is_help=True, help="Train a classifier or a purifier.")
app.add_typer(train_app, name="train")
console = Console(stderr=True)

INTERRUPTED = "interrupted: finished rows are kept in results.db; run again to resume"

DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder with the data files (else $AEPURIFY_DATA, then the cache; MNIST "
                       "falls back to the embedded copy).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")]


def _settings(**kwargs: Any):
    from .training import TrainSettings

    try:
        return TrainSettings(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: "
                          f"{err['msg']}") from None


def _params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{option} takes key=value; got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@contextmanager
def _training_ranks(dev: Any) -> Iterator[Any]:
    """Under torchrun (several ranks): the block trains data-parallel (DistributedDataParallel,
    see aepurify.training.data_parallel) and yields the ranks' group; otherwise yields None."""
    from .distributed import launched, process_group
    from .training import data_parallel

    if not launched():
        yield None
        return
    with process_group(dev) as group, data_parallel():
        yield group


def _records(ranks: Any, numerics: dict[str, Any]) -> bool:
    """Whether this process writes the checkpoint (rank 0 of a data-parallel training, or the
    only process), noting the number of ranks in its ``environment``."""
    if ranks is None:
        return True
    numerics["data_parallel_ranks"] = ranks.world
    return ranks.is_main


@train_app.command("classifier")
def train_classifier(
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, cifar10, cifar10-jpeg.")],
    arch: Annotated[str, typer.Option(help="lenet, small-cnn, resnet18, vgg11.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    epochs: int = 2, lr: float = 1e-3, batch_size: int = 128,
    max_images: Annotated[Optional[int], typer.Option(help="Train on the first N images.")] = None,
    augment: bool = False, seed: int = 0, data_dir: DataDir = None, device: Device = "auto",
) -> None:
    """Train a classifier and save it as model.safetensors + config.json."""
    from .checkpoint import save_checkpoint
    from .data import load_dataset
    from .models import create_classifier
    from .training import accuracy, fit_classifier
    from .utils import pick_device, seed_everything, training_numerics

    settings = _settings(epochs=epochs, lr=lr, batch_size=batch_size, max_images=max_images,
                         augment=augment, seed=seed)
    dev = pick_device(device)
    test = load_dataset(dataset, "test", data_dir)
    train = load_dataset(dataset, "train", data_dir)
    with _training_ranks(dev) as ranks, training_numerics(dev) as numerics:
        seed_everything(seed)
        model = create_classifier(arch, dataset).to(dev)
        metrics = fit_classifier(model, train, settings, device=dev)
    if not _records(ranks, numerics):
        return
    metrics["test_accuracy"] = accuracy(model, test, device=dev, desc="test accuracy")
    metrics["test_images"] = len(test)
    save_checkpoint(model, out, kind="classifier", name=arch, dataset=dataset,
                    train=settings.model_dump(), metrics=metrics, seed=seed,
                    environment=numerics)
    console.print(f"{arch} on {dataset}: test accuracy {metrics['test_accuracy']:.4f}; "
                  f"saved to {out}")


@train_app.command("purifier")
def train_purifier(
    name: Annotated[str, typer.Argument(help="Purifier name (aepurify list).")],
    dataset: Annotated[str, typer.Option(help="Data set to train on.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    epochs: int = 3, lr: float = 1e-3, batch_size: int = 128,
    max_images: Annotated[Optional[int], typer.Option(help="Train on the first N images.")] = None,
    classifier: Annotated[Optional[Path], typer.Option(
        help="Classifier checkpoint, for purifiers trained against it.")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        help="Purifier parameter key=value (repeatable).")] = None,
    extra: Annotated[Optional[list[str]], typer.Option(
        help="Purifier-specific training option key=value (repeatable; train.extra in a "
             "config), e.g. s2snet's stage2_epochs=1 or target=prediction.")] = None,
    seed: int = 0, data_dir: DataDir = None, device: Device = "auto",
) -> None:
    """Train a purifier and save it as model.safetensors + config.json."""
    from .checkpoint import save_checkpoint
    from .data import load_dataset
    from .models import load_classifier
    from .purifiers import create_purifier, purifier_class
    from .utils import pick_device, seed_everything, training_numerics

    settings = _settings(epochs=epochs, lr=lr, batch_size=batch_size, max_images=max_images,
                         seed=seed, extra=_params(extra, "--extra"))
    dev = pick_device(device)
    cls = purifier_class(name)
    if not cls.trainable:
        raise ConfigError(f"purifier {name!r} has nothing to train; use it directly")
    clf = None
    if classifier is not None:
        clf, _ = load_classifier(classifier, map_location=dev)
    elif cls.needs_classifier:
        raise ConfigError(f"purifier {name!r} trains against a classifier: pass --classifier DIR")
    train = load_dataset(dataset, "train", data_dir)
    with _training_ranks(dev) as ranks, training_numerics(dev) as numerics:
        seed_everything(seed)
        purifier = create_purifier(name, dataset, **_params(param)).to(dev)
        metrics = purifier.fit(train, settings, classifier=clf, device=dev)
    if not _records(ranks, numerics):
        return
    save_checkpoint(purifier, out, kind="purifier", name=name, dataset=dataset,
                    train=settings.model_dump(), metrics=metrics, seed=seed,
                    classifier=str(classifier) if classifier else None, environment=numerics)
    console.print(f"{name} on {dataset}: final loss {metrics.get('final_loss', float('nan')):.5f}; "
                  f"saved to {out}")


Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a config value: dotted.key=value (repeatable; list indices are "
                  "numbers, values are YAML), e.g. --set classifier.train.epochs=1 "
                  "--set purifiers.0.train.max_images=512.")]


def _overrides(items: list[str] | None) -> dict[str, Any]:
    """``--set key.path=value`` options as {dotted path: YAML value}, in order (last wins)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes dotted.key=value; got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: the value {text!r} is not valid YAML") from None
    return out


@app.command()
def evaluate(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML) or a shipped name.")],
    out: Annotated[Path, typer.Option(help="Output directory (an existing run resumes).")],
    n_test: Annotated[Optional[int], typer.Option(help="Number of test images.")] = None,
    data_dir: DataDir = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Model cache folder.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Override the config's device.")] = None,
    set_: Overrides = None,
) -> None:
    """Run a config's grid; write results.db, results.csv, report.md and plots to --out."""
    from .evaluation import load_config
    from .evaluation import evaluate as run
    from .evaluation import print_summary, summary_console
    from .resources import find_config

    overrides = _overrides(set_)
    if n_test is not None:
        overrides["n_test"] = n_test
    try:
        parsed = load_config(find_config(config), overrides=overrides)
        result = run(parsed, out, data_dir=data_dir, cache_dir=cache_dir, device=device)
    except KeyboardInterrupt:  # here, not in main(): typer turns it into a silent exit 130
        console.print(INTERRUPTED, highlight=False)
        raise typer.Exit(130) from None
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    print_summary(summary_console(), result.summary, result.sanity, result.failed,
                  problems=summary_console(stderr=True))
    console.print(f"report: {out / 'report.md'} (and report.html)\n"
                  f"results: {out / 'results.csv'}, {out / 'summary.csv'}", highlight=False)
    _exit_on_failed_rows(result.failed, out)


def _exit_on_failed_rows(failed: list, out: Path) -> None:
    """After the failed rows were named (they are kept out of the tables): exit 1."""
    if failed:
        console.print(f"{len(failed)} row(s) failed (tracebacks in {out / 'errors.log'}); run the "
                      "same command again to retry them", highlight=False)
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/demo"),
    n_test: Annotated[Optional[int], typer.Option(help="Number of MNIST test images.")] = None,
    data_dir: DataDir = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Model cache folder.")] = None,
    set_: Overrides = None,
) -> None:
    """The main job: train (or reuse) the classifier and every purifier on MNIST with quick
    settings, attack them under each threat model, print the table, write the report."""
    evaluate(Path("demo-mnist"), out, n_test=n_test, data_dir=data_dir, cache_dir=cache_dir,
             device=None, set_=set_)


@app.command()
def purify(
    images: Annotated[list[Path], typer.Argument(help="Image files of one size.")],
    purifier: Annotated[str, typer.Option(help="Checkpoint directory or purifier name.")],
    out: Annotated[Path, typer.Option(help="Folder for the purified images (PNG; inputs' "
                                           "sub-folders are mirrored).")],
    channels: Annotated[Optional[int], typer.Option(
        help="Convert the images to 1 (grayscale) or 3 (RGB) channels. Default: the "
             "checkpoint's channels, else the images' own; an image with other channels is "
             "refused rather than converted.")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        help="Purifier parameter key=value, for a purifier given by name.")] = None,
) -> None:
    """Purify image files with a trained purifier (or an untrained transform by name)."""
    import torch

    from .data import read_image_files, save_image_files
    from .purifiers import create_purifier, load_purifier, purifier_class

    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3; got {channels}")
    targets = _purified_paths(images, out)
    path = Path(purifier)
    module = None
    takes = None
    if path.exists():
        if param:
            raise ConfigError("--param sets a purifier given by name; a checkpoint brings its own "
                              "parameters")
        module, _ = load_purifier(path)
        takes = module.in_channels
        if channels is not None and takes is not None and channels != takes:
            raise ConfigError(f"--channels {channels} does not match the purifier {path}, which "
                              f"takes {takes} channel(s)")
    elif purifier_class(purifier).trainable:
        raise ConfigError(f"purifier {purifier!r} must be trained first; pass its checkpoint "
                          "directory")
    x, infos = read_image_files(images, channels or takes, convert=channels is not None)
    if module is None:
        module = create_purifier(purifier, **{"in_channels": x.shape[1], **_params(param)})
    with torch.no_grad():
        y = module.eval()(x)
    save_image_files(y, targets, bits=[info.bits for info in infos])
    console.print(f"purified {len(targets)} image(s) into {out}")


def _purified_paths(images: list[Path], out: Path) -> list[Path]:
    """Where each purified image goes: its path relative to the inputs' common folder, under
    ``out``, as PNG. Two inputs that would land on one file, or an output that would replace its
    input, are refused before anything is read (InputError)."""
    import os

    from .errors import InputError

    resolved = [p.resolve() for p in images]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    targets = [out / p.relative_to(root).with_suffix(".png") for p in resolved]
    seen: dict[Path, Path] = {}
    for src, src_abs, target in zip(images, resolved, targets, strict=True):
        key = target.resolve()
        if key == src_abs and src_abs.exists():
            raise InputError(f"purifying {src} into {out} would overwrite it; pick another --out")
        if key in seen:
            raise InputError(f"{seen[key]} and {src} would both be written to {target}; rename "
                             "one or purify them separately")
        seen[key] = src
    return targets


@app.command("list")
def list_registered() -> None:
    """List data sets, classifiers, purifiers, threat models and attacks."""
    from .attacks import ATTACKS, BASES
    from .data import DATASETS
    from .models import CLASSIFIERS
    from .purifiers import PURIFIERS

    out = Console()
    out.print(f"data sets:     {', '.join(DATASETS.names())}")
    out.print(f"classifiers:   {', '.join(CLASSIFIERS.names())}")
    out.print(f"purifiers:     {', '.join(PURIFIERS.names())}")
    out.print(f"threat models: {', '.join(BASES)} (+eot or +fixed)")
    out.print(f"attacks:       {', '.join(ATTACKS.names())}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; turn aepurify's errors into one line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        app(args=argv, prog_name="aepurify")
    except RankFailedError:  # under torchrun: the failed rank printed the problem itself
        sys.exit(2)
    except AepurifyError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # outside a command (typer maps a command's to exit 130)
        console.print("interrupted", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
