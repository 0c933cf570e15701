"""Stored readings, alerts or gaps as JSON, JSON lines, CSV or Parquet (``edgegw-cloud query``;
the command line is in commands/).

Filters: gateway, device, metric, time range ``[since, until)``. Times accept ISO-8601
(``2024-05-01T12:00:00Z``; no zone = UTC), epoch milliseconds (``1714564800000``), ``now`` or a
relative offset from now (``-10m``, ``-2h``, ``-1d``, ``-30s``, ``-500ms``).

Output is streamed row by row (a large range never has to fit in memory). ``json`` prints one
valid JSON array, ``jsonl`` one object per line, ``csv`` a header then rows. Blob values (camera
snapshots) print as ``{"blob_sha256": ..., "size": ...}``; ``--blob-out DIR`` also writes them out.
``parquet`` (pyarrow, the ``parquet`` extra) writes row groups of ``PARQUET_ROWS`` readings with a
fixed schema (time as timestamp[ms, UTC], numeric values as float64 in ``value``, anything else as
text in ``value_text``). Alerts and gaps are exported the same ways. Every function takes a store
of either backend (SQLite ``CloudStore``, PostgreSQL ``PgStore``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from edgegw.protocol.model import Quality

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


PARQUET_ROWS = 65_536
READING_COLUMNS = ["gateway", "device", "metric", "ts_ms", "time", "value", "quality"]


def reading_rows(store: Any, rows: Iterable[Any], blob_out: Path | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Stored readings (``StoredReading``) as export rows; blobs written to ``blob_out``."""
    for r in rows:
        value = r.value
        if isinstance(value, dict) and blob_out is not None:
            data = store.blob(str(value["blob_sha256"]))
            if data is not None:
                (blob_out / str(value["blob_sha256"])).write_bytes(data)
        yield {"gateway": r.gateway, "device": r.device, "metric": r.metric, "ts_ms": r.ts_ms,
               "time": iso_time(r.ts_ms), "value": value, "quality": _quality(r.quality)}


def alert_rows(events: Iterable[dict[str, Any]], device: str | None = None
               ) -> Iterator[dict[str, Any]]:
    for a in events:
        if device is not None and a["device"] != device:
            continue
        yield {"gateway": a["gateway"], "rule": a["rule"], "device": a["device"],
               "ts_ms": a["ts_ms"], "time": iso_time(a["ts_ms"]),
               "state": "active" if a["active"] else "cleared", "severity": a["severity"],
               "metric": a["metric"], "value": a["value"], "message": a["message"],
               "labels": a["labels"], "seq": a["seq"]}


def gap_rows(gaps: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for g in gaps:
        yield {"gateway": g["gateway"], "from_ts_ms": g["from_ts_ms"],
               "from_time": iso_time(g["from_ts_ms"]), "to_ts_ms": g["to_ts_ms"],
               "to_time": iso_time(g["to_ts_ms"]), "batches": g["batches"],
               "readings": g["readings"], "lane": g["lane"], "reason": g["reason"],
               "seqs": g["seqs"], "seq": g["seq"]}


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def write_text(rows: Iterable[dict[str, Any]], stream: TextIO, fmt: str,
               empty_header: list[str] | None = None) -> None:
    """Stream rows as ``json`` (one array), ``jsonl`` or ``csv`` (header from the first row)."""
    writer: Any = None
    first = True
    if fmt == "json":
        stream.write("[")
    for obj in rows:
        if fmt == "csv":
            if writer is None:
                writer = csv.writer(stream, lineterminator="\n")
                writer.writerow(list(obj))
            writer.writerow([_cell(v) for v in obj.values()])
        elif fmt == "jsonl":
            stream.write(json.dumps(obj) + "\n")
        else:
            stream.write(("\n" if first else ",\n") + json.dumps(obj))
        first = False
    if fmt == "csv" and writer is None and empty_header:
        csv.writer(stream, lineterminator="\n").writerow(empty_header)
    if fmt == "json":
        stream.write("]\n" if first else "\n]\n")
    stream.flush()


def write_parquet(rows: Iterable[dict[str, Any]], sink: str | Path | BinaryIO, *,
                  readings: bool) -> None:
    """Row groups of ``PARQUET_ROWS`` rows; readings get the fixed schema (module doc)."""
    import pyarrow as pa  # lazy: optional extra (edgegw[parquet])
    import pyarrow.parquet as pq  # lazy: optional extra (edgegw[parquet])

    schema = pa.schema([
        ("gateway", pa.string()), ("device", pa.string()), ("metric", pa.string()),
        ("time", pa.timestamp("ms", tz="UTC")), ("value", pa.float64()),
        ("value_text", pa.string()), ("quality", pa.string()),
    ])
    writer: Any = None
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal writer
        if not chunk:
            return
        if readings:
            table = pa.Table.from_pylist([_parquet_reading(r) for r in chunk], schema=schema)
        else:
            table = pa.Table.from_pylist([{k: _cell(v) for k, v in r.items()} for r in chunk])
        if writer is None:
            writer = pq.ParquetWriter(sink, table.schema)
        writer.write_table(table)
        chunk.clear()

    for r in rows:
        chunk.append(r)
        if len(chunk) >= PARQUET_ROWS:
            flush()
    flush()
    if writer is None:  # no rows: an empty file with the schema
        writer = pq.ParquetWriter(sink, schema if readings else pa.schema([]))
    writer.close()


def _parquet_reading(r: dict[str, Any]) -> dict[str, Any]:
    v = r["value"]
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 2**53
    flag = number or isinstance(v, bool)
    return {
        "gateway": r["gateway"], "device": r["device"], "metric": r["metric"],
        "time": r["ts_ms"],
        "value": float(v) if flag else None,
        "value_text": None if flag or v is None else (
            json.dumps(v) if isinstance(v, dict) else str(v)),
        "quality": r["quality"],
    }
