"""Random defenses judged honestly: replayable randomness and the fixed-randomness threat model
(METHODS.md, "Judging random defenses")."""

from __future__ import annotations

import pytest
import torch

import aepurify as ap
from aepurify.attacks import (FixedRandomness, ThreatModel, parse_threat_model,
                              resolve_threat_model, split_threat_model)
from aepurify.errors import ConfigError, InputError, NotApplicableError
from aepurify.purifiers import create_purifier


def random_purifiers(x: torch.Tensor) -> dict[str, ap.Purifier]:
    """The purifiers that draw noise, untrained (the draws are what matters here)."""
    torch.manual_seed(0)
    apudae = create_purifier("apudae", "mnist").eval()
    apudae.calibrate(x)
    return {"vae": create_purifier("vae", "mnist").eval(),
            "patch-vae": create_purifier("patch-vae", "mnist", patch_sizes=[8, 16]).eval(),
            "apudae": apudae}


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
