"""Every shipped config validates; the full-size CIFAR-10 configs hold the papers' sizes, and the
CPU check commands written in their headers (with --set overrides) give valid configs."""

from __future__ import annotations

import re
import shlex

import pytest

from aepurify.evaluation import load_config
from aepurify.purifiers import create_purifier
from aepurify.resources import find_config

from .conftest import REPO

# configs/certify/ holds certification configs (aepurify certify; tests/test_certify_configs.py)
CONFIGS = sorted(p.relative_to(REPO / "configs").with_suffix("").as_posix()
                 for p in (REPO / "configs").rglob("*.yaml")
                 if p.parent.name != "certify")
FULL = [name for name in CONFIGS if name.endswith("cifar10-full")]

@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_validates(name):
    config = load_config(find_config(name))
    assert config.classifiers and config.n_test >= 1


def test_each_cifar10_paper_config_has_a_full_size_variant():
    papers = {n for n in CONFIGS if n.startswith("papers/") and n.endswith("-cifar10")}
    assert papers and {f"{n}-full" for n in papers} <= set(FULL)
    assert "benchmark-cifar10-full" in FULL


@pytest.mark.parametrize("name", FULL)
def test_full_size_configs_hold_the_papers_sizes(name):
    config = load_config(find_config(name))
    assert config.dataset == "cifar10-jpeg" and config.n_test == 1000 and config.sanity.enabled
    # the fast CIFAR-10 classifier at full size, with its recipe's settings (nothing overridden)
    airbench = next(c for c in config.classifiers if c.arch == "airbench95")
    assert not airbench.params and not airbench.train.model_fields_set
    for entry in config.purifiers:
        purifier = create_purifier(entry.name, config.dataset, **entry.params)
        hp = purifier.hparams
        if entry.name == "apudae":
            assert (hp["layers"], hp["features"], hp["mode"]) == (15, 64, "adaptive")  # REDNet-30
        elif entry.name == "s2snet":
            assert purifier.plan == [(64, 2), (128, 2), (256, 3)]  # VGG-16's first stages
        elif entry.name == "vae":
            assert (hp["layout"], hp["latent_dim"]) == ("cifar10", 1024)
        elif entry.name == "patch-vae":
            assert hp["latent_dim"] == 1024
        elif entry.name in ("feature-dae", "hgd"):
            assert hp["width"] == 64
            if entry.name == "feature-dae":
                assert entry.train.extra["feature_extractor"]["arch"] == "vgg16"
        elif entry.name == "magnet":
            assert (hp["pool"], hp["filters"], hp["noise_std"]) == (False, 3, 0.025)
        if purifier.trainable:  # trained on the whole split, not a CPU-sized subset
            assert entry.train.max_images is None and entry.train.epochs >= 10


def _cpu_check_overrides(name: str) -> dict[str, object]:
    """The --set options of the CPU check command in a full config's header (or, for the
    benchmark, in docs/results.md)."""
    import yaml

    text = find_config(name).read_text()
    if "--set" not in text:
        text = (REPO / "docs" / "results.md").read_text()
    command = re.search(rf"aepurify evaluate {re.escape(name)} [^\n]*--n-test 20(?:[^\n]*\\\n)*[^\n]*",
                        text)
    assert command, f"no CPU check command for {name}"
    words = shlex.split(command.group(0).replace("#", " ").replace("\\\n", " "))
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert sets
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)}


@pytest.mark.parametrize("name", FULL)
def test_cpu_check_commands_give_valid_short_configs(name):
    overrides = _cpu_check_overrides(name)
    config = load_config(find_config(name), overrides={**overrides, "n_test": 20})
    trainable = [e for e in [*config.classifiers, *config.purifiers]
                 if getattr(e, "name", None) is None or create_purifier(e.name).trainable]
    for entry in trainable:  # every model's training is cut short
        assert entry.train.max_images is not None and entry.train.max_images <= 512, entry
        assert entry.train.epochs <= 1
