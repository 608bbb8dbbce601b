"""`aepurify audit` on the command line, as a user who brings a defense meets it: a purifier
given as a factory or as the function itself, the defense named after what it is, no other
library's chatter, a quick audit that says why it has no gray-box figure (issue 23)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli import assert_one_line_error, run_cli
from .test_probes import MY_MODELS

# the user's classifier of tests/test_probes.py, and purifiers in each form
MY_DEFENSES = MY_MODELS + '''
import numpy as np
from art.defences.preprocessor import SpatialSmoothing


def quantize(x):
    """The purifier itself: images -> images."""
    return torch.round(x * 4) / 4


def make_quantizer():
    """A factory of the same purifier."""
    return quantize


class Smoothing(nn.Module):
    def forward(self, x):
        return nn.functional.avg_pool2d(x, 3, 1, 1)


def make_smoothing():
    return Smoothing()


def art_median():
    """ART's median filter (SpatialSmoothing) as a purifier."""
    art = SpatialSmoothing(window_size=3, channels_first=True, clip_values=(0.0, 1.0))

    def purify(x):
        out, _ = art(x.detach().cpu().numpy())
        return torch.from_numpy(out.astype(np.float32))

    return purify
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_defenses.py").write_text(MY_DEFENSES)
    return folder


def _audit(cwd: Path, purifier: str, *extra: str):
    return run_cli("audit", "--classifier", "my_defenses:net", "--purifier", purifier,
                   "--data", "mnist", "--n-test", "8", "--eps", "0.3", "--version", "quick",
                   *extra, cwd=cwd)


@pytest.mark.parametrize("purifier,label", [
    ("my_defenses:quantize", "quantize"),          # the function itself
    ("my_defenses:make_quantizer", "make_quantizer"),  # a factory of a plain function
    ("my_defenses:make_smoothing", "Smoothing"),   # a factory of a module: named by its class
])
def test_a_purifier_is_a_factory_or_the_function_itself(user_dir, purifier, label):
    proc = _audit(user_dir, purifier)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"aepurify audit (quick): {label} in front of Net"), first


def test_keyword_arguments_for_a_purifier_that_is_no_factory(user_dir):
    proc = _audit(user_dir, "my_defenses:quantize", "--purifier-arg", "levels=4")
    assert_one_line_error(proc, "is a purifier (it takes the images), not a factory")


def test_a_quick_audit_says_why_it_has_no_gray_box_figure_and_art_stays_quiet(user_dir):
    proc = _audit(user_dir, "my_defenses:art_median")
    assert proc.returncode == 0, proc.stderr
    assert "ART_DATA_PATH" not in proc.stderr + proc.stdout  # ART's INFO log on import
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("  gray-box robust"))
    assert line.split()[2] == "-" and "runs no gray-box attack" in proc.stdout, proc.stdout
    assert "worst: the strongest single attack" in proc.stdout.replace("\n", " ")


def test_precision_of_the_attack_gradients(user_dir, tmp_path):
    """--precision reaches the audit (run.json records it) and a bad name is one line."""
    assert_one_line_error(_audit(user_dir, "my_defenses:quantize", "--precision", "fp8"),
                          "unknown precision 'fp8'")
    proc = _audit(user_dir, "my_defenses:quantize", "--precision", "bf16",
                  "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision"] == "bf16"
