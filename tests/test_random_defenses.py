"""Random defenses judged honestly: replayable randomness, the fixed-randomness threat model and
N-evaluation (docs/methods.md, "Judging random defenses")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aepurify as ap
from aepurify.attacks import (FixedRandomness, NEvaluation, ThreatModel, attack_module,
                              build_attack, n_evaluate, parse_threat_model, resolve_threat_model,
                              split_threat_model)
from aepurify.errors import ConfigError, InputError, NotApplicableError
from aepurify.purifiers import DefendedClassifier, create_purifier


def random_purifiers(x: torch.Tensor) -> dict[str, ap.Purifier]:
    """The purifiers that draw noise, untrained (the draws are what matters here)."""
    torch.manual_seed(0)
    apudae = create_purifier("apudae", "mnist").eval()
    apudae.calibrate(x)
    return {"vae": create_purifier("vae", "mnist").eval(),
            "patch-vae": create_purifier("patch-vae", "mnist", patch_sizes=[8, 16]).eval(),
            "apudae": apudae,
            "function": ap.as_purifier(lambda t: (t + 0.2 * torch.randn_like(t)).clamp(0, 1),
                                       differentiable=True, stochastic=True, name="noise")}


def test_fixed_randomness_is_deterministic_and_replays_the_sampled_draw(mnist_batch):
    x = mnist_batch[0][:6]
    for name, purifier in random_purifiers(x).items():
        fixed = FixedRandomness(purifier, seed=123)
        with torch.no_grad():
            a, b = fixed(x), fixed(x)
            params = purifier.sample_randomness(tuple(x.shape), torch.Generator().manual_seed(123))
            replayed = purifier(x, randomness=params)
            fresh = purifier(x)
        assert torch.equal(a, b), name
        assert torch.equal(a, replayed), name
        assert not torch.equal(a, fresh), name          # the default forward still draws anew
        assert not fixed.stochastic and fixed.differentiable == purifier.differentiable


@pytest.mark.parametrize("name", ["vae", "patch-vae", "apudae"])
def test_the_default_forward_draws_what_sample_randomness_draws(name, mnist_batch):
    """On the CPU the default forward's draws are those of sample_randomness from the global
    generator: replaying them gives the same output under the same seed."""
    x = mnist_batch[0][:4]
    purifier = random_purifiers(x)[name]
    with torch.no_grad():
        torch.manual_seed(5)
        default = purifier(x)
        torch.manual_seed(5)
        replayed = purifier(x, randomness=purifier.sample_randomness(tuple(x.shape)))
    assert torch.equal(default, replayed)


def test_randomness_parameters_are_checked(mnist_batch):
    x = mnist_batch[0][:4]
    vae = random_purifiers(x)["vae"]
    params = vae.sample_randomness((3, 1, 28, 28))
    assert params["latent"].shape == (3, 256)
    with pytest.raises(InputError, match=r"sampled for images of shape \(3, 1, 28, 28\)"):
        vae(x, randomness=params)
    with pytest.raises(NotApplicableError, match="deterministic"):
        create_purifier("vae", "mnist", sample=False).sample_randomness(tuple(x.shape))
    with pytest.raises(NotApplicableError, match="deterministic"):
        create_purifier("magnet", "mnist").sample_randomness(tuple(x.shape))


def test_a_purifier_with_a_private_generator_cannot_be_fixed(mnist_batch):
    x = mnist_batch[0][:4]
    gen = torch.Generator().manual_seed(0)
    own = ap.as_purifier(lambda t: (t + 0.1 * torch.randn(t.shape, generator=gen)).clamp(0, 1),
                         differentiable=True, stochastic=True)
    with pytest.raises(NotApplicableError, match="cannot be re-seeded"):
        FixedRandomness(own, seed=0)(x)


def test_the_fixed_threat_model_is_parsed_and_validated_like_eot():
    assert split_threat_model("white-box+fixed") == ("white-box", "fixed")
    assert split_threat_model("fixed") == ("", "fixed")
    assert parse_threat_model("bpda+fixed") == ("bpda", False)
    for text, message in [("gray-box+fixed", "combine it with white-box or bpda"),
                          ("black-box+fixed", "combine it with white-box or bpda"),
                          ("bpda+eot+fixed", "choose one"),
                          ("bpda+fixed+fixed", "unknown threat model")]:
        with pytest.raises(ConfigError, match=message):
            split_threat_model(text)
    vae = create_purifier("vae", "mnist")
    assert resolve_threat_model("fixed", vae) == ThreatModel("white-box", False, 1, True)
    assert resolve_threat_model("white-box+fixed", vae).name == "white-box+fixed"
    assert resolve_threat_model("bpda+fixed", create_purifier("apudae", "mnist")).name == \
        "bpda+fixed"
    with pytest.raises(NotApplicableError, match="deterministic; fixed adds nothing"):
        resolve_threat_model("bpda+fixed", create_purifier("jpeg"))


def test_an_attack_on_a_fixed_draw_is_judged_with_fresh_draws(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:32], mnist_batch[1][:32]
    vae = random_purifiers(x)["vae"]
    defended = DefendedClassifier(tiny_lenet, vae)
    module = attack_module(resolve_threat_model("white-box+fixed", vae), defended)
    assert isinstance(module.purifier, FixedRandomness)
    torch.manual_seed(0)
    x_adv = build_attack("pgd", module, 0.3, params={"steps": 5})(x, y)
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6
    seed = module.purifier.seed
    assert seed is not None                          # drawn at the first call, then held
    with torch.no_grad():
        assert torch.equal(module(x_adv), module(x_adv))
    verdict = n_evaluate(defended, x_adv, y, seed=1)
    assert verdict.n_eval == 10 and module.purifier.seed == seed


# -- N-evaluation ----------------------------------------------------------------------------


def test_n_evaluation_counts_every_draw(tiny_lenet, mnist_batch):
    x, y = mnist_batch[0][:60], mnist_batch[1][:60]
    noisy = ap.as_purifier(lambda t: (t + 0.6 * torch.randn_like(t)).clamp(0, 1),
                           differentiable=True, stochastic=True, name="noise")
    defended = DefendedClassifier(tiny_lenet, noisy)
    state = torch.random.get_rng_state()
    first = n_evaluate(defended, x, y, seed=3, batch_size=40)
    assert torch.equal(state, torch.random.get_rng_state())
    again = n_evaluate(defended, x, y, seed=3, batch_size=40)
    other = n_evaluate(defended, x, y, seed=4, batch_size=40)
    assert first.predictions.shape == (10, 60)
    np.testing.assert_array_equal(first.predictions, again.predictions)
    assert not np.array_equal(first.predictions, other.predictions)
    s = first.summary()
    assert s["n"] == 60 and s["n_eval"] == 10
    assert s["all_of_n"] <= s["single_draw"] and s["all_of_n"] <= s["majority_vote"]
    assert s["all_of_n"] < s["single_draw"]        # some examples survive only some draws
    assert ((first.counts > 0) & (first.counts < 10)).any()
    plain = n_evaluate(tiny_lenet, x, y, stochastic=False)
    assert plain.n_eval == 1
    assert plain.single_draw_accuracy == plain.majority_vote_accuracy == plain.all_of_n_accuracy


def test_the_three_verdicts_on_known_predictions():
    labels = np.array([0, 1, 2, 3])
    predictions = np.array([[0, 1, 2, 0],      # draw 1
                            [0, 2, 1, 3],      # draw 2
                            [0, 1, 1, 5],      # draw 3
                            [0, 1, 2, 5]])     # draw 4
    v = NEvaluation(predictions, labels)
    np.testing.assert_array_equal(v.counts, [4, 3, 2, 1])
    np.testing.assert_array_equal(v.robust("single_draw"), [True, True, True, False])
    # example 2: a 2-2 tie between classes 2 and 1 is not robust; example 3: 5 has 2 votes
    np.testing.assert_array_equal(v.robust("majority_vote"), [True, True, False, False])
    np.testing.assert_array_equal(v.robust("all_of_n"), [True, False, False, False])
    assert (v.single_draw_accuracy, v.majority_vote_accuracy, v.all_of_n_accuracy) == \
        (0.75, 0.5, 0.25)
    with pytest.raises(ConfigError, match="unknown N-evaluation rule"):
        v.robust("best-of-n")


def test_n_evaluation_refuses_bad_labels_and_unknown_randomness(tiny_lenet, mnist_batch):
    x = mnist_batch[0][:8]
    with pytest.raises(InputError, match=r"class indices in \[0, 9\]"):
        n_evaluate(tiny_lenet, x, torch.full((8,), 10), n_eval=1)
    with pytest.raises(InputError, match="got 7 labels for 8 images"):
        n_evaluate(tiny_lenet, x, torch.zeros(7, dtype=torch.int64), n_eval=1)
    with pytest.raises(ConfigError, match="needs n_eval, or stochastic"):
        n_evaluate(tiny_lenet, x, torch.zeros(8, dtype=torch.int64))
