"""The statistics of randomized smoothing (Cohen, Rosenfeld and Kolter, "Certified Adversarial
Robustness via Randomized Smoothing", ICML 2019; reference code locuslab/smoothing,
``code/core.py``), from class counts of noisy forward passes to a verdict. SciPy does the
statistics: the Clopper-Pearson bound from the beta distribution, PREDICT's test from
``scipy.stats.binomtest`` (locuslab's ``binom_test`` was removed from SciPy).

- CERTIFY: the top class of ``n0`` selection draws is cA; ``n`` fresh estimation draws give its
  count nA; pA_low, the one-sided (1 - alpha) Clopper-Pearson lower bound of P[f = cA], gives
  the certified L2 radius ``R = sigma * Phi^-1(pA_low)``, or ABSTAIN when pA_low <= 0.5. With
  probability at least 1 - alpha, the smoothed classifier g returns cA everywhere within R.
- PREDICT: the two most frequent classes of ``n`` draws are tested against a fair coin
  (two-sided binomial test); ABSTAIN unless the p-value is at most alpha. The answer differs
  from g(x) with probability at most alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, norm

from ..errors import ConfigError

ABSTAIN = -1


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion:
    ``Beta(alpha; k, n - k + 1)``, 0 when k = 0 (statsmodels' ``proportion_confint(k, n,
    alpha=2 * alpha, method="beta")[0]``, what Cohen et al. call).

    Raises:
        ConfigError: trials < 1, successes outside [0, trials], alpha outside (0, 1).
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ConfigError(f"need 0 <= successes <= trials and trials >= 1; got {successes} of "
                          f"{trials}")
    check_alpha(alpha)
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def check_alpha(alpha: float) -> float:
    """``alpha`` itself if it is a probability in (0, 1); ConfigError otherwise."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1); got {alpha}")
    return float(alpha)


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one image.

    Attributes:
        prediction: cA, or :data:`ABSTAIN` (-1).
        radius: certified L2 radius on the [0, 1] pixel scale (0.0 when abstaining).
        top_class: cA, the selection draws' top class (kept when abstaining).
        count: nA, estimation draws that gave cA.
        n: estimation draws.
        p_lower: pA_low.
    """

    prediction: int
    radius: float
    top_class: int
    count: int
    n: int
    p_lower: float


def certify_from_counts(selection: np.ndarray, estimation: np.ndarray, sigma: float,
                        alpha: float) -> Certificate:
    """CERTIFY from the selection counts (K,) and the estimation counts (K,).

    Raises:
        ConfigError: counts of different lengths, no estimation draws, sigma <= 0, bad alpha.
    """
    if selection.shape != estimation.shape or estimation.ndim != 1:
        raise ConfigError("selection and estimation counts must be two (K,) arrays")
    if sigma <= 0:
        raise ConfigError(f"sigma must be > 0; got {sigma}")
    top = int(np.argmax(selection))
    n = int(estimation.sum())
    count = int(estimation[top])
    p_lower = lower_confidence_bound(count, n, alpha)
    if p_lower <= 0.5:
        return Certificate(ABSTAIN, 0.0, top, count, n, p_lower)
    return Certificate(top, float(sigma * norm.ppf(p_lower)), top, count, n, p_lower)


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer for one image.

    Attributes:
        prediction: the top class, or :data:`ABSTAIN` (-1).
        top_class: the most frequent class (kept when abstaining).
        counts: the two largest counts, (first, second).
        p_value: the two-sided binomial test's p-value.
    """

    prediction: int
    top_class: int
    counts: tuple[int, int]
    p_value: float


def predict_from_counts(counts: np.ndarray, alpha: float) -> Prediction:
    """PREDICT from the class counts (K,) of its draws.

    Raises:
        ConfigError: not a (K,) array with K >= 2, no draws, bad alpha.
    """
    check_alpha(alpha)
    if counts.ndim != 1 or counts.shape[0] < 2 or counts.sum() < 1:
        raise ConfigError("PREDICT needs (K,) counts, K >= 2, of at least one draw")
    order = np.argsort(-counts, kind="stable")  # ties: the lower class index first
    first, second = int(counts[order[0]]), int(counts[order[1]])
    p_value = float(binomtest(first, first + second, p=0.5).pvalue)
    prediction = int(order[0]) if p_value <= alpha else ABSTAIN
    return Prediction(prediction, int(order[0]), (first, second), p_value)
