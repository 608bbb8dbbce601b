"""Audit your own defense: any classifier, any purifier, one call (docs/audit.md).

    >>> import aepurify as ap
    >>> result = ap.audit(my_net, my_denoiser, x, y, norm="linf", eps=8 / 255)
    >>> print(result)                  # 80 columns: what it picked and why, the verdict
    >>> result.save("audit-report")    # results.csv, summary.csv, sanity.csv, report.md/html

Modules: ``inputs`` (wrap and validate what the user gives), ``suite`` (the versions' attacks
as cells), ``core`` (:func:`audit`: the evaluation stages on those cells), ``result``
(:class:`AuditResult`).
"""

from .core import audit
from .result import AuditResult, SanityItem
from .suite import VERSIONS

__all__ = ["audit", "AuditResult", "SanityItem", "VERSIONS"]
