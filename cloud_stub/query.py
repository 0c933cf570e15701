"""``edgegw-cloud query``: print stored readings as JSON or CSV.

Filters: gateway, device, metric, time range ``[since, until)``. Times accept ISO-8601
(``2024-05-01T12:00:00Z``; no zone = UTC), epoch milliseconds (``1714564800000``), ``now`` or a
relative offset from now (``-10m``, ``-2h``, ``-1d``, ``-30s``, ``-500ms``).

Output is streamed row by row (a large range never has to fit in memory). ``json`` prints one
valid JSON array, ``jsonl`` one object per line, ``csv`` a header then rows. Blob values (camera
snapshots) print as ``{"blob_sha256": ..., "size": ...}``; ``--blob-out DIR`` also writes them out.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edgegw.model import Quality
from edgegw_cloud.store import CloudStore

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")
    parser.add_argument("--gateway", help="only this gateway id")
    parser.add_argument("--device", help="only this device id")
    parser.add_argument("--metric", help="only this metric")
    parser.add_argument("--since", help="start (inclusive): ISO-8601, epoch ms, now, -10m")
    parser.add_argument("--until", help="end (exclusive): ISO-8601, epoch ms, now, -10m")
    parser.add_argument("--format", choices=("json", "jsonl", "csv"), default="json")
    parser.add_argument("--limit", type=int, help="at most this many readings")
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


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the matching readings; 0 on success, 2 on a usage error (message on stderr)."""
    stream = out if out is not None else sys.stdout
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except TimeSpecError as exc:
        print(f"edgegw-cloud query: {exc}", file=sys.stderr)
        return 2
    if since is not None and until is not None and until <= since:
        print(
            f"edgegw-cloud query: --until ({_iso(until)}) must be after --since ({_iso(since)})",
            file=sys.stderr,
        )
        return 2
    if args.limit is not None and args.limit < 0:
        print("edgegw-cloud query: --limit must be >= 0", file=sys.stderr)
        return 2
    try:
        store = CloudStore(Path(args.data_dir) / "store.db", readonly=True)
    except FileNotFoundError as exc:
        print(f"edgegw-cloud query: {exc}", file=sys.stderr)
        return 2
    blob_out: Path | None = args.blob_out
    if blob_out is not None:
        blob_out.mkdir(parents=True, exist_ok=True)
    try:
        rows = store.readings(
            gateway=args.gateway, device=args.device, metric=args.metric,
            since_ms=since, until_ms=until, limit=args.limit,
        )
        writer: Any = None
        first = True
        if args.format == "csv":
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["gateway", "device", "metric", "ts_ms", "time", "value", "quality"])
        elif args.format == "json":
            stream.write("[")
        for r in rows:
            value = r.value
            if isinstance(value, dict) and blob_out is not None:
                data = store.blob(str(value["blob_sha256"]))
                if data is not None:
                    (blob_out / str(value["blob_sha256"])).write_bytes(data)
            if writer is not None:
                cell = json.dumps(value) if isinstance(value, dict) else value
                writer.writerow([r.gateway, r.device, r.metric, r.ts_ms, _iso(r.ts_ms), cell,
                                 _quality(r.quality)])
                continue
            obj = {"gateway": r.gateway, "device": r.device, "metric": r.metric,
                   "ts_ms": r.ts_ms, "time": _iso(r.ts_ms), "value": value,
                   "quality": _quality(r.quality)}
            if args.format == "jsonl":
                stream.write(json.dumps(obj) + "\n")
            else:
                stream.write(("\n" if first else ",\n") + json.dumps(obj))
            first = False
        if args.format == "json":
            stream.write("]\n" if first else "\n]\n")
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgegw-cloud query", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
