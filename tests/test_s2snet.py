"""S2SNets (Folz et al.): SegNet shape, the fast eval path, two-stage training (stage 2 freezes
encoder and classifier bit for bit), checkpoints, the config / CLI paths and both analyses."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from torch.nn import functional as F

from aepurify.checkpoint import save_checkpoint
from aepurify.data import ImageDataset
from aepurify.errors import ConfigError
from aepurify.models import create_classifier
from aepurify.purifiers import DefendedClassifier, create_purifier, load_purifier
from aepurify.purifiers.s2snet import S2SNet, split_settings
from aepurify.training import TrainSettings

from .test_cli import assert_one_line_error, run_cli

QUICK = TrainSettings(epochs=1, batch_size=64, lr=0.01, max_images=640)


def _convs(net: S2SNet) -> list[torch.nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("size,channels,pools,encoder_convs", [
    (28, 1, 2, 4), (32, 3, 3, 7), (224, 3, 5, 13)])
def test_segnet_shape_per_image_size(size, channels, pools, encoder_convs):
    net = create_purifier("s2snet", in_channels=channels, image_size=size, width=4).eval()
    assert len(net.encoder) == len(net.decoder) == pools
    assert sum(len(stage) for stage in net.encoder) == encoder_convs  # VGG-16: 13 convs at 224
    assert sum(len(stage) for stage in net.decoder) == encoder_convs  # mirrored
    assert net.head.kernel_size == (1, 1) and net.head.out_channels == channels
    assert [c for c, _ in net.plan] == [4, 8, 16, 32, 32][:pools]
    batch = 1 if size == 224 else 2
    x = torch.rand(batch, channels, size, size)
    h, indices, sizes = net.encode(x)
    assert len(indices) == pools and h.shape[-1] == size // 2 ** pools
    with torch.no_grad():
        assert net(x).shape == x.shape


def test_structure_travels_in_the_pooling_indices(mnist_batch):
    """Max-unpooling places the decoder's signal where the encoder's maxima were: other indices
    give another reconstruction from the same pooled values."""
    torch.manual_seed(0)
    net = create_purifier("s2snet", "mnist", width=8, convs=1).eval()
    x = mnist_batch[0][:4]
    with torch.no_grad():
        h, indices, sizes = net.encode(x)
        swapped = [idx.roll(1, dims=0) for idx in indices]  # image i gets image i-1's structure
        assert not torch.allclose(net.decode(h, indices, sizes), net.decode(h, swapped, sizes))


def test_odd_image_sizes_and_bad_parameters():
    net = create_purifier("s2snet", in_channels=1, image_size=27, width=4).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 27, 27)).shape == (2, 1, 27, 27)
    with pytest.raises(ConfigError, match="width and convs"):
        create_purifier("s2snet", width=0)
    with pytest.raises(ConfigError, match="at least 32 px"):
        create_purifier("s2snet", image_size=28, stages=[[4, 1]] * 5)
    with pytest.raises(ConfigError, match="channels, convs"):
        create_purifier("s2snet", stages=[[4]])


def test_fast_eval_path_matches_the_plain_computation(mnist_batch):
    torch.manual_seed(0)
    net = create_purifier("s2snet", "mnist", width=16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    net.eval()
    x = mnist_batch[0][:8]
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    fast, plain = net.purify(xa), net.reference_purify(xb)
    assert torch.allclose(fast, plain, atol=1e-5)
    (ga,) = torch.autograd.grad(fast.square().sum(), xa)
    (gb,) = torch.autograd.grad(plain.square().sum(), xb)
    assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-6)


def test_stage2_leaves_encoder_and_classifier_bit_identical(mnist_train):
    """Stage 2 trains only the decoder: every tensor of the encoder's and the classifier's state
    (weights and BatchNorm running statistics) is unchanged, though both contain BatchNorm and
    the classifier is handed over in train mode."""
    torch.manual_seed(0)
    net = create_purifier("s2snet", "mnist", width=4, convs=1)
    net.fit_stage1(mnist_train, TrainSettings(epochs=1, batch_size=64, lr=0.01, max_images=128))
    clf = create_classifier("vgg11", "mnist", width=4).train()  # has BatchNorm layers
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules())
    enc_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    clf_before = {k: v.clone() for k, v in clf.state_dict().items()}
    dec_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    flags = [p.requires_grad for p in clf.parameters()]
    net.fit_stage2(mnist_train, TrainSettings(epochs=1, batch_size=64, lr=0.01,
                                              max_images=192), clf, target="label")
    enc_after, clf_after = net.encoder.state_dict(), clf.state_dict()
    assert enc_after.keys() == enc_before.keys() and clf_after.keys() == clf_before.keys()
    for k, v in enc_before.items():
        assert torch.equal(v, enc_after[k]), f"encoder tensor {k} changed"
    for k, v in clf_before.items():
        assert torch.equal(v, clf_after[k]), f"classifier tensor {k} changed"
    assert any("running_mean" in k for k in enc_before) and any("running_var" in k
                                                              for k in clf_before)
    # the decoder did train (weights and its own BatchNorm statistics moved)
    changed = [k for k, v in net.decoder.state_dict().items() if not torch.equal(v, dec_before[k])]
    assert any(k.endswith("conv.weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    assert [p.requires_grad for p in clf.parameters()] == flags  # restored afterwards
    assert all(p.requires_grad for p in net.parameters())


def test_two_stage_training_tunes_the_signal_for_the_classifier(tiny_lenet, mnist_train,
                                                                mnist_batch, tmp_path):
    """Ten decoder steps of stage 2 make the classifier read the reconstruction far better than
    after the (equally short) stage 1 alone; the checkpoint (safetensors + JSON) reproduces the
    purifier exactly."""
    x, y = mnist_batch
    torch.manual_seed(0)
    net = create_purifier("s2snet", "mnist", width=8, convs=1)
    stage1, stage2, target = split_settings(QUICK)
    net.fit_stage1(mnist_train, stage1)

    def ce_and_accuracy() -> tuple[float, float]:
        with torch.no_grad():
            logits = tiny_lenet(net.eval()(x))
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    ce1, acc1 = ce_and_accuracy()
    net.fit_stage2(mnist_train, stage2, tiny_lenet, target)
    ce2, acc2 = ce_and_accuracy()
    assert ce2 < 0.5 * ce1 and acc2 > acc1 + 0.2, (ce1, ce2, acc1, acc2)
    save_checkpoint(net, tmp_path / "s2s", kind="purifier", name="s2snet")
    loaded, config = load_purifier(tmp_path / "s2s", "s2snet")
    assert config["hparams"]["width"] == 8 and config["hparams"]["convs"] == 1
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_prediction_target_needs_no_labels(tiny_lenet, mnist_train, mnist_batch):
    """With target=prediction the labels are never read: training on a copy whose labels are all
    wrong gives the same decoder as training on the true labels."""
    wrong = ImageDataset(mnist_train.name, "train", mnist_train.images[:256],
                         torch.zeros(256, dtype=torch.long), mnist_train.classes, "test")
    right = mnist_train.take(256)
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.01, extra={"target": "prediction"})
    nets = []
    for data in (wrong, right):
        torch.manual_seed(0)
        net = create_purifier("s2snet", "mnist", width=4, convs=1)
        metrics = net.fit(data, settings, classifier=tiny_lenet)
        assert metrics["target"] == "prediction" and metrics["stage2"]["steps"] == 4
        nets.append(net)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_distill_target_is_the_kl_to_the_classifiers_softmax(tiny_lenet, mnist_train,
                                                             monkeypatch):
    """target=distill: stage 2 minimises KL(softmax f(x) || softmax f(D(E(x)))) (checked on the
    loss the loop receives), reads no labels (all-wrong labels give the same decoder) and
    lowers that KL."""
    import aepurify.training.loops as loops

    seen = []
    run = loops.run_minibatches

    def spy(params, loss_fn, *args, **kwargs):
        seen.append(loss_fn)
        return run(params, loss_fn, *args, **kwargs)

    monkeypatch.setattr(loops, "run_minibatches", spy)
    wrong = ImageDataset(mnist_train.name, "train", mnist_train.images[:256],
                         torch.zeros(256, dtype=torch.long), mnist_train.classes, "test")
    x, y = mnist_train.take(64).tensors()
    settings = TrainSettings(epochs=2, batch_size=64, lr=0.01, extra={"target": "distill"})
    nets = []
    for data in (wrong, mnist_train.take(256)):
        torch.manual_seed(0)
        net = create_purifier("s2snet", "mnist", width=4, convs=1)
        assert net.fit(data, settings, classifier=tiny_lenet)["target"] == "distill"
        nets.append(net)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
    net = nets[1].eval()
    with torch.no_grad():
        p = torch.softmax(tiny_lenet(x), 1)
        q = torch.softmax(tiny_lenet(net(x)), 1)
        kl = float((p * (p.log() - q.log())).sum(1).mean())
        loss = float(seen[-1](x, y))  # stage 2's loss (the last loop run) on the trained net
    assert abs(loss - kl) < 1e-4 * max(1.0, kl)
    torch.manual_seed(0)
    fresh = create_purifier("s2snet", "mnist", width=4, convs=1)
    fresh.fit_stage1(mnist_train.take(256), settings.model_copy(update={"extra": {}}))
    with torch.no_grad():
        q0 = torch.softmax(tiny_lenet(fresh.eval()(x)), 1)
    assert kl < float((p * (p.log() - q0.log())).sum(1).mean())


def test_stage1_is_shared_by_the_s2snets_of_several_classifiers(tiny_lenet, mnist_train):
    """One run, two classifiers: the second S2SNet reuses the first one's stage 1 (the paper's
    single stage-1 autoencoder), bit for bit; other stage-1 settings train anew."""
    other = create_classifier("small-cnn", "mnist", width=4).eval()
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.01, max_images=128, seed=11)
    nets, metrics = [], []
    for clf, s in ((tiny_lenet, settings), (other, settings),
                   (other, settings.model_copy(update={"lr": 0.005}))):
        torch.manual_seed(11)
        net = create_purifier("s2snet", "mnist", width=4, convs=1)
        metrics.append(net.fit(mnist_train, s, classifier=clf))
        nets.append(net)
    assert "reused" not in metrics[0]["stage1"] and metrics[1]["stage1"]["reused"]
    assert "reused" not in metrics[2]["stage1"]
    for k, v in nets[0].encoder.state_dict().items():
        assert torch.equal(v, nets[1].encoder.state_dict()[k])
    assert not torch.equal(nets[0].encoder[0][0].conv.weight, nets[2].encoder[0][0].conv.weight)
    assert not torch.equal(nets[0].head.weight, nets[1].head.weight)  # stage 2 differs


def test_stage_settings_and_their_errors():
    base = TrainSettings(epochs=2, lr=0.01, batch_size=64, max_images=500, seed=3,
                         extra={"stage2_epochs": 1, "stage2_lr": 0.001, "target": "prediction"})
    s1, s2, target = split_settings(base)
    assert (s1.epochs, s1.lr, s1.extra) == (2, 0.01, {})
    assert (s2.epochs, s2.lr, s2.batch_size, s2.max_images, s2.seed) == (1, 0.001, 64, 500, 3)
    assert target == "prediction"
    assert split_settings(TrainSettings())[2] == "label"
    with pytest.raises(ConfigError, match="unknown s2snet training option.*stage2_epoch\\b"):
        split_settings(TrainSettings(extra={"stage2_epoch": 1}))
    with pytest.raises(ConfigError, match="target must be one of label, prediction, distill"):
        split_settings(TrainSettings(extra={"target": "labels"}))
    with pytest.raises(ConfigError, match="stage2_lr"):
        split_settings(TrainSettings(extra={"stage2_lr": -1}))
    with pytest.raises(ConfigError, match="--classifier"):
        create_purifier("s2snet").fit(None, TrainSettings())  # type: ignore[arg-type]


def test_declared_properties():
    cls = create_purifier("s2snet").__class__
    assert cls.differentiable and cls.trainable and cls.needs_classifier
    assert not cls.stochastic and "Folz" in cls.paper


def _grid_config() -> dict:
    quick = {"epochs": 1, "batch_size": 64, "max_images": 600, "lr": 0.003}
    return {
        "name": "s2snet-tiny", "dataset": "mnist", "n_test": 40, "batch_size": 40,
        "classifiers": [{"arch": "lenet", "train": quick},
                        {"arch": "small-cnn", "params": {"width": 4}, "train": quick}],
        "transfer_source": {"arch": "small-cnn", "label": "source", "params": {"width": 4},
                            "train": {**quick, "seed": 1}},
        "purifiers": [{"name": "s2snet", "params": {"width": 4, "convs": 1},
                       "train": {**quick, "lr": 0.01, "max_images": 256},
                       "threat_models": ["gray-box", "white-box", "transfer"]}],
        "threat_models": ["gray-box"],
        "attacks": [{"name": "fgsm", "eps": [0.2]},
                    # the attack's threat models win over the purifier's: no 40-image
                    # white-box PGD, the 20-image pgd-n20 stands in for it
                    {"name": "pgd", "eps": [0.2], "params": {"steps": 2},
                     "threat_models": ["gray-box", "transfer"]},
                    {"name": "pgd", "label": "pgd-n20", "eps": [0.2], "params": {"steps": 2},
                     "n_test": 20, "purifiers": ["s2snet"], "threat_models": ["white-box"]}],
        "analyses": [{"name": "s2snet-signal-transfer",
                      "params": {"attack": {"name": "fgsm", "eps": 0.2}}},
                     {"name": "s2snet-gradients", "params": {"n": 30}}],
    }


def test_grid_threat_models_and_analyses(tmp_path):
    from aepurify.evaluation import evaluate

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_grid_config()))
    out = tmp_path / "run"
    evaluate(path, out)
    with open(out / "results.csv") as f:
        records = list(csv.DictReader(f))
    s2s = {(r["classifier"], r["threat_model"], r["attack"]): r for r in records
           if r["purifier"] == "s2snet"}
    for clf in ("lenet", "small-cnn"):
        assert {(clf, "gray-box", "fgsm"), (clf, "gray-box", "pgd"), (clf, "white-box", "fgsm"),
                (clf, "white-box", "pgd-n20"), (clf, "transfer", "fgsm"),
                (clf, "transfer", "pgd")} <= set(s2s)
        assert (clf, "white-box", "pgd") not in s2s  # the attack's list wins
        assert s2s[(clf, "white-box", "pgd-n20")]["n"] == "20"
    record = json.loads((out / "run.json").read_text())
    assert record["models"]["purifier:lenet/s2snet"]["key"] != \
        record["models"]["purifier:small-cnn/s2snet"]["key"]  # one S2SNet per classifier
    report = (out / "report.md").read_text()
    assert "## S2SNet signal transfer" in report and "## S2SNet input-gradient statistics" in report
    with open(out / "s2snet-signal-transfer.csv") as f:
        matrix = list(csv.DictReader(f))
    settings = {r["setting"] for r in matrix}
    assert len(settings) == 2 and "clean" in settings
    rows = {(r["setting"], r["purifier"], r["classifier"]) for r in matrix}
    for b in ("lenet", "small-cnn"):
        for a in ("no S2SNet", "S2SNet tuned for lenet", "S2SNet tuned for small-cnn"):
            assert ("clean", a, b) in rows
    analyses = record["analyses"]
    stats = analyses["S2SNet input-gradient statistics"]["stats"]
    assert set(stats) == {"lenet", "small-cnn"}
    for per in stats.values():
        assert per["without S2SNet"]["mean_abs"] > 0 and per["with S2SNet"]["mean_abs"] > 0
        assert -1.0 <= per["with S2SNet"]["cosine_to_bare"] <= 1.0
    assert (out / "s2snet-gradients.png").stat().st_size > 5000


def test_threat_model_names_are_checked(tmp_path):
    from aepurify.evaluation import load_config

    config = _grid_config()
    config["purifiers"][0]["threat_models"] = ["gray-box", "whitebox"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="unknown threat model 'whitebox'"):
        load_config(path)


def test_analysis_without_the_purifier_label(tmp_path):
    from aepurify.evaluation import evaluate

    config = _grid_config()
    config["classifiers"] = config["classifiers"][:1]
    config["purifiers"][0]["label"] = "s2s"
    config["attacks"] = config["attacks"][:1]
    config["analyses"] = [{"name": "s2snet-gradients"}]
    config["transfer_source"] = None
    config["purifiers"][0]["threat_models"] = ["gray-box"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="purifier label 's2snet'"):
        evaluate(path, tmp_path / "run")


def test_shipped_configs_list_s2snet():
    from aepurify.evaluation import load_config
    from aepurify.resources import find_config

    demo = load_config(find_config("demo-mnist"))
    entry = next(p for p in demo.purifiers if p.name == "s2snet")
    assert {"gray-box", "white-box", "transfer"} <= set(entry.threat_models or [])
    assert demo.transfer_source is not None
    assert demo.transfer_source.arch != demo.classifier.arch
    for name in ("papers/s2snet-mnist", "papers/s2snet-cifar10"):
        config = load_config(find_config(name))
        assert len({c.arch for c in config.classifiers}) >= 2
        assert any(p.name == "s2snet" for p in config.purifiers)
        assert {a.name for a in config.analyses} == {"s2snet-signal-transfer",
                                                     "s2snet-gradients"}
        assert config.transfer_source is not None


def test_cli_trains_against_a_classifier_checkpoint(tmp_path, tiny_lenet):
    save_checkpoint(tiny_lenet, tmp_path / "lenet", kind="classifier", name="lenet",
                    dataset="mnist")
    out = tmp_path / "s2s"
    proc = run_cli("train", "purifier", "s2snet", "--dataset", "mnist", "--classifier",
                   str(tmp_path / "lenet"), "--epochs", "1", "--max-images", "128",
                   "--batch-size", "64", "--param", "width=4", "--param", "convs=1",
                   "--extra", "target=prediction", "--extra", "stage2_lr=0.002",
                   "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["extra"] == {"target": "prediction", "stage2_lr": 0.002}
    assert config["metrics"]["target"] == "prediction"
    assert config["metrics"]["stage2"]["steps"] == 2
    proc = run_cli("train", "purifier", "s2snet", "--dataset", "mnist", "--classifier",
                   str(tmp_path / "lenet"), "--extra", "stage3_epochs=1", "--out",
                   str(tmp_path / "bad"))
    assert_one_line_error(proc, "unknown s2snet training option", "stage3_epochs")
    proc = run_cli("train", "purifier", "s2snet", "--dataset", "mnist", "--out",
                   str(tmp_path / "bad"))
    assert_one_line_error(proc, "--classifier")


def test_input_gradient_is_nchw_for_colour_images():
    """The fast path runs channels-last; attacks (torchattacks' PGD-L2) .view() the gradient."""
    from aepurify.attacks import build_attack
    from aepurify.models import create_classifier
    from aepurify.purifiers import DefendedClassifier, create_purifier

    torch.manual_seed(0)
    purifier = create_purifier("s2snet", in_channels=3, image_size=32, width=8).eval()
    defended = DefendedClassifier(create_classifier("small-cnn", dataset="cifar10"),
                                  purifier).eval()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    (grad,) = torch.autograd.grad(F.cross_entropy(defended(x), y), x)
    assert grad.is_contiguous() and grad.abs().sum() > 0
    x_adv = build_attack("pgd", defended, 0.5, "l2", {"steps": 2})(x.detach(), y)
    delta = (x_adv - x.detach()).flatten(1).norm(dim=1)
    assert x_adv.shape == x.shape and float(delta.max()) <= 0.5 + 1e-4
