"""The one error type of corpus runs."""

from __future__ import annotations


class CorpusError(ValueError):
    """Bad input or an output directory that cannot be used; the message says what to do."""
