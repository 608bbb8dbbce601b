"""Certified robustness beside attacked robustness: (denoised) randomized smoothing.

A purifier D trained as a Gaussian denoiser in front of a classifier f gives the smoothed
classifier ``g(x) = argmax_c P[f(D(clip(x + delta, 0, 1))) = c]`` (Salman et al., NeurIPS 2020;
D = none is Cohen et al.'s plain randomized smoothing, ICML 2019). :func:`certify` reports, per
L2 radius, the certified accuracy (CERTIFY: a lower bound on g's robust accuracy) beside the
attacked accuracy (SmoothAdv judged by PREDICT: an upper bound), and checks that the lower bound
does not exceed the upper one beyond the confidence allowance.

    >>> result = ap.certify(lenet, denoiser, x, y, sigma=0.5, n=10_000)
    >>> print(result)                    # certified and attacked accuracy per radius
"""

from .api import certify
from .bracket import BracketRow, bracket
from .cohen import ABSTAIN, Certificate, Prediction, certify_from_counts, lower_confidence_bound
from .cohen import predict_from_counts
from .result import CertifyResult
from .run import DEFAULT_RADII, CertifySettings, DefenseRun
from .smoothadv import SmoothAdvSettings, SmoothedSoftmax
from .smoothing import SmoothedClassifier, noise_chunks, noise_generator

__all__ = ["certify", "CertifyResult", "CertifySettings", "SmoothAdvSettings", "DefenseRun",
           "BracketRow", "bracket", "ABSTAIN", "Certificate", "Prediction",
           "certify_from_counts", "predict_from_counts", "lower_confidence_bound",
           "SmoothedClassifier", "SmoothedSoftmax", "noise_chunks", "noise_generator",
           "DEFAULT_RADII"]
