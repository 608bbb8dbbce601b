"""Entry points (``package.module:factory``) in configs and on the command line, and the
``aepurify audit`` command (issue 12): the same numbers as ``evaluate``, one line and exit 2
for bad input."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from aepurify.entry_points import call_entry_point, is_entry_point, load_factory
from aepurify.errors import ConfigError
from aepurify.evaluation import evaluate, parse_config

from .test_cli import assert_one_line_error, lenet_checkpoint, run_cli  # noqa: F401

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    class Small(nn.Module):
        def __init__(self, width: int = 4, classes: int = 10):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, width, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(width * 13 * 13, classes))

        def forward(self, x):
            return self.net(x)


    def small(width: int = 4, classes: int = 10) -> nn.Module:
        return Small(width, classes)


    def probabilities() -> nn.Module:
        return nn.Sequential(Small(), nn.Softmax(dim=1))


    def squeeze(levels: int = 4):
        return lambda x: torch.round(x * (levels - 1)) / (levels - 1)


    def shrink():
        return lambda x: x[:, :, :14]


    def brighten():
        return lambda x: x * 2


    def broken():
        raise RuntimeError("weights file missing")
''')


@pytest.fixture()
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with ``my_models.py``, made the current directory (entry points import from
    it)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_models.py").write_text(MODELS)
    monkeypatch.chdir(folder)
    return folder


def test_entry_points_load_and_fail_in_one_line(models_dir):
    assert is_entry_point("my_models:small") and not is_entry_point("lenet")
    assert not is_entry_point("C:\\models\\net")
    net = call_entry_point("my_models:small", {"width": 2})
    assert net.net[0].out_channels == 2
    with pytest.raises(ConfigError, match="no module named 'not_there'"):
        load_factory("not_there:small")
    with pytest.raises(ConfigError, match="has no attribute 'big'"):
        load_factory("my_models:big")
    with pytest.raises(ConfigError, match="unknown parameter 'depth'"):
        call_entry_point("my_models:small", {"depth": 3}, "classifier")
    with pytest.raises(ConfigError, match="'width': Input should be a valid integer"):
        call_entry_point("my_models:small", {"width": "wide"}, "classifier")
    with pytest.raises(ConfigError, match="raised RuntimeError: weights file missing"):
        call_entry_point("my_models:broken", {}, "classifier")
    with pytest.raises(ConfigError, match="must read 'package.module:factory'"):
        load_factory("my models:small")


def entry_config(n_test: int = 40) -> dict:
    return {
        "name": "entry", "dataset": "mnist", "n_test": n_test, "batch_size": 40,
        "classifier": {"entry_point": "my_models:small", "kwargs": {"width": 4},
                       "mean": [0.1307], "std": [0.3081],
                       "train": {"epochs": 1, "batch_size": 64, "max_images": 1000}},
        "purifiers": [
            {"entry_point": "my_models:squeeze", "kwargs": {"levels": 4}},
            {"entry_point": "my_models:squeeze", "label": "noisy-squeeze",
             "kwargs": {"levels": 8}},
        ],
        "threat_models": ["gray-box", "white-box", "bpda"],
        "attacks": [{"name": "pgd", "eps": [0.2], "params": {"steps": 5}}],
    }


def test_an_entry_point_config_trains_probes_and_evaluates(models_dir, tmp_path):
    config = parse_config(entry_config())
    assert config.classifier.row_label == "small"
    result = evaluate(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    clf = record["models"]["classifier:small"]
    assert clf["origin"] == "trained" and clf["metrics"]["test_accuracy"] > 0.5
    pur = record["models"]["purifier:squeeze"]
    assert pur["origin"] == "entry point" and pur["entry_point"] == "my_models:squeeze"
    assert pur["probed"]["differentiable"]["probed"] is False
    seen = {(r.purifier, r.threat_model) for r in result.rows if r.attack != "none"}
    assert ("squeeze", "bpda") in seen and ("squeeze", "white-box") not in seen
    assert {"purifier": "squeeze", "threat_model": "white-box"} in [
        {k: s[k] for k in ("purifier", "threat_model")} for s in record["skipped"]]
    # the cache key includes the entry point and its kwargs: another width trains anew
    again = evaluate(config, tmp_path / "run2")
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["models"][
        "classifier:small"]["origin"] == "cache"
    assert [r.accuracy for r in again.rows] == [r.accuracy for r in result.rows]
    other = entry_config()
    other["classifier"]["kwargs"] = {"width": 6}
    evaluate(parse_config(other), tmp_path / "run3")
    assert json.loads((tmp_path / "run3" / "run.json").read_text())["models"][
        "classifier:small"]["origin"] == "trained"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["classifier"].update(entry_point="nowhere:small"), "no module named 'nowhere'"),
    (lambda c: c["classifier"].update(kwargs={"widht": 4}),
     "classifier.entry_point: bad parameters for classifier entry point 'my_models:small': "
     "unknown parameter 'widht' (did you mean 'width'?)"),
    (lambda c: c["purifiers"][0].update(entry_point="my_models:nothing"),
     "purifiers[0].entry_point: entry point 'my_models:nothing': module my_models has no "
     "attribute 'nothing'"),
    (lambda c: c["classifier"].update(arch="lenet"), "either arch"),
    (lambda c: c["purifiers"][0].update(params={"levels": 2}), "takes kwargs"),
])
def test_bad_entry_point_configs_are_one_line(models_dir, edit, message):
    config = entry_config()
    edit(config)
    with pytest.raises(ConfigError) as info:
        parse_config(config, source="bad.yaml")
    text = str(info.value)
    assert text.startswith("bad.yaml: ") and "\n" not in text and message in text, text


def test_a_missing_entry_point_module_exits_2_on_the_command_line(models_dir, tmp_path):
    config = entry_config()
    config["purifiers"][0]["entry_point"] = "nowhere:squeeze"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("evaluate", str(path), "--out", str(tmp_path / "o"), cwd=models_dir)
    assert_one_line_error(proc, "purifiers[0].entry_point: entry point 'nowhere:squeeze': no "
                                "module named 'nowhere'")


def test_a_factory_that_raises_is_one_line(models_dir, tmp_path):
    config = entry_config()
    config["purifiers"] = [{"entry_point": "my_models:broken"}]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("evaluate", str(path), "--out", str(tmp_path / "o"), cwd=models_dir)
    # the factory runs once the classifier is ready, so progress lines may come before it
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr
    assert "purifier entry point 'my_models:broken' raised RuntimeError: weights file " \
           "missing" in errors[0]


def test_audit_command_matches_evaluate_on_a_checkpoint_and_a_registered_purifier(
        lenet_checkpoint, tmp_path):  # noqa: F811
    n = 60
    # every attack on every example, as evaluate runs them (by default the audit's APGD-CE
    # attacks only what PGD left, and its row holds the cumulative figure)
    proc = run_cli("audit", "--classifier", str(lenet_checkpoint), "--purifier", "bit-depth",
                   "--purifier-arg", "bits=2", "--data", "mnist", "--eps", "0.2", "--version",
                   "quick", "--n-test", str(n), "--out", str(tmp_path / "audit"), "--device",
                   "cpu", "--attack-every-example")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout and all(len(line) <= 80 for line in proc.stdout.splitlines())
    assert "bpda" in proc.stdout
    config = {"name": "same", "dataset": "mnist", "n_test": n, "batch_size": 500,
              "classifier": {"arch": "lenet", "checkpoint": str(lenet_checkpoint)},
              "purifiers": [{"name": "bit-depth", "params": {"bits": 2}}],
              "threat_models": ["bpda"],
              "attacks": [{"name": "pgd", "eps": [0.2], "params": {"steps": 20}},
                          {"name": "apgd-ce", "eps": [0.2]}]}
    result = evaluate(parse_config(config), tmp_path / "evaluate")
    expected = next(s for s in result.summary if s.purifier == "bit-depth")
    with open(tmp_path / "audit" / "summary.csv") as f:
        audited = next(r for r in csv.DictReader(f) if r["purifier"] == "bit-depth")
    assert float(audited["adaptive_robust"]) == pytest.approx(expected.adaptive_robust)
    assert f"{expected.adaptive_robust:.3f}" in proc.stdout
    by_attack = {r.attack: r.accuracy for r in result.rows if r.purifier == "bit-depth"}
    with open(tmp_path / "audit" / "results.csv") as f:
        for row in csv.DictReader(f):
            if row["purifier"] == "bit-depth":
                assert float(row["accuracy"]) == pytest.approx(by_attack[row["attack"]]), row


@pytest.mark.parametrize("args, message", [
    (["--purifier", "my_models:shrink"], "changed the shape: (8, 1, 28, 28) -> (8, 1, 14, 28)"),
    (["--purifier", "my_models:brighten"], "returned values outside [0, 1]"),
    (["--classifier", "my_models:probabilities"], "returns probabilities"),
    (["--classifier-arg", "classes=5"], "labels must be class indices in [0, 4]"),
])
def test_audit_command_bad_input_is_one_line_and_exit_2(models_dir, args, message):
    base = {"--classifier": "my_models:small", "--data": "mnist", "--eps": "0.1",
            "--n-test": "16", "--version": "quick"}
    extra = []
    for option, value in zip(args[::2], args[1::2]):
        if option in base:
            base[option] = value
        else:
            extra += [option, value]
    argv = [a for kv in base.items() for a in kv] + extra
    proc = run_cli("audit", *argv, cwd=models_dir)
    assert_one_line_error(proc, message)


def test_audit_command_refuses_what_it_cannot_load(models_dir):
    from aepurify.cli.audit import load_audit_classifier, load_audit_purifier

    for call, message in [
        (lambda: load_audit_classifier("nowhere:net", {}, None, None), "no module named"),
        (lambda: load_audit_classifier("my_models:small", {"depth": 2}, None, None),
         "unknown parameter 'depth'"),
        (lambda: load_audit_classifier("lenet", {}, None, None), "must be trained first"),
        (lambda: load_audit_purifier("magnet", {}, 1, "mnist"), "must be trained first"),
        (lambda: load_audit_purifier("none", {"bits": 2}, 1, "mnist"), "--purifier none"),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()
