"""bf16 attack gradients and refinement (aepurify.precision): the attack module runs under
autocast with channels-last input and hands fp32 logits and NCHW gradients to the attack, EOT
averages in fp32, APuDAE's refinement and S-BIM run in bf16, verdicts stay fp32, and a run
records and hashes its precision."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from aepurify.attacks import (EOT, attack_arithmetic, attack_module, build_attack,
                              resolve_threat_model)
from aepurify.errors import ConfigError
from aepurify.evaluation import evaluate
from aepurify.evaluation.config import ExperimentConfig
from aepurify.precision import AutocastModule, resolve_precision, with_precision
from aepurify.purifiers import DefendedClassifier, create_purifier


def test_autocast_module_gives_fp32_logits_and_nchw_gradients(tiny_lenet, mnist_batch):
    x, y = mnist_batch
    fast = with_precision(tiny_lenet, "bf16")
    assert isinstance(fast, AutocastModule) and with_precision(tiny_lenet, "fp32") is tiny_lenet
    assert fast.num_classes == 10  # the wrapped module's attributes
    xa = x[:32].clone().requires_grad_(True)
    logits = fast(xa)
    assert logits.dtype == torch.float32
    assert (logits.argmax(1) == tiny_lenet(x[:32]).argmax(1)).float().mean() > 0.9
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[:32]), xa)
    assert grad.dtype == torch.float32 and grad.is_contiguous()
    grad.view(-1)  # torchattacks' L2 attacks view the gradient
    fast.train()
    assert fast.training and not tiny_lenet.training  # the trained model stays in eval mode


def test_bf16_attack_stays_in_budget_and_is_as_strong(tiny_lenet, mnist_batch):
    x, y = mnist_batch
    purifier = create_purifier("magnet", "mnist").eval()
    defended = DefendedClassifier(tiny_lenet, purifier).eval()
    tm = resolve_threat_model("white-box", purifier)
    robust = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        atk = build_attack("pgd", with_precision(attack_module(tm, defended), precision), 0.2,
                           params={"steps": 10})
        adv = atk(x, y)
        assert adv.dtype == torch.float32 and float((adv - x).abs().max()) <= 0.2 + 1e-6
        assert 0 <= float(adv.min()) and float(adv.max()) <= 1
        with torch.no_grad():
            robust[precision] = float((defended(adv).argmax(1) == y).float().mean())
    assert robust["bf16"] <= robust["fp32"] + 0.03


def test_eot_averages_bf16_draws_in_fp32(tiny_lenet, mnist_batch):
    x, _ = mnist_batch
    vae = create_purifier("vae", "mnist").eval()
    eot = with_precision(EOT(DefendedClassifier(tiny_lenet, vae), 8, max_pixels=784 * 40), "bf16")
    out = eot(x[:20])
    assert out.dtype == torch.float32 and out.shape == (20, 10)


def test_apudae_refinement_in_bf16_is_close_to_fp32(mnist_batch):
    x, _ = mnist_batch
    torch.manual_seed(0)
    apudae = create_purifier("apudae", "mnist", mode="adaptive", layers=2, features=8).eval()
    apudae.calibrate(x[100:])
    apudae.mu.fill_(float(apudae.mu) * 0.5)  # half the images above mu: refined
    outs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        outs[precision] = apudae.set_precision(precision)(x[:50])
    assert outs["bf16"].dtype == torch.float32
    assert float((outs["bf16"] - outs["fp32"]).abs().mean()) < 2e-3
    assert float((outs["fp32"] - x[:50]).abs().mean()) > 1e-3  # the refinement did move them
    with pytest.raises(ConfigError):
        apudae.set_precision("fp16")


def test_exact_refinement_gradients_and_sbim_run_in_bf16(tiny_lenet, mnist_batch):
    x, y = mnist_batch
    apudae = create_purifier("apudae", "mnist", mode="adaptive", layers=2, features=8, steps=3,
                             exact_gradients=True).eval().set_precision("bf16")
    apudae.calibrate(x[100:])
    defended = DefendedClassifier(tiny_lenet, apudae).eval()
    module = with_precision(attack_module(resolve_threat_model("white-box", apudae), defended),
                            "bf16")
    xa = x[:8].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(module(xa), y[:8]), xa)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    sbim = apudae.adaptive_attack("bim", defended, 0.2, "linf", steps=2)
    with torch.autocast("cpu", torch.bfloat16):
        adv = sbim(x[:8], y[:8])
    assert adv.dtype == torch.float32 and float((adv - x[:8]).abs().max()) <= 0.2 + 1e-6


def test_precision_names_are_checked():
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("half", "cpu")
    with pytest.raises(Exception, match="precision"):
        ExperimentConfig(dataset="mnist", classifier={"arch": "lenet"}, precision="fp16")


def _grid(tmp_path, precision: str) -> dict:
    config = ExperimentConfig(
        name="precision", dataset="mnist", n_test=60, batch_size=30, precision=precision,
        classifier={"arch": "lenet", "train": {"epochs": 1, "max_images": 500,
                                               "precision": "fp32"}},
        purifiers=[{"name": "jpeg", "params": {"quality": 50}}],
        threat_models=["gray-box", "bpda"],
        attacks=[{"name": "fgsm", "norm": "linf", "eps": [0.2]}])
    out = tmp_path / precision
    result = evaluate(config, out, cache_dir=tmp_path / "cache")
    return {"rows": {r.key: r for r in result.rows},
            "record": json.loads((out / "run.json").read_text())}


def test_a_run_records_and_hashes_its_precision_and_keeps_fp32_verdicts(tmp_path):
    fp32, bf16 = _grid(tmp_path, "fp32"), _grid(tmp_path, "bf16")
    assert fp32["record"]["precision"] == "fp32" and bf16["record"]["precision"] == "bf16"
    for key, row in fp32["rows"].items():
        other = bf16["rows"][key]
        assert row.spec_hash != other.spec_hash  # a resumed run never mixes the two
        if row.attack == "none" or row.threat_model == "gray-box":
            # clean rows: the same fp32 verdict; gray-box: fp32 gradients under bf16 too
            assert (row.correct == other.correct).all()
        else:
            assert abs(row.accuracy - other.accuracy) <= 0.05
    assert any(r.threat_model == "bpda" for r in fp32["rows"].values())


def test_classifier_only_and_gradient_free_attacks_keep_fp32_gradients():
    assert attack_arithmetic("pgd", "white-box", "bf16") == "bf16"
    assert attack_arithmetic("pgd", "bpda", "bf16") == "bf16"
    assert attack_arithmetic("pgd", "gray-box", "bf16") == "fp32"
    assert attack_arithmetic("fgsm", "transfer", "bf16") == "fp32"
    assert attack_arithmetic("square", "black-box", "bf16") == "fp32"
    assert attack_arithmetic("pgd", "white-box", "fp32") == "fp32"
