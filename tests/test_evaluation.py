"""The grid runner on real MNIST with tiny settings: outputs, resume after a kill, config errors."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from aepurify.errors import ConfigError
from aepurify.evaluation import evaluate, load_config
from aepurify.evaluation import run as run_mod
from aepurify.evaluation.store import ResultStore

TINY = {
    "name": "tiny",
    "dataset": "mnist",
    "n_test": 60,
    "batch_size": 30,
    "classifier": {"arch": "lenet",
                   "train": {"epochs": 1, "batch_size": 64, "max_images": 2000}},
    "purifiers": [
        {"name": "magnet", "train": {"epochs": 1, "batch_size": 64, "lr": 0.01,
                                     "max_images": 1000}},
        {"name": "jpeg", "params": {"quality": 50}, "threat_models": ["gray-box", "bpda"]},
        {"name": "bit-depth", "params": {"bits": 1}},
    ],
    "threat_models": ["gray-box", "white-box", "bpda"],
    "attacks": [
        {"name": "fgsm", "eps": [0.1, 0.3]},
        {"name": "pgd", "eps": [0.3], "params": {"steps": 3}},
    ],
}


def _write(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_grid_writes_all_outputs(tmp_path):
    out = tmp_path / "run"
    rows = evaluate(_write(tmp_path, TINY), out).rows
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == ["dataset", "classifier", "purifier", "threat_model", "attack",
                                "norm", "eps", "n", "accuracy", "seconds"]
    assert len(records) == len(rows)
    seen = {(r["purifier"], r["threat_model"]) for r in records if r["attack"] != "none"}
    assert {("magnet", "gray-box"), ("magnet", "white-box"), ("magnet", "bpda"),
            ("jpeg", "gray-box"), ("jpeg", "bpda"), ("bit-depth", "bpda"),
            ("none", "gray-box")} <= seen
    assert ("jpeg", "white-box") not in seen and ("bit-depth", "white-box") not in seen
    clean = [r for r in records if r["attack"] == "none"]
    assert {r["purifier"] for r in clean} == {"none", "magnet", "jpeg", "bit-depth"}
    assert all(r["eps"] == "0.0" and r["threat_model"] == "none" for r in clean)
    for r in records:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and int(r["n"]) == 60
    report = (out / "report.md").read_text()
    assert "## Threat model: bpda" in report and "not differentiable" in report
    assert (out / "accuracy-gray-box.png").stat().st_size > 1000
    assert (out / "accuracy-white-box.png").exists() and (out / "accuracy-bpda.png").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 0 and record["code_version"] and record["status"] == "finished"
    # gray-box examples are shared: jpeg and bit-depth see the same adversarial inputs, so an
    # identity-like purifier would score like "none"; here just check all gray-box rows exist
    pgd_gray = [r for r in records if r["attack"] == "pgd" and r["threat_model"] == "gray-box"]
    assert len(pgd_gray) == 4


def test_killed_run_resumes_without_recomputing(tmp_path, monkeypatch):
    config = _write(tmp_path, TINY)
    out = tmp_path / "run"
    real_put = ResultStore.put
    calls = {"n": 0}

    def dying_put(self, row):
        real_put(self, row)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed right after the fifth row was committed

    monkeypatch.setattr(ResultStore, "put", dying_put)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, out)
    with ResultStore(out / "results.db") as store:
        first = {r.key: r for r in store.rows()}
    assert len(first) == 5

    crafted = []
    real_craft = run_mod.craft_cell

    def counting_craft(exp, cell, *args):
        crafted.append(cell.key)
        return real_craft(exp, cell, *args)

    monkeypatch.setattr(ResultStore, "put", real_put)
    monkeypatch.setattr(run_mod, "craft_cell", counting_craft)
    rows = evaluate(config, out).rows
    assert not set(crafted) & set(first)  # nothing finished before the kill was redone
    by_key = {r.key: r for r in rows}
    for key, row in first.items():
        assert by_key[key].accuracy == row.accuracy and by_key[key].seconds == row.seconds
    n_total = len(rows)
    crafted.clear()
    evaluate(config, out)  # a third run has nothing left to do
    assert crafted == [] and n_total > 5


def test_changed_settings_recompute_only_affected_rows(tmp_path, monkeypatch):
    out = tmp_path / "run"
    evaluate(_write(tmp_path, TINY), out)
    changed = json.loads(json.dumps(TINY))
    changed["attacks"][1]["params"]["steps"] = 4
    crafted = []
    real_craft = run_mod.craft_cell
    monkeypatch.setattr(run_mod, "craft_cell",
                        lambda exp, cell, *a: crafted.append(cell.key) or real_craft(exp, cell, *a))
    evaluate(_write(tmp_path, changed), out)
    assert crafted and all(key[4] == "pgd" for key in crafted)


def test_a_failing_row_is_reported_and_retried_not_fatal(tmp_path, monkeypatch):
    import typer

    from aepurify.cli import _exit_on_failed_rows

    config, out = _write(tmp_path, TINY), tmp_path / "run"
    real_craft = run_mod.craft_cell

    def broken_engine(exp, cell, *args):
        if cell.key[2:5] == ("magnet", "white-box", "pgd"):
            raise RuntimeError("view size is not compatible with input tensor's size\nmore")
        return real_craft(exp, cell, *args)

    monkeypatch.setattr(run_mod, "craft_cell", broken_engine)
    result = evaluate(config, out)
    rows = result.rows
    keys = {r.key[2:5] for r in rows}
    assert ("magnet", "white-box", "pgd") not in keys and ("magnet", "white-box", "fgsm") in keys
    assert ("none", "gray-box", "pgd") in keys  # rows after the failure were computed
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished, 1 row(s) failed"
    (failed,) = record["failed"]
    assert "magnet white-box pgd" in failed["row"]
    assert failed["error"] == ("RuntimeError: view size is not compatible with input tensor's "
                               "size")
    assert "Traceback" in (out / "errors.log").read_text()
    assert "## Failed rows" in (out / "report.md").read_text()
    with pytest.raises(typer.Exit) as exit_info:
        _exit_on_failed_rows(result.failed, out)
    assert exit_info.value.exit_code == 1

    crafted = []
    monkeypatch.setattr(run_mod, "craft_cell",
                        lambda exp, cell, *a: crafted.append(cell.key) or real_craft(exp, cell, *a))
    result = evaluate(config, out)  # the rerun retries the failed row only
    rows = result.rows
    assert [k[2:5] for k in crafted] == [("magnet", "white-box", "pgd")]
    assert ("magnet", "white-box", "pgd") in {r.key[2:5] for r in rows}
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["failed"] == []
    assert result.failed == []
    _exit_on_failed_rows(result.failed, out)  # nothing failed: no exit


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["purifiers"].append({"name": "jpg"}), "purifiers[3]: unknown purifier 'jpg'"),
    (lambda c: c["attacks"].append({"name": "pgdd", "eps": [0.1]}),
     "attacks[2]: unknown attack 'pgdd'"),
    (lambda c: c.update(threat_models=["oracle"]), "unknown threat model"),
    (lambda c: c.update(dataset="mnits"), "unknown data set 'mnits'"),
    (lambda c: c["attacks"][0].update(eps=["eight/255"]), "attacks.0.eps"),
    (lambda c: c["attacks"][0].update(norm="l1"), "attacks.0.norm"),
    (lambda c: c.update(unknown_key=1), "unknown_key"),
    (lambda c: c["classifier"].update(arch="lenet5"), "classifier.arch: unknown classifier"),
    (lambda c: c.update(threat_models=["transfer"]), "transfer_source"),
])
def test_config_errors_are_one_line(tmp_path, mutate, message):
    config = json.loads(json.dumps(TINY))
    mutate(config)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, config))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_epsilon_fractions(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["attacks"][0]["eps"] = ["8/255", 0.1]
    parsed = load_config(_write(tmp_path, config))
    assert parsed.attacks[0].eps == [8 / 255, 0.1]


def test_shipped_demo_config_is_valid():
    from aepurify.resources import find_config

    config = load_config(find_config("demo-mnist"))
    assert config.n_test == 1000 and config.classifier.arch == "lenet"
    names = {p.name for p in config.purifiers}
    assert {"magnet", "jpeg", "bit-depth"} <= names
    assert {"gray-box", "white-box", "bpda"} <= set(config.threat_models)


def test_two_classifiers_transfer_and_per_attack_limits(tmp_path):
    from aepurify.evaluation import ANALYSES, AnalysisResult

    @ANALYSES.register("count-rows-test")
    def _count(exp, rows, out_dir, scale=1):
        (out_dir / "count.txt").write_text(str(len(rows) * scale))
        return AnalysisResult("Row count", f"{len(rows) * scale} rows", ["count.txt"],
                              {"rows": len(rows)})

    quick = {"epochs": 1, "batch_size": 64, "max_images": 1000}
    config = {
        "dataset": "mnist", "n_test": 40, "batch_size": 40,
        "classifiers": [{"arch": "lenet", "train": quick},
                        {"arch": "small-cnn", "params": {"width": 8}, "train": quick}],
        "transfer_source": {"arch": "lenet", "train": {**quick, "seed": 1}},
        "purifiers": [{"name": "bit-depth", "params": {"bits": 2}}],
        "threat_models": ["gray-box", "transfer"],
        "attacks": [{"name": "pgd", "eps": [0.2], "params": {"steps": 2}, "n_test": 20,
                     "purifiers": ["bit-depth"]},
                    {"name": "fgsm", "eps": [0.2]}],
        "analyses": [{"name": "count-rows-test", "params": {"scale": 2}}],
    }
    out = tmp_path / "run"
    rows = evaluate(_write(tmp_path, config), out).rows
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert {r["classifier"] for r in records} == {"lenet", "small-cnn"}
    pgd = [r for r in records if r["attack"] == "pgd"]
    assert pgd and all(r["n"] == "20" and r["purifier"] == "bit-depth" for r in pgd)
    transfer = [r for r in records if r["threat_model"] == "transfer"]
    assert {r["purifier"] for r in transfer} == {"none", "bit-depth"}
    assert {r["classifier"] for r in transfer} == {"lenet", "small-cnn"}
    fgsm = [row for row in rows if row.attack == "fgsm"]
    assert all(row.details["mean_linf"] <= 0.2 + 1e-6 and row.details["mean_rel_l2"] > 0
               for row in fgsm)
    report = (out / "report.md").read_text()
    assert "## Row count" in report and "lenet / bit-depth" in report
    assert (out / "count.txt").read_text() == str(2 * len(rows))


def _row(purifier, tm, attack, eps, correct, n=None, details=None):
    from aepurify.evaluation.store import ResultRow
    import numpy as np

    correct = np.asarray(correct, dtype=bool)
    return ResultRow("mnist", "lenet", purifier, tm, attack, "linf" if attack != "none" else "none",
                     eps, len(correct), float(correct.mean()), 0.0, correct=correct,
                     details=details or {})


def test_adaptive_protocol_is_a_per_example_worst_case():
    from aepurify.evaluation.summary import summarize

    rows = [
        _row("p", "none", "none", 0.0, [1, 1, 1, 1]),
        _row("p", "gray-box", "fgsm", 0.3, [1, 1, 0, 1]),
        _row("p", "gray-box", "pgd", 0.3, [1, 0, 1, 1]),
        _row("p", "bpda", "pgd", 0.3, [0, 1, 1, 1]),
        _row("p", "white-box", "pgd", 0.3, [1, 1, 1, 1, 0, 0]),  # more images: cut to 4
    ]
    (s,) = summarize(rows)
    assert s.n == 4 and s.clean == 1.0
    assert s.graybox_robust == 0.5  # images 0 and 3 survive both gray-box attacks
    assert s.adaptive_robust == 0.25  # only image 3 survives everything
    assert s.worst_attack in ("gray-box / fgsm", "gray-box / pgd", "bpda / pgd")
    assert s.adaptive_robust <= s.graybox_robust


def test_sanity_checks_flag_masking_and_say_why():
    from aepurify.evaluation.config_file import parse_config
    from aepurify.evaluation.sanity import run_checks

    config = parse_config({**TINY, "sanity": {"enabled": True, "steps": [10, 100],
                                              "restarts": 2, "square_queries": 50}})
    eps = 0.3
    good = [1] * 2 + [0] * 8
    rows = [
        _row("p", "bpda", "sanity-pgd-10", eps, good),
        _row("p", "bpda", "sanity-pgd-100", eps, [1] * 6 + [0] * 4),  # more steps, higher: bad
        _row("p", "bpda", "sanity-pgd-100", 1.0, [1] * 5 + [0] * 5),  # not ~0 at a huge eps
        _row("p", "bpda", "sanity-pgd-10x2", eps, good),
        _row("p", "black-box", "sanity-square-50", eps, [0] * 10),  # Square beats gradients:
        _row("p", "gray-box", "pgd", eps, [0, 1] + [0] * 8),  # image 1 survives them all
        _row("p", "bpda", "pgd", eps, [1] * 10),  # purifier-aware weaker than gray-box
        _row("p", "bpda+eot", "pgd", 0.1, [1] * 10, details={"eot_samples": 5}),
        _row("p", "white-box", "fgsm", eps, [1] * 6 + [0] * 4),  # exact gradient weaker than
        _row("p", "bpda", "fgsm", eps, [1] * 2 + [0] * 8),       # the identity surrogate: masked
    ]
    results = {r.check: r for r in run_checks(rows, config.sanity, {"p": True})}
    assert set(results) == {"large-eps", "more-iterations", "more-restarts",
                            "square-vs-gradient", "white-box-vs-gray-box", "white-box-vs-bpda",
                            "eot-samples"}
    assert results["more-restarts"].passed is True
    assert "+0.400" in results["white-box-vs-bpda"].detail
    for check in ("large-eps", "more-iterations", "square-vs-gradient", "white-box-vs-gray-box",
                  "white-box-vs-bpda", "eot-samples"):
        assert results[check].passed is False, check
        assert results[check].detail
    assert "0.500" in results["large-eps"].detail and "5" in results["eot-samples"].detail


def test_outputs_of_the_rigorous_protocol(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["n_test"] = 30
    config["purifiers"] = [TINY["purifiers"][1]]  # jpeg: gray-box and bpda
    config["attacks"] = [{"name": "pgd", "eps": [0.3], "params": {"steps": 3}}]
    config["sanity"] = {"enabled": True, "n_test": 30, "steps": [2, 4], "restarts": 2,
                        "square_queries": 20}
    out = tmp_path / "run"
    evaluate(_write(tmp_path, config), out)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {"dataset", "classifier", "purifier", "norm", "eps", "clean", "graybox_robust",
            "adaptive_robust"} <= set(summary[0])
    for s in summary:
        assert float(s["adaptive_robust"]) <= float(s["graybox_robust"])
    assert {s["eps"] for s in summary} == {"0.3"}  # the huge sanity budget is a check only
    with open(out / "sanity.csv") as f:
        sanity = list(csv.DictReader(f))
    assert {"check", "purifier", "passed", "detail"} <= set(sanity[0])
    assert {r["check"] for r in sanity} >= {"large-eps", "more-iterations", "square-vs-gradient",
                                            "white-box-vs-gray-box"}
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert any(r["threat_model"] == "black-box" and r["purifier"] == "jpeg" for r in records)
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert 'src="accuracy-' not in html  # every plot is inlined: one self-contained file
    assert "Sanity checks" in html and "Adaptive robust accuracy" in html
    assert (out / "examples-lenet-jpeg.png").exists()


def test_sanity_attacks_on_a_random_purifier_use_n_test_random(tmp_path):
    from aepurify.evaluation.experiment import prepare

    config = json.loads(json.dumps(TINY))
    config["purifiers"] = [
        TINY["purifiers"][1],
        {"name": "vae", "train": {"epochs": 1, "batch_size": 64, "max_images": 256},
         "threat_models": ["gray-box", "white-box+eot"], "eot_samples": 20}]
    config["attacks"] = [{"name": "fgsm", "eps": [0.3]}]
    config["sanity"] = {"enabled": True, "n_test": 40, "n_test_random": 10}
    exp = prepare(load_config(_write(tmp_path, config)), tmp_path / "run")
    sanity = [c for c in exp.cells if c.attack is not None
              and c.attack.label.startswith("sanity-")]
    assert {c.n for c in sanity if c.purifier == "vae"} == {10}  # random: EOT makes it costly
    assert {c.n for c in sanity if c.purifier == "jpeg"} == {40}
    assert {c.threat_model.name for c in sanity if c.purifier == "vae"} >= {"white-box+eot"}


def test_transfer_named_by_an_attack_needs_a_transfer_source(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["attacks"] = [{"name": "fgsm", "eps": [0.1], "threat_models": ["transfer"]}]
    with pytest.raises(ConfigError, match="transfer threat model needs transfer_source"):
        load_config(_write(tmp_path, config))
