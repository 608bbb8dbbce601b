"""``aepurify train classifier|purifier``: train a model and save it as a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError
from .app import DataDir, Device, _params, _settings, console, train_app


@contextmanager
def _training_ranks(dev: Any) -> Iterator[Any]:
    """Under torchrun (several ranks): the block trains data-parallel (DistributedDataParallel,
    see aepurify.training.data_parallel) and yields the ranks' group; otherwise yields None."""
    from ..distributed import launched, process_group
    from ..training import data_parallel

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
    arch: Annotated[str, typer.Option(
        help="lenet, small-cnn, resnet18, vgg11, vgg16, airbench94, airbench95.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    epochs: Annotated[Optional[int], typer.Option(
        help="Epochs [default: the architecture's own (airbench), else 2].")] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Learning rate [default: the architecture's own, else 0.001].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size [default: the architecture's own, else 128].")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Train on the first N images.")] = None,
    augment: Annotated[Optional[bool], typer.Option(
        help="Random crop and flip [default: the architecture's own, else off].")] = None,
    precision: Annotated[str, typer.Option(help="auto, bf16 or fp32.")] = "auto",
    seed: int = 0, data_dir: DataDir = None, device: Device = "auto",
) -> None:
    """Train a classifier and save it as model.safetensors + config.json."""
    from ..checkpoint import save_checkpoint
    from ..data import load_dataset
    from ..models import create_classifier, default_train
    from ..training import accuracy, fit_classifier
    from ..utils import check_folder_path, pick_device, seed_everything, training_numerics

    check_folder_path(out)  # before the training, not after it
    given = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "augment": augment}
    settings = _settings(**{"epochs": 2, "lr": 1e-3, "batch_size": 128, **default_train(arch),
                            **{k: v for k, v in given.items() if v is not None},
                            "max_images": max_images, "seed": seed, "precision": precision})
    dev = pick_device(device)
    settings = settings.resolved(dev)
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
    precision: Annotated[str, typer.Option(help="auto, bf16 or fp32.")] = "auto",
    denoiser_objective: Annotated[Optional[str], typer.Option(
        help="Train it as a Gaussian denoiser for smoothing instead (Salman et al. 2020): mse, "
             "stability or classification (the last two need --classifier).")] = None,
    denoiser_sigma: Annotated[Optional[float], typer.Option(
        help="The Gaussian denoiser's noise sigma, pixels in [0, 1].")] = None,
    denoiser_mse_epochs: Annotated[int, typer.Option(
        help="Epochs of MSE before the denoiser objective (Salman et al.'s warm start).")] = 0,
    seed: int = 0, data_dir: DataDir = None, device: Device = "auto",
) -> None:
    """Train a purifier and save it as model.safetensors + config.json."""
    from ..checkpoint import save_checkpoint
    from ..data import load_dataset
    from ..models import load_classifier
    from ..purifiers import create_purifier, purifier_class
    from ..utils import check_folder_path, pick_device, seed_everything, training_numerics

    check_folder_path(out)  # before the training, not after it
    settings = _settings(epochs=epochs, lr=lr, batch_size=batch_size, max_images=max_images,
                         seed=seed, extra=_params(extra, "--extra"), precision=precision)
    denoiser = _denoiser(denoiser_objective, denoiser_sigma, denoiser_mse_epochs)
    dev = pick_device(device)
    settings = settings.resolved(dev)
    cls = purifier_class(name)
    if not cls.trainable:
        raise ConfigError(f"purifier {name!r} has nothing to train; use it directly")
    clf = None
    if classifier is not None:
        clf, _ = load_classifier(classifier, map_location=dev)
    elif cls.needs_classifier or (denoiser is not None and denoiser.needs_classifier):
        raise ConfigError(f"purifier {name!r} trains against a classifier: pass --classifier DIR")
    train = load_dataset(dataset, "train", data_dir)
    with _training_ranks(dev) as ranks, training_numerics(dev) as numerics:
        seed_everything(seed)
        purifier = create_purifier(name, dataset, **_params(param)).to(dev)
        if denoiser is not None:
            from ..training.gaussian_denoiser import fit_gaussian_denoiser

            metrics = fit_gaussian_denoiser(purifier, train, settings, denoiser, classifier=clf,
                                            device=dev, name=name)
        else:
            metrics = purifier.fit(train, settings, classifier=clf, device=dev)
    if not _records(ranks, numerics):
        return
    save_checkpoint(purifier, out, kind="purifier", name=name, dataset=dataset,
                    train=settings.model_dump(), metrics=metrics, seed=seed,
                    classifier=str(classifier) if classifier else None, environment=numerics)
    console.print(f"{name} on {dataset}: final loss {metrics.get('final_loss', float('nan')):.5f}; "
                  f"saved to {out}")


def _denoiser(objective: str | None, sigma: float | None, mse_epochs: int) -> Any:
    """The Gaussian-denoiser settings of ``train purifier`` (None: the purifier's own recipe).

    Raises:
        ConfigError: a sigma or warm start without an objective, an objective without a sigma,
            or a value out of range.
    """
    from pydantic import ValidationError

    from ..training.gaussian_denoiser import GaussianDenoiser

    if objective is None:
        if sigma is not None or mse_epochs:
            raise ConfigError("--denoiser-sigma and --denoiser-mse-epochs go with "
                              "--denoiser-objective")
        return None
    if sigma is None:
        raise ConfigError("--denoiser-objective needs --denoiser-sigma (the smoothing noise)")
    try:
        return GaussianDenoiser(objective=objective, sigma=sigma, mse_epochs=mse_epochs)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--denoiser-{str(err['loc'][0]).replace('_', '-')}: "
                          f"{err['msg']}") from None
