"""A missing optional dependency: the ``ImportError`` that says which extra of rain-align installs it."""

from __future__ import annotations

__all__ = ["missing"]


def missing(what: str, extra: str, alternative: str = "") -> ImportError:
    """``what`` (``"X needs Y"``) and the command that installs the extra (and ``alternative``)."""
    hint = f" (or {alternative})" if alternative else ""
    return ImportError(f"{what}: pip install 'rain-align[{extra}]'{hint}")
