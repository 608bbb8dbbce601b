"""The detector-aware threat model (issue 24): orthogonal PGD against a defense that rejects, the
pool of autoencoders (MagNet's diversity), configs with detectors, and the sanity check that
flags a detector-aware attack weaker than a detector-oblivious one. Real MNIST, tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aepurify.attacks import (ThreatModel, attack_module, build_attack, check_attack,
                              resolve_threat_model, split_threat_model)
from aepurify.attacks.detector_aware import DetectorAwarePGD, make_detector_aware
from aepurify.detectors import DetectingClassifier, DetectorSet, create_detector
from aepurify.errors import ConfigError, NotApplicableError
from aepurify.evaluation import load_config
from aepurify.evaluation.config import SanitySettings
from aepurify.evaluation.config_file import parse_config
from aepurify.evaluation.detection import DETECTION_COLUMNS, detection_records
from aepurify.evaluation.detector_setup import held_out
from aepurify.evaluation.rejection import judge_rejecting
from aepurify.evaluation.sanity import run_checks
from aepurify.evaluation.store import ResultRow
from aepurify.evaluation.summary import summarize
from aepurify.purifiers import create_purifier
from aepurify.training import TrainSettings
from aepurify.utils import seed_everything


@pytest.fixture(scope="module")
def magnet_defense(mnist_train, tiny_lenet):
    """A MagNet reformer trained 1 epoch on 3,200 images (200 steps), with MagNet's L2 and L1
    detectors thresholded at 0.01 false positives on 1,000 training images it did not train
    on."""
    seed_everything(0)
    magnet = create_purifier("magnet", "mnist")
    magnet.fit(mnist_train, TrainSettings(epochs=1, batch_size=16, lr=0.03, max_images=3200))
    magnet.eval()
    detectors = DetectorSet([create_detector("reconstruction", magnet, p=2),
                             create_detector("reconstruction", magnet, p=1)])
    x_cal, _ = mnist_train.take(1000, start=59000).tensors()
    detectors.calibrate(x_cal, tiny_lenet, magnet, [0.01, 0.01])
    return DetectingClassifier(tiny_lenet, magnet, detectors)


def _accuracy(defense, x_adv, y):
    correct, _, counts = judge_rejecting(defense, x_adv, y, adversarial=True, n_eval=1, seed=0,
                                         batch_size=64)
    return float(correct.mean()), float(counts.rejected.mean())


def test_orthogonal_pgd_evades_the_detectors_where_oblivious_pgd_is_caught(magnet_defense,
                                                                          mnist_batch):
    x, y = mnist_batch[0][:64], mnist_batch[1][:64]
    thresholds = magnet_defense.detectors.thresholds().clone()
    seed_everything(0)
    oblivious = build_attack("pgd", magnet_defense, 0.3, "linf", {"steps": 20})(x, y)
    seed_everything(0)
    aware = make_detector_aware("pgd", magnet_defense, 0.3, "linf", steps=20)(x, y)
    assert float((aware - x).abs().max()) <= 0.3 + 1e-6
    assert float(aware.min()) >= 0 and float(aware.max()) <= 1
    torch.testing.assert_close(magnet_defense.detectors.thresholds(), thresholds)  # fixed
    acc_oblivious, rejected_oblivious = _accuracy(magnet_defense, oblivious, y)
    acc_aware, rejected_aware = _accuracy(magnet_defense, aware, y)
    assert rejected_aware < rejected_oblivious     # it keeps the detectors quiet
    assert acc_aware <= acc_oblivious + 0.05       # and is not the weaker attack


def test_detector_aware_options_are_checked():
    with pytest.raises(ConfigError, match="unknown detector-aware method"):
        DetectorAwarePGD(None, 0.1, method="sideways")
    with pytest.raises(ConfigError, match="needs a defense with detectors"):
        DetectorAwarePGD(create_purifier("none"), 0.1)
    with pytest.raises(NotApplicableError, match="orthogonal PGD"):
        check_attack(ThreatModel("detector-aware"), "fgsm", "linf")
    assert split_threat_model("detector-aware+eot") == ("detector-aware", "eot")
    with pytest.raises(ConfigError):
        split_threat_model("detector-aware+fixed")
    with pytest.raises(ConfigError, match="no generic attack module"):
        attack_module(ThreatModel("detector-aware"), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["selective", "combined"])
def test_the_other_methods_and_l2_stay_in_budget(magnet_defense, mnist_batch, method):
    x, y = mnist_batch[0][:16], mnist_batch[1][:16]
    x_adv = make_detector_aware("pgd", magnet_defense, 2.0, "l2", steps=5, method=method,
                                random_start=True)(x, y)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 2.0 + 1e-4


def test_a_pool_draws_one_member_per_image_and_replays(mnist_batch):
    x = mnist_batch[0][:32]
    pool = create_purifier("magnet-pool", "mnist", members=3).eval()
    assert pool.stochastic and pool.reconstructs and pool.reconstruction_is_output
    params = pool.sample_randomness(tuple(x.shape), torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = pool(x, randomness=params)
        torch.testing.assert_close(out, pool(x, randomness=params))
        for j, member in enumerate(pool.members):
            rows = params["member"] == j
            torch.testing.assert_close(out[rows], member(x[rows]))
    assert resolve_threat_model("detector-aware+eot", pool, 4).eot_samples == 4
    loss = pool.training_loss(x, torch.zeros(32, dtype=torch.long))
    assert loss.requires_grad and torch.isfinite(loss)


def test_detector_aware_eot_on_a_pool(mnist_batch, tiny_lenet):
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    pool = create_purifier("magnet-pool", "mnist", members=2).eval()
    detectors = DetectorSet([create_detector("reconstruction", pool, p=2)])
    detectors.calibrate(torch.rand(200, 1, 28, 28), tiny_lenet, pool, [0.01])
    defense = DetectingClassifier(tiny_lenet, pool, detectors)
    x_adv = make_detector_aware("pgd", defense, 0.1, "linf", eot_samples=3, steps=3)(x, y)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6


CONFIG = {
    "dataset": "mnist", "n_test": 10,
    "classifier": {"arch": "lenet"},
    "purifiers": [{"name": "magnet", "label": "magnet", "detectors": [
        {"name": "reconstruction", "params": {"p": 2}},
        {"name": "reconstruction", "params": {"p": 1},
         "autoencoder": {"name": "magnet", "params": {"pool": False}}}]}],
    "threat_models": ["gray-box", "detector-aware"],
    "attacks": [{"name": "pgd", "eps": [0.1], "params": {"steps": 5, "method": "orthogonal"},
                 "threat_models": ["detector-aware"], "purifiers": ["magnet"]}],
}


def _with(**changes):
    import copy

    config = copy.deepcopy(CONFIG)
    for path, value in changes.items():
        node = config
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[keys[-1]] = value
    return config


def test_configs_with_detectors_are_checked_before_any_training():
    config = parse_config(_with())
    assert [d.row_label for d in config.purifiers[0].detectors] == ["reconstruction-l2",
                                                                    "reconstruction-l1"]
    assert config.purifiers[0].calibration_images == 5000
    bad = {
        "purifiers__0__name": "no reconstruction error",                       # jpeg below
        "purifiers__0__detectors__0__name": "unknown detector",
        "purifiers__0__detectors__0__params": "unknown parameter 'q'",
        "purifiers__0__detectors__1__autoencoder": "unknown parameter 'width'",
        "attacks__0__params": "bad detector-aware attack parameters",
        "purifiers__0__detectors__1__params": "labels must be unique",
    }
    values = {"purifiers__0__name": "jpeg", "purifiers__0__detectors__0__name": "reconstructon",
              "purifiers__0__detectors__0__params": {"p": 2, "q": 2},
              "purifiers__0__detectors__1__autoencoder": {"name": "magnet",
                                                          "params": {"width": 3}},
              "attacks__0__params": {"method": "sideways", "stepz": 3},
              "purifiers__0__detectors__1__params": {"p": 2}}
    for path, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_config(_with(**{path: values[path]}))


def test_the_calibration_images_stay_out_of_training(mnist_train):
    settings = TrainSettings(epochs=1)
    assert held_out(settings, 5000, lambda: mnist_train).max_images == 55000
    assert held_out(settings.model_copy(update={"max_images": 20000}), 5000,
                    lambda: mnist_train).max_images == 20000
    assert held_out(settings, 0, lambda: mnist_train) is settings
    with pytest.raises(ConfigError, match="hold out"):
        held_out(settings, 60000, lambda: mnist_train)


def _row(tm: str, attack: str, eps: float, correct: list[bool], rejected: list[int] | None,
         purifier: str = "magnet") -> ResultRow:
    import base64

    details = {}
    if rejected is not None:
        details["detection"] = {
            "adversarial": attack != "none", "detectors": ["reconstruction-l2"], "n_eval": 1,
            "rejection_rate": float(np.mean(rejected)), "accepted_accuracy": 1.0,
            "per_detector": {"reconstruction-l2": float(np.mean(rejected))},
            "rejected": base64.b64encode(np.array(rejected, dtype=np.uint8).tobytes()).decode()}
    c = np.array(correct)
    return ResultRow("mnist", "lenet", purifier, tm, attack, "linf" if eps else "none", eps,
                     len(c), float(c.mean()), 1.0, c, "h", details)


def test_a_detector_aware_attack_weaker_than_an_oblivious_one_is_flagged():
    clean = _row("none", "none", 0.0, [True] * 4, [0, 0, 0, 1])
    gray = _row("gray-box", "pgd", 0.3, [True, False, False, False], [1, 0, 0, 0])
    strong = _row("detector-aware", "orthogonal-pgd", 0.3, [False] * 4, [0, 0, 0, 0])
    weak = _row("detector-aware", "orthogonal-pgd", 0.3, [True, True, True, False], [1, 1, 1, 0])
    settings = SanitySettings()
    for aware, passed in ((strong, True), (weak, False)):
        checks = [c for c in run_checks([clean, gray, aware], settings, {"magnet": False})
                  if c.check == "detector-aware-vs-oblivious"]
        assert len(checks) == 1 and checks[0].passed is passed, checks
    summary = summarize([clean, gray, strong])
    assert summary[0].clean_rejection_rate == 0.25
    records = list(detection_records([clean, gray, strong]))
    assert set(records[0]) == set(DETECTION_COLUMNS)
    assert records[0]["adversarial_rejection_rate"] == "" and records[1]["clean_rejection_rate"] \
        == 0.25 and records[1]["adversarial_rejection_rate"] == 0.25


def test_the_shipped_magnet_configs_validate():
    for name in ("papers/magnet-mnist", "demo-mnist"):
        from aepurify.resources import find_config

        config = load_config(find_config(name))
        magnet = next(p for p in config.purifiers if p.name == "magnet")
        assert len(magnet.detectors) == 2
        assert all(d.false_positive_rate == 0.001 for d in magnet.detectors)


def test_the_audit_takes_a_detector_and_attacks_it(tiny_lenet, mnist_batch, mnist_train,
                                                   magnet_defense):
    import aepurify as ap

    x, y = mnist_batch[0][:32], mnist_batch[1][:32]
    x_cal, _ = mnist_train.take(1000, start=58000).tensors()
    magnet = magnet_defense.purifier

    def l2_error(t: torch.Tensor) -> torch.Tensor:
        return (t - magnet(t)).pow(2).flatten(1).mean(1)

    result = ap.audit(tiny_lenet, magnet, x, y, eps=0.3, version="quick", detector=l2_error,
                      calibration=x_cal, false_positive_rate=0.01)
    assert result.clean_rejection_rate is not None and result.clean_rejection_rate <= 0.1
    assert "detector-aware" in result.threat_models_used
    assert any(r["threat_model"] == "detector-aware" for r in result.per_attack)
    assert "clean rejection" in str(result)
    assert result.record["detectors"][result.purifier][0]["calibration_images"] == 1000

    def numpy_score(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(t.detach().cpu().numpy().mean(axis=(1, 2, 3)))

    blind = ap.audit(tiny_lenet, None, x, y, eps=0.3, version="quick", detector=numpy_score,
                     calibration=x_cal, false_positive_rate=0.01)
    assert "detector-aware" not in blind.threat_models_used
    assert any("no gradient" in line for line in blind.plan)
    with pytest.raises(ConfigError, match="calibration="):
        ap.audit(tiny_lenet, magnet, x, y, eps=0.3, version="quick", detector=l2_error)
