"""``edgegw-cloud query``: stored readings, alerts or gaps as JSON, JSON lines, CSV or Parquet.

Filters: gateway, device, metric, time range ``[since, until)``. Times accept ISO-8601
(``2024-05-01T12:00:00Z``; no zone = UTC), epoch milliseconds (``1714564800000``), ``now`` or a
relative offset from now (``-10m``, ``-2h``, ``-1d``, ``-30s``, ``-500ms``).

Output is streamed row by row (a large range never has to fit in memory). ``json`` prints one
valid JSON array, ``jsonl`` one object per line, ``csv`` a header then rows. Blob values (camera
snapshots) print as ``{"blob_sha256": ..., "size": ...}``; ``--blob-out DIR`` also writes them out.
``parquet`` (needs pyarrow: ``pip install 'edgegw[parquet]'``) writes row groups of
``PARQUET_ROWS`` readings with a fixed schema (time as timestamp[ms, UTC], numeric values as
float64 in ``value``, anything else as text in ``value_text``) to ``--output`` or to stdout when it
is not a terminal. ``--what alerts|gaps`` exports those instead of readings.
A closed pipe (``| head``) ends the output quietly.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from edgegw.model import Quality

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


PARQUET_ROWS = 65_536
READING_COLUMNS = ["gateway", "device", "metric", "ts_ms", "time", "value", "quality"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="read this store instead of DATA/store.db (postgresql://USER@HOST/DB)",
    )
    parser.add_argument(
        "--what",
        choices=("readings", "alerts", "gaps"),
        default="readings",
        help="readings (default); alerts: every raise/clear event; gaps: what gateways dropped",
    )
    parser.add_argument("--gateway", help="only this gateway id")
    parser.add_argument("--device", help="only this device id (readings)")
    parser.add_argument("--metric", help="only this metric (readings)")
    parser.add_argument(
        "--since", help="start (inclusive): ISO-8601, epoch ms, now, or relative: -10m, -2h, -1d"
    )
    parser.add_argument("--until", help="end (exclusive), same forms as --since")
    parser.add_argument(
        "--format",
        choices=("json", "jsonl", "csv", "parquet"),
        default="json",
        help="json (one array), jsonl (one object per line), csv (header + rows), parquet "
        "(needs pyarrow; to --output or a pipe)",
    )
    parser.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    parser.add_argument("--limit", type=int, help="at most this many rows")
    parser.add_argument("--blob-out", type=Path, help="write blob values (snapshots) here")


def _quality(q: int) -> str:
    try:
        return Quality(q).label
    except ValueError:
        return str(q)


def _iso(ts_ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _error(message: str) -> int:
    print(f"edgegw-cloud query: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Write the matching rows; 0 on success, 2 on a usage error (message on stderr)."""
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except TimeSpecError as exc:
        return _error(str(exc))
    if since is not None and until is not None and until <= since:
        return _error(f"--until ({_iso(until)}) must be after --since ({_iso(since)})")
    if args.limit is not None and args.limit < 0:
        return _error("--limit must be >= 0")
    fmt = args.format
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return _error("--format parquet needs pyarrow: pip install 'edgegw[parquet]'")
        if args.output is None and out is None and sys.stdout.isatty():
            return _error("--format parquet is binary: give --output FILE or pipe it")
    from edgegw_cloud.stores import open_store

    target = args.store or Path(args.data_dir) / "store.db"
    try:
        store = open_store(target, readonly=True)
    except (FileNotFoundError, ConnectionError) as exc:
        return _error(str(exc))
    blob_out: Path | None = args.blob_out
    if blob_out is not None:
        blob_out.mkdir(parents=True, exist_ok=True)
    opened: Any = None
    try:
        if args.what == "readings":
            rows: Iterable[dict[str, Any]] = _readings(store, args, since, until, blob_out)
        elif args.what == "alerts":
            rows = _alerts(store, args, since, until)
        else:
            rows = _gaps(store, args, since, until)
        if fmt == "parquet":
            sink: Any = args.output if args.output is not None else (
                out if out is not None else sys.stdout.buffer)
            _write_parquet(rows, sink, readings=args.what == "readings")
        else:
            if args.output is not None:
                opened = open(args.output, "w", newline="")  # noqa: SIM115 - closed below
            stream = opened or (out if out is not None else sys.stdout)
            _write_text(rows, stream, fmt)
    finally:
        store.close()
        if opened is not None:
            opened.close()
    return 0


def _readings(store: Any, args: argparse.Namespace, since: int | None, until: int | None,
              blob_out: Path | None) -> Iterator[dict[str, Any]]:
    for r in store.readings(gateway=args.gateway, device=args.device, metric=args.metric,
                            since_ms=since, until_ms=until, limit=args.limit):
        value = r.value
        if isinstance(value, dict) and blob_out is not None:
            data = store.blob(str(value["blob_sha256"]))
            if data is not None:
                (blob_out / str(value["blob_sha256"])).write_bytes(data)
        yield {"gateway": r.gateway, "device": r.device, "metric": r.metric, "ts_ms": r.ts_ms,
               "time": _iso(r.ts_ms), "value": value, "quality": _quality(r.quality)}


def _alerts(store: Any, args: argparse.Namespace, since: int | None, until: int | None
            ) -> Iterator[dict[str, Any]]:
    for a in store.alert_events(gateway=args.gateway, since_ms=since, until_ms=until,
                                limit=args.limit if args.limit is not None else 10**9):
        if args.device is not None and a["device"] != args.device:
            continue
        yield {"gateway": a["gateway"], "rule": a["rule"], "device": a["device"],
               "ts_ms": a["ts_ms"], "time": _iso(a["ts_ms"]),
               "state": "active" if a["active"] else "cleared", "severity": a["severity"],
               "metric": a["metric"], "value": a["value"], "message": a["message"],
               "labels": a["labels"], "seq": a["seq"]}


def _gaps(store: Any, args: argparse.Namespace, since: int | None, until: int | None
          ) -> Iterator[dict[str, Any]]:
    for g in store.gap_records(gateway=args.gateway, since_ms=since, until_ms=until,
                               limit=args.limit if args.limit is not None else 10**9):
        yield {"gateway": g["gateway"], "from_ts_ms": g["from_ts_ms"],
               "from_time": _iso(g["from_ts_ms"]), "to_ts_ms": g["to_ts_ms"],
               "to_time": _iso(g["to_ts_ms"]), "batches": g["batches"],
               "readings": g["readings"], "lane": g["lane"], "reason": g["reason"],
               "seqs": g["seqs"], "seq": g["seq"]}


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def _write_text(rows: Iterable[dict[str, Any]], stream: TextIO, fmt: str) -> None:
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
    if fmt == "csv" and writer is None:  # no rows: still the header for readings
        csv.writer(stream, lineterminator="\n").writerow(READING_COLUMNS)
    if fmt == "json":
        stream.write("]\n" if first else "\n]\n")
    stream.flush()


def _write_parquet(rows: Iterable[dict[str, Any]], sink: Any, *, readings: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if readings:
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
    return {
        "gateway": r["gateway"], "device": r["device"], "metric": r["metric"],
        "time": r["ts_ms"],
        "value": float(v) if number or isinstance(v, bool) else None,
        "value_text": None if number or isinstance(v, bool) or v is None else (
            json.dumps(v) if isinstance(v, dict) else str(v)),
        "quality": r["quality"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgegw-cloud query", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
