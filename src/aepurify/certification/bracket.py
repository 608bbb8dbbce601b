"""The bracket: certified accuracy (a lower bound on the smoothed classifier's robust accuracy)
beside attacked accuracy (an upper bound), per L2 radius, and the check that ties them.

At radius r, an image counts as

- certified when CERTIFY returned its true class with radius R >= r;
- attacked-correct when PREDICT, on the SmoothAdv example found within r (the clean image at
  r = 0), returned its true class; an abstention counts as an error, as in Cohen et al.'s and
  Salman et al.'s empirical accuracy.

The check. A certified image whose attacked example PREDICT assigns to *another class* (not an
abstention) contradicts the certificate: that happens only if the certificate failed (probability
at most alpha) or PREDICT answered other than g (at most alpha). Per radius the number of such
contradictions may not exceed the (1 - :data:`CHECK_ALPHA`) quantile of Binomial(certified
images, 2 alpha); more fails the check, and means a bug in the certificate or in the judging.
An abstention on a certified image's example is no contradiction: near the edge of the
certified ball, where the attack pushes, pA may be close to 0.5, and PREDICT abstains there
legitimately. So certified accuracy may exceed attacked accuracy by the abstentions on certified
images plus the allowance, never by more; the report shows all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from .cohen import ABSTAIN
from .run import DefenseRun

# The check's own false-alarm rate per radius.
CHECK_ALPHA = 0.001


@dataclass
class BracketRow:
    """One radius of one smoothed classifier.

    Attributes:
        classifier, purifier: labels; sigma: the noise.
        radius: L2 radius, pixels in [0, 1].
        n: images.
        certified: certified accuracy (lower bound).
        attacked: attacked accuracy judged by PREDICT (upper bound); NaN without an attack.
        certified_abstained: images CERTIFY abstained on (the same at every radius).
        attacked_abstained: images whose attacked example PREDICT abstained on.
        contradictions: certified images whose attacked example PREDICT gave another class.
        allowance: contradictions the check tolerates (see the module docstring).
        passed: the check's verdict (None without an attack).
    """

    classifier: str
    purifier: str
    sigma: float
    radius: float
    n: int
    certified: float
    attacked: float
    certified_abstained: int
    attacked_abstained: int
    contradictions: int
    allowance: int
    passed: bool | None

    @property
    def gap(self) -> float:
        """attacked - certified: how much the two bounds leave open (NaN without an attack)."""
        return self.attacked - self.certified


def allowance(certified: int, alpha: float, check_alpha: float = CHECK_ALPHA) -> int:
    """Contradictions tolerated among ``certified`` images: the (1 - check_alpha) quantile of
    Binomial(certified, 2 alpha)."""
    if certified == 0:
        return 0
    return int(binom.ppf(1 - check_alpha, certified, min(1.0, 2 * alpha)))


def bracket(run: DefenseRun, radii: list[float], sigma: float, alpha: float
            ) -> list[BracketRow]:
    """Certified and attacked accuracy of ``run`` at each radius, with the check."""
    n = len(run.labels)
    cert_pred = np.array([c["prediction"] for c in run.certificates])
    rows = []
    for r in radii:
        certified = run.certified_correct(r)
        attacked = run.attacked_predictions(r)
        if attacked is None:
            acc, abst, contra, allowed, passed = float("nan"), 0, 0, 0, None
        else:
            acc = float((attacked == run.labels).mean()) if n else float("nan")
            abst = int((attacked == ABSTAIN).sum())
            contra = int((certified & (attacked != run.labels) & (attacked != ABSTAIN)).sum())
            allowed = allowance(int(certified.sum()), alpha)
            passed = contra <= allowed
        rows.append(BracketRow(run.classifier, run.purifier, sigma, r, n,
                               float(certified.mean()) if n else float("nan"), acc,
                               int((cert_pred == ABSTAIN).sum()), abst, contra, allowed, passed))
    return rows
