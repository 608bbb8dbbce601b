"""Configs and checkpoints are checked before any work: unknown devices, parameters of the wrong
type or name, epsilons that are not finite, and hyper-parameters a checkpoint may not hold end
in one line (exit status 2 on the command line), not in a traceback after training."""

from __future__ import annotations

import json
import logging
import math

import pytest
import yaml

from aepurify.checkpoint import save_checkpoint
from aepurify.errors import CheckpointError, ConfigError
from aepurify.evaluation import evaluate
from aepurify.evaluation.config_file import parse_config
from aepurify.purifiers import create_purifier, load_purifier

from .test_cli import assert_one_line_error, run_cli

BASE = {"dataset": "mnist", "n_test": 20, "classifier": {"arch": "lenet"}}


def _config(**changes):
    return {**BASE, **changes}


@pytest.mark.parametrize("changes,fragments", [
    ({"device": "tpu"}, ["device: unknown device 'tpu'", "cuda"]),
    ({"purifiers": [{"name": "jpeg", "params": {"quality": "high"}}]},
     ["purifiers[0]", "purifier 'jpeg'", "'quality'", "valid integer", "'high'"]),
    ({"purifiers": [{"name": "magnet", "params": {"filterz": 3}}]},
     ["unknown parameter 'filterz'", "did you mean 'filters'"]),
    ({"attacks": [{"name": "pgd", "eps": [0.1], "params": {"stepz": 10}}]},
     ["attacks[0]", "attack 'pgd'", "unknown parameter 'stepz'", "did you mean 'steps'"]),
    ({"attacks": [{"name": "pgd", "eps": [0.1], "params": {"eps": 0.3}}]},
     ["attacks[0]", "'eps' is set by aepurify"]),
    ({"attacks": [{"name": "fgsm", "eps": []}]}, ["attacks.0.eps", "at least 1"]),
    ({"attacks": [{"name": "fgsm", "eps": [float("nan")]}]}, ["eps", "finite"]),
    ({"attacks": [{"name": "fgsm", "eps": [0.1, float("inf")]}]}, ["eps", "finite"]),
    ({"attacks": [{"name": "fgsm", "eps": ["1/0"]}]}, ["eps", "cannot read epsilon"]),
    ({"classifier": {"arch": "lenet", "params": {"num_classes": "ten"}}},
     ["classifier.params", "'num_classes'"]),
    ({"analyses": [{"name": "end-to-end", "params": {"atack": "pgd"}}]},
     ["analyses[0]", "unknown parameter 'atack'"]),
])
def test_bad_configs_fail_in_one_line(changes, fragments):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(**changes))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_adaptive_attack_params_belong_to_the_purifier():
    """Under the adaptive threat model the purifier's own attack takes the params (S-BIM's
    margin_on), so they are not checked against the registered bim."""
    parse_config(_config(purifiers=[{"name": "apudae"}], attacks=[
        {"name": "bim", "eps": [0.1], "params": {"steps": 7, "margin_on": "bpda"},
         "purifiers": ["apudae"], "threat_models": ["adaptive"]}]))
    with pytest.raises(ConfigError, match="unknown parameter 'margin_on'"):
        parse_config(_config(purifiers=[{"name": "apudae"}], attacks=[
            {"name": "bim", "eps": [0.1], "params": {"margin_on": "bpda"},
             "threat_models": ["adaptive"]}]))  # the undefended classifier meets it gray-box
    # ... and checked against S-BIM's options, before any model trains
    for params, fragment in (({"stepz": 7}, "unknown parameter 'stepz' (did you mean 'steps'?)"),
                             ({"recon_weight": "half"}, "'recon_weight'"),
                             ({"eps": 0.3}, "'eps' is set by aepurify")):
        with pytest.raises(ConfigError) as info:
            parse_config(_config(purifiers=[{"name": "apudae"}], attacks=[
                {"name": "bim", "eps": [0.1], "params": params, "purifiers": ["apudae"],
                 "threat_models": ["adaptive"]}]))
        message = str(info.value)
        assert "\n" not in message and "attacks[0] (adaptive, apudae): bad S-BIM" in message
        assert fragment in message, message


def test_large_linf_eps_warns(caplog):
    with caplog.at_level(logging.WARNING):
        config = parse_config(_config(attacks=[{"name": "fgsm", "eps": [8, 0.1]},
                                               {"name": "pgd", "norm": "l2", "eps": [2.0]}]))
    assert config.attacks[0].eps == [8.0, 0.1]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "above 1" in warned[0] and "8/255" in warned[0]


def test_bad_config_stops_before_training(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(
        attacks=[{"name": "pgd", "eps": [0.1], "params": {"stepz": 10}}])))
    with pytest.raises(ConfigError, match="stepz"):
        evaluate(path, tmp_path / "run", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_device_tpu_on_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(device="tpu")))
    assert_one_line_error(run_cli("evaluate", str(path), "--out", str(tmp_path / "run")),
                          "unknown device 'tpu'")
    assert_one_line_error(run_cli("train", "classifier", "--dataset", "mnist", "--arch", "lenet",
                                  "--device", "tpu", "--out", str(tmp_path / "c")),
                          "unknown device 'tpu'")


def _tampered_checkpoint(tmp_path, **hparams):
    ckpt = save_checkpoint(create_purifier("magnet", "mnist"), tmp_path / "magnet",
                           kind="purifier", name="magnet", dataset="mnist")
    config = json.loads((ckpt / "config.json").read_text())
    config["hparams"].update(hparams)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


@pytest.mark.parametrize("hparams,fragment", [
    ({"name": "evil"}, "unknown parameter 'name'"),
    ({"filters": "abc"}, "bad parameters for purifier 'magnet': 'filters': Input should be a "
                         "valid integer; got 'abc'"),
    ({"filters": -3}, "bad parameters for purifier 'magnet'"),
])
def test_checkpoint_hparams_are_checked(tmp_path, hparams, fragment):
    ckpt = _tampered_checkpoint(tmp_path, **hparams)
    with pytest.raises(CheckpointError, match="cannot be rebuilt") as info:
        load_purifier(ckpt)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_hparams_on_the_command_line(tmp_path):
    image = tmp_path / "x.png"
    from aepurify.data import save_image_files
    import torch

    save_image_files(torch.zeros(1, 1, 28, 28), [image])
    ckpt = _tampered_checkpoint(tmp_path, name="evil")
    assert_one_line_error(run_cli("purify", str(image), "--purifier", str(ckpt), "--out",
                                  str(tmp_path / "o")), "unknown parameter 'name'")


def test_eps_fractions_still_parse():
    config = parse_config(_config(attacks=[{"name": "fgsm", "eps": ["8/255", 0]}]))
    assert math.isclose(config.attacks[0].eps[0], 8 / 255) and config.attacks[0].eps[1] == 0
