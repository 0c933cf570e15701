"""Decode one CoAP request payload (JSON or CBOR) into samples. No I/O, no state.

Accepted shapes (JSON, content-format 50 or absent; CBOR, content-format 60):
``{"metric": value, ...}`` (timestamp: receive time), ``{"ts": epoch_ms, "values": {...}}``,
or a non-empty list of those.

Invariants: the result is all-or-nothing (one bad entry rejects the request, so a device never
has to guess what was stored); metric names are 1..128 chars and never start with ``_``
(reserved for the gateway's own ``_status``); values are bool, int (64-bit), finite float,
str (<= 1024 chars) or CBOR bytes (<= 4096); a timestamp is integer epoch milliseconds after
2000-01-01 and not further than ``max_skew_ms`` in the future.
"""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2

from edgegw import Sample, Value

JSON = 50
CBOR = 60
SUPPORTED = (JSON, CBOR)
_MIN_TS = 946_684_800_000  # 2000-01-01T00:00:00Z
_INT64 = 1 << 63


class UnsupportedFormat(ValueError):
    """The content format is neither JSON nor CBOR (-> 4.15)."""


class Malformed(ValueError):
    """The payload does not decode or does not have an accepted shape (-> 4.00)."""


def decode(payload: bytes, content_format: int | None) -> Any:
    if content_format is None or content_format == JSON:
        try:
            return json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise Malformed(f"invalid JSON: {exc}") from None
        except RecursionError:  # e.g. 8000 nested arrays: the accepted shapes are 3 deep
            raise Malformed("invalid JSON: nested too deeply") from None
    if content_format == CBOR:
        try:
            return cbor2.loads(payload)
        except RecursionError:
            raise Malformed("invalid CBOR: nested too deeply") from None
        except Exception as exc:  # cbor2 raises several types for hostile input
            raise Malformed(f"invalid CBOR: {type(exc).__name__}: {exc}") from None
    raise UnsupportedFormat(f"content-format {content_format} (use 50 JSON or 60 CBOR)")


def _value(name: str, v: Any) -> Value:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if not -_INT64 <= v < _INT64:
            raise Malformed(f"{name}: integer out of 64-bit range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise Malformed(f"{name}: not a finite number")
        return v
    if isinstance(v, str):
        if len(v) > 1024:
            raise Malformed(f"{name}: string longer than 1024 characters")
        return v
    if isinstance(v, bytes):
        if len(v) > 4096:
            raise Malformed(f"{name}: byte string longer than 4096 bytes")
        return v
    raise Malformed(f"{name}: unsupported value type {type(v).__name__} (number, bool, string)")


def _metric(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise Malformed(f"metric name {name!r} must be a string of 1..128 characters")
    if name.startswith("_"):
        raise Malformed(f"metric name {name!r}: names starting with '_' are reserved")
    return name


def to_samples(
    doc: Any, device: str, now_ms: int, *, max_samples: int, max_skew_ms: int
) -> list[Sample]:
    """Samples of one decoded document; raises ``Malformed`` with a device-readable reason."""
    entries = doc if isinstance(doc, list) else [doc]
    if not entries:
        raise Malformed("empty list")
    out: list[Sample] = []
    for i, entry in enumerate(entries):
        where = f"[{i}] " if isinstance(doc, list) else ""
        if not isinstance(entry, dict):
            raise Malformed(f"{where}expected an object, got {type(entry).__name__}")
        if "values" in entry:
            extra = set(entry) - {"ts", "values"}
            if extra:
                keys = sorted(map(str, extra))
                raise Malformed(f"{where}unexpected keys {keys} next to 'values'")
            values = entry["values"]
            ts = entry.get("ts", now_ms)
            if isinstance(ts, bool) or not isinstance(ts, int):
                raise Malformed(f"{where}ts must be integer epoch milliseconds")
            if ts < _MIN_TS or ts > now_ms + max_skew_ms:
                raise Malformed(f"{where}ts {ts} is not plausible epoch milliseconds")
        elif "ts" in entry:
            raise Malformed(f"{where}'ts' needs the metrics under 'values' ({{ts, values}})")
        else:
            values, ts = entry, now_ms
        if not isinstance(values, dict) or not values:
            raise Malformed(f"{where}'values' must be a non-empty object of metric: value")
        for name, v in values.items():
            metric = _metric(name)
            out.append(Sample(device, metric, ts, _value(metric, v)))
            if len(out) > max_samples:
                raise Malformed(f"more than {max_samples} samples in one request")
    return out
