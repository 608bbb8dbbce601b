"""Feature-loss denoising autoencoders (feature-dae, hgd): architectures, training pairs, feature
taps, training on real MNIST, option errors, and the end-to-end analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aepurify.errors import ConfigError, InputError
from aepurify.evaluation.end_to_end import end_to_end, verdict
from aepurify.evaluation.store import ResultRow
from aepurify.purifiers import create_purifier, load_purifier, purifier_class
from aepurify.training import TrainSettings
from aepurify.training.feature_loss import FeatureTaps, default_layers, parse_options
from aepurify.training.pairs import PairPlan, PairSource

# A cheap auxiliary network for the tests: LeNet trained one epoch on 1,000 images.
TINY_EXTRACTOR = {"arch": "lenet", "train": {"epochs": 1, "batch_size": 64, "max_images": 1000}}


def test_author_architecture_has_the_papers_shapes():
    dae = create_purifier("feature-dae", "mnist", arch="sivamani")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert dae.encoder(x).shape == (3, 8, 2, 2)  # the author's 8x2x2 latent
        out = dae(x)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(InputError, match="28x28"):
        dae(torch.rand(2, 1, 32, 32))


def test_conv_architecture_on_colour_images():
    dae = create_purifier("feature-dae", "cifar10-jpeg").eval()
    assert dae.arch == "conv" and dae.in_channels == 3
    x = torch.rand(2, 3, 32, 32)
    assert dae(x).shape == x.shape
    assert dae.encoder(x).shape == (2, 32, 8, 8)
    with pytest.raises(InputError, match="divisible by 4"):
        dae(torch.rand(2, 3, 30, 30))
    with pytest.raises(ConfigError, match="unknown feature-dae architecture"):
        create_purifier("feature-dae", arch="unet")


def test_declared_properties():
    fdae, hgd = purifier_class("feature-dae"), purifier_class("hgd")
    assert fdae.trainable and fdae.differentiable and not fdae.stochastic
    assert not fdae.needs_classifier  # classifier-agnostic: one purifier for any classifier
    assert hgd.needs_classifier  # guided by the defended classifier: it enters the cache key


def test_default_layers_and_feature_taps(tiny_lenet, mnist_batch):
    x = mnist_batch[0][:5]
    layers = default_layers(tiny_lenet)
    assert layers == ["body.1", "body.4", "penultimate"]  # conv stage ends + fc features
    maps = FeatureTaps(tiny_lenet, layers + ["logits"])(x)
    assert [tuple(m.shape) for m in maps] == [(5, 20, 24, 24), (5, 50, 8, 8), (5, 500), (5, 10)]
    assert torch.equal(maps[-1], tiny_lenet(x))
    with pytest.raises(ConfigError, match="'body.99' is not a module of LeNet"):
        FeatureTaps(tiny_lenet, ["body.99"])


def test_pair_plan_shares_and_determinism():
    sources = [PairSource(kind="clean"), PairSource(kind="noise", weight=2),
               PairSource(kind="fgsm", eps=[0.1, "1/5"])]
    plan = PairPlan.assign(sources, 1001, seed=3)
    assert plan.counts() == {"clean": 250, "noise": 501, "fgsm": 250}
    again = PairPlan.assign(sources, 1001, seed=3)
    assert torch.equal(plan.source_id, again.source_id) and torch.equal(plan.eps, again.eps)
    assert not torch.equal(plan.source_id, PairPlan.assign(sources, 1001, seed=4).source_id)
    fgsm_eps = plan.eps[plan.source_id == 2]
    assert sorted(torch.unique(fgsm_eps).tolist()) == pytest.approx([0.1, 0.2])
    assert int((fgsm_eps == 0.1).sum()) == 125
    assert float(plan.eps[plan.source_id != 2].abs().max()) == 0.0


def test_pairs_on_the_fly_and_cached(tiny_lenet, mnist_test):
    data = mnist_test.take(300)
    x, y = data.tensors()
    sources = [PairSource(kind="clean"), PairSource(kind="noise", std=0.2),
               PairSource(kind="fgsm", eps=0.3)]
    plan = PairPlan.assign(sources, len(data), seed=0)
    index = torch.arange(len(data))
    kind = plan.source_id
    tiny_lenet.requires_grad_(False)
    try:
        out = plan.perturb(x, y, index, tiny_lenet)
        cached = plan.cache(data, tiny_lenet, "cpu", batch_size=128)
    finally:
        tiny_lenet.requires_grad_(True)
    assert torch.equal(out[kind == 0], x[kind == 0])
    noise = out[kind == 1] - x[kind == 1]
    assert 0.1 < float(noise.std()) < 0.2 and 0 <= float(out.min()) and float(out.max()) <= 1
    adv = out[kind == 2]
    assert float((adv - x[kind == 2]).abs().max()) <= 0.3 + 1e-6
    with torch.no_grad():
        clean_acc = (tiny_lenet(x[kind == 2]).argmax(1) == y[kind == 2]).float().mean()
        adv_acc = (tiny_lenet(adv).argmax(1) == y[kind == 2]).float().mean()
    assert adv_acc < clean_acc - 0.3  # they are adversarial for the pair classifier
    # cached: the same FGSM examples rounded to 8 bits; other rows keep the clean image
    assert cached.dtype == torch.uint8
    assert torch.equal(cached[kind != 2], data.images[kind != 2])
    cached_adv = cached[kind == 2].float() / 255
    assert float((cached_adv - adv).abs().max()) <= 0.5 / 255 + 1e-6


def test_feature_dae_trains_denoises_and_round_trips(mnist_train, mnist_test, tmp_path):
    from aepurify.checkpoint import save_checkpoint

    x, _ = mnist_test.tensors(slice(0, 200))
    gen = torch.Generator().manual_seed(0)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    dae = create_purifier("feature-dae", "mnist", width=8)
    with torch.no_grad():
        before = float(((dae(x) - x) ** 2).mean())
    extra = {"feature_extractor": TINY_EXTRACTOR,
             "pairs": {"sources": [{"kind": "noise", "std": 0.3}, {"kind": "fgsm", "eps": 0.2}]}}
    metrics = dae.fit(mnist_train, TrainSettings(epochs=2, batch_size=64, lr=0.003,
                                                 max_images=1000, extra=extra))
    dae.eval()
    assert metrics["pairs"] == {"noise": 500, "fgsm": 500}
    assert metrics["layers"] == ["body.1", "body.4", "penultimate"]
    assert metrics["networks"][0]["arch"] == "lenet"
    with torch.no_grad():
        after = float(((dae(x) - x) ** 2).mean())
        denoised = float(((dae(noisy) - x) ** 2).mean())
    assert after < 0.25 * before
    assert denoised < float(((noisy - x) ** 2).mean())  # closer to the clean image than its input
    save_checkpoint(dae, tmp_path / "fdae", kind="purifier", name="feature-dae")
    loaded, _ = load_purifier(tmp_path / "fdae", "feature-dae")
    assert torch.equal(loaded(x), dae(x))


def test_feature_extractor_is_cached_beside_the_purifier(mnist_train, tmp_path):
    from aepurify.training import get_purifier
    from aepurify.training.cache import model_cache_dir

    settings = TrainSettings(epochs=1, batch_size=64, lr=0.003, max_images=200,
                             extra={"feature_extractor": TINY_EXTRACTOR,
                                    "pairs": {"sources": [{"kind": "clean"}]}})
    trained = get_purifier("feature-dae", "mnist", params={"width": 4}, settings=settings,
                           train_data=lambda: mnist_train, cache_dir=tmp_path / "models")
    extractor = trained.config["metrics"]["networks"][0]["path"]
    assert Path(extractor).parent == tmp_path / "models"  # not the default cache
    assert model_cache_dir() != tmp_path / "models"  # set only while the purifier trains


def test_hgd_follows_the_defended_classifiers_logits(mnist_train, mnist_batch, tiny_lenet):
    x, y = mnist_batch
    torch.manual_seed(0)
    hgd = create_purifier("hgd", "mnist", width=8)
    flags = [p.requires_grad for p in tiny_lenet.parameters()]
    with pytest.raises(ConfigError, match="trains against the defended classifier"):
        hgd.fit(mnist_train, TrainSettings(epochs=1, max_images=64))
    settings = TrainSettings(epochs=2, batch_size=64, lr=0.01, max_images=640, extra={
        "pairs": {"mode": "on-the-fly", "sources": [{"kind": "clean"},
                                                    {"kind": "pgd", "eps": 0.2, "steps": 2}]}})
    metrics = hgd.fit(mnist_train, settings, classifier=tiny_lenet)
    hgd.eval()
    assert metrics["networks"] == [{"role": "feature extractor", "arch": "defended"},
                                   {"role": "pair classifier", "arch": "defended"}]
    assert metrics["layers"] == ["logits"] and metrics["pair_mode"] == "on-the-fly"
    assert [p.requires_grad for p in tiny_lenet.parameters()] == flags  # restored
    with torch.no_grad():
        undefended = (tiny_lenet(x).argmax(1) == y).float().mean()
        defended = (tiny_lenet(hgd(x)).argmax(1) == y).float().mean()
    assert defended > undefended - 0.1  # guided by the logits, it keeps what LeNet reads


def test_feature_dae_refuses_the_defended_classifier(mnist_train, tiny_lenet):
    dae = create_purifier("feature-dae", "mnist")
    for extra in ({"feature_extractor": "defended"}, {"pair_classifier": "defended"}):
        with pytest.raises(ConfigError, match="use purifier 'hgd'"):
            dae.fit(mnist_train, TrainSettings(max_images=64, extra=extra),
                    classifier=tiny_lenet)


@pytest.mark.parametrize("extra, message", [
    ({"pixel_weigth": 1}, "train.extra.pixel_weigth: Extra inputs are not permitted"),
    ({"feature_layers": ["body.1"], "feature_weights": [1, 1]}, "same length"),
    ({"pairs": {"sources": [{"kind": "blur"}]}}, "train.extra.pairs.sources.0.kind"),
    ({"pairs": {"sources": [{"kind": "fgsm", "eps": "a/b"}]}}, "cannot read epsilon"),
    ({"pairs": {"sources": []}}, "at least 1 item"),
    ({"pixel_weight": 0, "feature_layers": ["logits"], "feature_weights": [0]}, "every loss"),
    ({"distance": "l3"}, "train.extra.distance"),
])
def test_bad_training_options_are_one_line(extra, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_options(purifier_class("feature-dae").default_training, extra)
    assert "\n" not in str(info.value)


def test_options_merge_over_class_defaults():
    hgd = parse_options(purifier_class("hgd").default_training,
                        {"feature_layers": ["penultimate"]})
    assert hgd.feature_extractor == "defended" and hgd.distance == "l1"
    assert hgd.pixel_weight == 0 and hgd.feature_layers == ["penultimate"]
    fdae = parse_options(purifier_class("feature-dae").default_training,
                         {"feature_extractor": {"train": {"epochs": 1}}})
    assert fdae.feature_extractor.arch == "small-cnn"  # nested defaults kept
    assert fdae.feature_extractor.train.epochs == 1 and fdae.feature_extractor.train.seed == 1


def _row(purifier, tm, acc_first, n, eps=0.2):
    correct = np.zeros(n, bool)
    correct[:int(round(acc_first * n))] = True
    return ResultRow("mnist", "lenet", purifier, tm, "pgd", "linf", eps, n,
                     float(correct.mean()), 1.0, correct=correct)


def test_end_to_end_verdicts_compare_the_same_images(tmp_path):
    assert verdict(0.9, 0.88, 0.0) == "holds"
    assert verdict(0.9, 0.3, 0.0) == "does not hold"
    assert verdict(0.9, 0.6, 0.0) == "partly"
    rows = [_row("none", "gray-box", 0.0, 1000), _row("dae", "gray-box", 0.9, 1000),
            _row("dae", "white-box", 0.1, 200), _row("dae", "bpda", 0.85, 200),
            _row("other", "gray-box", 0.5, 1000), _row("dae", "white-box", 0.9, 200, eps=0.3)]
    result = end_to_end(None, rows, tmp_path, attack="pgd", eps=0.2)
    dae = result.data["lenet/dae"]
    # gray-box on the first 200 images (all correct, as _row fills from the front), not 0.9
    assert dae["n"] == 200 and dae["gray-box"] == 1.0
    assert dae["worst"] == pytest.approx(0.1) and dae["worst_threat_model"] == "white-box"
    assert dae["verdict"] == "does not hold"
    assert "lenet/other" not in result.data  # no end-to-end rows to compare
    assert "| lenet | dae | 200 | 0.000 | 1.000 | 0.100 | 0.850 | 0.100 (white-box) |" \
        in result.markdown


def test_demo_and_paper_configs():
    from aepurify.evaluation import load_config
    from aepurify.resources import find_config

    demo = load_config(find_config("demo-mnist"))
    labels = {p.row_label for p in demo.purifiers}
    assert {"feature-dae", "hgd"} <= labels
    covered = {(tm, a.name) for a in demo.attacks
               if a.purifiers is None or "feature-dae" in a.purifiers
               for tm in (a.threat_models or demo.threat_models)}
    for tm in ("gray-box", "white-box", "bpda"):
        assert (tm, "fgsm") in covered and (tm, "pgd") in covered
    assert any(a.name == "end-to-end" for a in demo.analyses)
    for name in ("papers/feature-dae-mnist", "papers/feature-dae-cifar10"):
        config = load_config(find_config(name))
        assert {p.name for p in config.purifiers} >= {"feature-dae"}
        assert {a.name for a in config.attacks} >= {"fgsm", "pgd"}


def test_evaluate_grid_with_feature_dae_and_analysis(tmp_path):
    import csv

    import yaml

    from aepurify.evaluation import evaluate

    quick = {"epochs": 1, "batch_size": 64, "lr": 0.003, "max_images": 500}
    config = {
        "dataset": "mnist", "n_test": 40, "batch_size": 40,
        "classifier": {"arch": "lenet", "train": {"epochs": 1, "batch_size": 64,
                                                  "max_images": 1000}},
        "purifiers": [{"name": "feature-dae", "params": {"width": 8}, "train": {
            **quick, "extra": {"feature_extractor": TINY_EXTRACTOR,
                               "pairs": {"sources": [{"kind": "clean"},
                                                     {"kind": "fgsm", "eps": 0.2}]}}}}],
        "threat_models": ["gray-box", "white-box", "bpda"],
        "attacks": [{"name": "pgd", "eps": [0.2], "params": {"steps": 2}}],
        "analyses": [{"name": "end-to-end", "params": {"attack": "pgd", "eps": 0.2}}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    evaluate(path, tmp_path / "run")
    with open(tmp_path / "run" / "results.csv") as f:
        seen = {(r["purifier"], r["threat_model"]) for r in csv.DictReader(f)}
    assert {("feature-dae", "gray-box"), ("feature-dae", "white-box"),
            ("feature-dae", "bpda")} <= seen
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## End-to-end attack versus gray-box" in report
    assert "| lenet | feature-dae | 40 |" in report
