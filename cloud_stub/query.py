"""Stored readings as JSON or CSV (``edgegw-cloud query``; the command line is in commands/).

Filters: gateway, device, metric, time range ``[since, until)``. Times accept ISO-8601
(``2024-05-01T12:00:00Z``; no zone = UTC), epoch milliseconds (``1714564800000``), ``now`` or a
relative offset from now (``-10m``, ``-2h``, ``-1d``, ``-30s``, ``-500ms``).

Output is streamed row by row (a large range never has to fit in memory). ``json`` prints one
valid JSON array, ``jsonl`` one object per line, ``csv`` a header then rows. Blob values (camera
snapshots) print as ``{"blob_sha256": ..., "size": ...}``; ``--blob-out DIR`` also writes them out.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from edgegw.protocol.model import Quality
from edgegw_cloud.store import CloudStore, StoredReading

_RELATIVE = re.compile(r"^([+-])\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class TimeSpecError(ValueError):
    """A --since/--until value in none of the accepted forms."""


def parse_time(text: str, *, now_ms: int | None = None) -> int:
    """Epoch milliseconds for ISO-8601, epoch ms, ``now`` or a relative offset like ``-10m``."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    spec = text.strip()
    if spec.lower() == "now":
        return now
    if re.fullmatch(r"\d+", spec):
        return int(spec)
    rel = _RELATIVE.match(spec)
    if rel:
        sign, amount, unit = rel.groups()
        delta = round(float(amount) * _UNIT_MS[unit])
        return now + delta if sign == "+" else now - delta
    try:
        parsed = dt.datetime.fromisoformat(spec)
    except ValueError:
        raise TimeSpecError(
            f"bad time {text!r}: use ISO-8601 (2024-05-01T12:00:00Z), epoch milliseconds "
            "(1714564800000), 'now' or a relative offset (-10m, -2h, -1d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _quality(q: int) -> str:
    try:
        return Quality(q).label
    except ValueError:
        return str(q)


def iso_time(ts_ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def write_readings(
    store: CloudStore,
    rows: Iterable[StoredReading],
    fmt: str,
    stream: TextIO,
    blob_out: Path | None = None,
) -> None:
    """Stream ``rows`` to ``stream`` as ``json`` (one array), ``jsonl`` or ``csv``."""
    writer: Any = None
    first = True
    if fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["gateway", "device", "metric", "ts_ms", "time", "value", "quality"])
    elif fmt == "json":
        stream.write("[")
    for r in rows:
        value = r.value
        if isinstance(value, dict) and blob_out is not None:
            data = store.blob(str(value["blob_sha256"]))
            if data is not None:
                (blob_out / str(value["blob_sha256"])).write_bytes(data)
        if writer is not None:
            cell = json.dumps(value) if isinstance(value, dict) else value
            writer.writerow([r.gateway, r.device, r.metric, r.ts_ms, iso_time(r.ts_ms), cell,
                             _quality(r.quality)])
            continue
        obj = {"gateway": r.gateway, "device": r.device, "metric": r.metric,
               "ts_ms": r.ts_ms, "time": iso_time(r.ts_ms), "value": value,
               "quality": _quality(r.quality)}
        if fmt == "jsonl":
            stream.write(json.dumps(obj) + "\n")
        else:
            stream.write(("\n" if first else ",\n") + json.dumps(obj))
        first = False
    if fmt == "json":
        stream.write("]\n" if first else "\n]\n")
