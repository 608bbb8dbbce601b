"""aepurify: autoencoder-based adversarial purification of image classifiers.

Train purifiers (MagNet, S2SNets, feature-loss DAEs, APuDAE, patch-wise VAEs, and the JPEG /
bit-depth / median baselines) in front of any PyTorch classifier, attack the defended classifier
under every threat model the field uses (gray-box, white-box, BPDA, EOT, adaptive, transfer), and
report how much robustness is real.

Pixels are float tensors (N, C, H, W) in [0, 1] everywhere; epsilons are on that scale.

    >>> import aepurify as ap
    >>> test = ap.load_dataset("mnist", "test")
    >>> clf = ap.create_classifier("lenet", dataset="mnist")
    >>> defended = ap.DefendedClassifier(clf, ap.create_purifier("jpeg", quality=50))

Your own classifier and purifier, one verdict: ``ap.audit(net, purifier, x, y, eps=8/255)``
(``ap.as_classifier(net, mean=..., std=..., sample=x)`` and ``ap.as_purifier(fn,
differentiable=None, stochastic=None)`` wrap them; None: probed). A lower bound beside it:
``ap.certify(net, denoiser, x, y, sigma=0.5)`` (denoised randomized smoothing).
"""

from .data import ImageDataset, load_dataset
from .errors import AepurifyError, CheckpointError, ConfigError, DataError, InputError
from .models import as_classifier, create_classifier, load_classifier
from .purifiers import DefendedClassifier, Purifier, as_purifier, create_purifier, load_purifier
from .version import __version__, code_version
from .audit import AuditResult, audit  # noqa: E402  (after the stages it drives)
from .certification import CertifyResult, certify  # noqa: E402

__all__ = ["__version__", "code_version", "load_dataset", "ImageDataset", "create_classifier",
           "load_classifier", "create_purifier", "load_purifier", "Purifier",
           "DefendedClassifier", "as_classifier", "as_purifier", "audit", "AuditResult",
           "certify", "CertifyResult",
           "AepurifyError",
           "CheckpointError", "ConfigError", "DataError", "InputError"]
