"""The one grammar of gateway and device ids (they become MQTT topic levels and certificate CNs).

``ID_PATTERN``: 1-64 ASCII letters, digits, ``_``, ``.`` or ``-``, starting with a letter or
digit. Matched with ``fullmatch`` (a ``$`` with ``re.match`` would let a trailing newline
through), so ``/``, ``+``, ``#``, NUL, ``$``-prefixes and whitespace can never reach a topic.
Everything that checks an id (config, PKI, topics, registry, ingest) calls ``check_id`` here.
"""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "IdError", "check_gateway_id", "check_id", "is_valid_id"]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ID_HINT = (
    "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
    "(ids become MQTT topic levels)"
)


class IdError(ValueError):
    """An id outside the grammar; ``hint`` says what an id may contain."""

    def __init__(self, message: str, hint: str = ID_HINT) -> None:
        super().__init__(message)
        self.hint = hint


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` when it is a valid id, else raise ``IdError`` saying why."""
    if is_valid_id(value):
        return value  # type: ignore[return-value]
    if not isinstance(value, str):
        raise IdError(f"invalid {what} {value!r} (not a string)")
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_.-"))})
    why = f"it contains {', '.join(repr(c) for c in bad)}" if bad else "wrong start or length"
    raise IdError(f"invalid {what} '{value}' ({why})")


def check_gateway_id(value: object) -> str:
    return check_id(value, "gateway id")
