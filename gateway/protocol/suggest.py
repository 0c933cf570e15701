"""The one "did you mean" helper for every user-facing error about a misspelt name."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The closest of ``choices`` to ``word``, or None when nothing is close enough."""
    import difflib  # lazy: only an error message needs it (resident memory of a healthy daemon)

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=cutoff)
    return close[0] if close else None
