"""Errors that aepurify raises for bad input.

Every error carries a one-line message that names the problem (which file, which shape, which
name). The command line prints that line and exits with status 2, never a traceback.
"""

from __future__ import annotations


class AepurifyError(Exception):
    """Base class of every error aepurify raises on purpose."""


class DataError(AepurifyError):
    """A data set is missing, corrupt (checksum or format) or not readable."""


class CheckpointError(AepurifyError):
    """A checkpoint is missing, corrupt, or does not match the architecture asked for."""


class ConfigError(AepurifyError, ValueError):
    """An experiment config, a registry name or an option is invalid."""


class InputError(AepurifyError, ValueError):
    """An image tensor has the wrong type, shape or values outside [0, 1]."""


class NotApplicableError(AepurifyError):
    """A threat model or attack does not apply to a purifier (e.g. white-box on Pillow JPEG)."""


class OutputLockedError(AepurifyError):
    """Another live run holds the output folder's lock (see aepurify.evaluation.lock)."""


class RankFailedError(AepurifyError):
    """Under torchrun: another rank failed (its own message names the problem), so this one
    stops too."""
