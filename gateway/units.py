"""Human units in configuration: durations and byte sizes.

``parse_duration`` turns ``"500ms"``, ``"1.5s"``, ``"2m"``, ``"1h"``, ``"1d"``, compounds such as
``"1m30s"`` or a plain number of seconds into float seconds. ``parse_bytes`` turns ``"64MiB"``,
``"10MB"``, ``"4096"`` or an int into an int number of bytes (SI prefixes are powers of 1000,
IEC prefixes ``Ki``/``Mi``/``Gi``/``Ti`` powers of 1024).

Invariants:
- Results are never negative; booleans are never accepted as numbers (YAML ``yes`` is a bool).
- Every rejection is a ``ValueError`` whose message quotes the input and shows valid examples,
  so the config loader can show it to the user unchanged.
- ``Duration`` and ``ByteSize`` are pydantic ``Annotated`` types accepting exactly what the
  parsers accept, with a JSON schema that editors understand (number or pattern string).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

__all__ = [
    "BYTES_PATTERN",
    "DURATION_PATTERN",
    "ByteSize",
    "Duration",
    "format_bytes",
    "format_duration",
    "parse_bytes",
    "parse_duration",
]

_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUM})\s*(us|µs|ms|s|m|h|d)")
#: one or more number+unit parts ("1m30s"), or a bare number of seconds
DURATION_PATTERN = rf"^\s*(?:{_NUM}\s*(?:us|µs|ms|s|m|h|d)\s*)+$|^\s*{_NUM}\s*$"
_DURATION_FULL = re.compile(DURATION_PATTERN)

_BYTE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
BYTES_PATTERN = r"^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:[kKmMgGtT][iI]?[bB]?|[bB])?\s*$"
_BYTES_FULL = re.compile(rf"^\s*({_NUM})\s*([A-Za-z]*)\s*$")

_DURATION_HELP = "use e.g. 500ms, 10s, 5m"
_BYTES_HELP = "use e.g. 4096, 256KiB, 64MiB, 10MB"


def parse_duration(value: Any) -> float:
    """Seconds from ``"500ms"``, ``"1.5s"``, ``"2m"``, ``"1h"``, ``"1d"``, ``"1m30s"``, or a
    number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r} ({_DURATION_HELP})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _DURATION_FULL.match(text):
            raise ValueError(f"bad duration '{value}' ({_DURATION_HELP})")
        try:
            seconds = float(text)
        except ValueError:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    else:
        raise ValueError(f"bad duration of type {type(value).__name__} ({_DURATION_HELP})")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad duration '{value}': must be a finite, non-negative time")
    return seconds


def parse_bytes(value: Any) -> int:
    """Bytes from ``"64MiB"``, ``"10MB"``, ``"1.5GiB"``, ``"4096"`` or an int."""
    if isinstance(value, bool):
        raise ValueError(f"bad byte size {value!r} ({_BYTES_HELP})")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"bad byte size '{value}': a number of bytes must be whole")
        size = int(value)
    elif isinstance(value, str):
        match = _BYTES_FULL.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _BYTE_UNITS:
            raise ValueError(f"bad byte size '{value}' ({_BYTES_HELP})")
        exact = float(match.group(1)) * _BYTE_UNITS[unit]
        if unit in ("", "b") and not exact.is_integer():
            raise ValueError(f"bad byte size '{value}': a number of bytes must be whole")
        size = round(exact)
    else:
        raise ValueError(f"bad byte size of type {type(value).__name__} ({_BYTES_HELP})")
    if size < 0:
        raise ValueError(f"bad byte size '{value}': must not be negative")
    return size


def _number(x: float) -> str:
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: float) -> str:
    """Short human form of a duration that ``parse_duration`` reads back (µs precision)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{_number(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{_number(seconds)}s"


def format_bytes(size: int) -> str:
    """Short human form of a byte size using IEC prefixes when exact."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "duration: seconds, or e.g. 500ms, 10s, 5m, 1h, 1d, 1m30s",
        }
    ),
]
"""Float seconds, written in config as ``500ms``/``10s``/``5m``/``1h``/``1d`` or seconds."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_bytes),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": BYTES_PATTERN},
            ],
            "description": "byte size: bytes, or e.g. 256KiB, 64MiB, 10MB (KiB=1024, KB=1000)",
        }
    ),
]
"""Int bytes, written in config as ``4096``/``256KiB``/``64MiB``/``10MB``."""


def parse_hex_bytes(value: Any) -> Any:
    """``"AA 55"``, ``"aa55"``, ``"0xAA55"``, ``"AA:55"`` -> bytes; other input goes to pydantic."""
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x").replace(" ", "").replace(":", "")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"bad hex bytes {value!r} (use e.g. '0a1b2c' or '0A 1B 2C')") from None
    return value


HexBytes = Annotated[bytes, BeforeValidator(parse_hex_bytes)]
"""Bytes, written in config as hex (``"AA 55"``, ``"0xAA55"``, ``"aa:55"``)."""
