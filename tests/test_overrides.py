"""``--set dotted.key=value`` overrides of a config: where they land, what they may not touch,
and the one-line errors."""

from __future__ import annotations

import pytest

from aepurify.errors import ConfigError
from aepurify.evaluation.config_file import apply_override, load_config
from aepurify.resources import find_config

from .test_cli import assert_one_line_error, run_cli


def test_apply_override_walks_keys_and_list_indices():
    data = {"classifier": {"arch": "lenet"}, "purifiers": [{"name": "a"}, {"name": "b"}]}
    apply_override(data, "classifier.train.epochs", 1)      # missing mappings are created
    apply_override(data, "purifiers.1.train.lr", 0.1)
    apply_override(data, "purifiers.-1.label", "last")
    apply_override(data, "n_test", 20)
    assert data["classifier"] == {"arch": "lenet", "train": {"epochs": 1}}
    assert data["purifiers"][1] == {"name": "b", "train": {"lr": 0.1}, "label": "last"}
    assert data["n_test"] == 20


@pytest.mark.parametrize("path, message", [
    ("purifiers.2.train.epochs", "index 2 is out of range (purifiers has 2 entries)"),
    ("purifiers.first.train", "purifiers is a list; index it with a number"),
    ("classifier.arch.width", "classifier.arch is a value ('lenet')"),
    ("classifiers.0.train", "the config has no list 'classifiers' to index"),
    ("classifier..train", "empty key"),
])
def test_apply_override_bad_paths(path, message):
    data = {"classifier": {"arch": "lenet"}, "purifiers": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(ConfigError) as info:
        apply_override(data, path, 1)
    assert message in str(info.value) and str(info.value).startswith(f"--set {path}: ")


def test_overrides_reach_only_the_named_entry_through_yaml_anchors():
    # the feature-dae paper config shares its training block between feature-dae and hgd
    # through a YAML anchor; an override of one must leave the other alone
    path = find_config("papers/feature-dae-cifar10")
    config = load_config(path, overrides={"purifiers.0.train.epochs": 1,
                                          "purifiers.0.train.extra.pairs.mode": "on-the-fly",
                                          "classifier.train.max_images": 64, "n_test": 20})
    dae, hgd = config.purifiers
    assert dae.train.epochs == 1 and hgd.train.epochs == load_config(path).purifiers[1].train.epochs
    assert dae.train.extra["pairs"]["mode"] == "on-the-fly" and "mode" not in hgd.train.extra["pairs"]
    assert config.classifier.train.max_images == 64 and config.n_test == 20


def test_overridden_values_are_validated_like_the_rest():
    path = find_config("demo-mnist")
    with pytest.raises(ConfigError, match=r"classifiers\.0\.trian: Extra inputs"):
        load_config(path, overrides={"classifier.trian.epochs": 1})
    with pytest.raises(ConfigError, match=r"classifiers\.0\.train\.epochs: .*integer"):
        load_config(path, overrides={"classifier.train.epochs": "many"})


def test_set_options_parse_as_yaml_values():
    from aepurify.cli import _overrides

    assert _overrides(["a.b=1", "c=[2, 4]", "d={x: y}", "e=null", "f=x=y", "a.b=2"]) == {
        "a.b": 2, "c": [2, 4], "d": {"x": "y"}, "e": None, "f": "x=y"}
    with pytest.raises(ConfigError, match="--set takes dotted.key=value"):
        _overrides(["epochs"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        _overrides(["a=[1"])


def test_cli_set_errors_are_one_line(tmp_path):
    out = str(tmp_path / "run")
    assert_one_line_error(run_cli("evaluate", "demo-mnist", "--out", out, "--set",
                                  "purifiers.99.train.epochs=1"),
                          "--set purifiers.99.train.epochs", "out of range")
    assert_one_line_error(run_cli("demo", "--out", out, "--set", "classifier.train.epochs=-1"),
                          "classifiers.0.train.epochs", "greater than or equal to 0")
