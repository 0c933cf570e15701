"""Print stored readings as JSON/CSV for any gateway/device/metric/time range.

Filters: gateway, device, metric, time range ``[since, until)``. Times accept ISO-8601
(``2024-05-01T12:00:00Z``; no zone = UTC), epoch milliseconds (``1714564800000``), ``now`` or a
relative offset from now (``-10m``, ``-2h``, ``-1d``, ``-30s``, ``-500ms``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from edgegw_cloud.query import TimeSpecError, iso_time, parse_time, write_readings
from edgegw_cloud.store import CloudStore

HELP = "print stored readings as JSON/CSV"


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
            f"edgegw-cloud query: --until ({iso_time(until)}) must be after "
            f"--since ({iso_time(since)})",
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
        write_readings(store, rows, args.format, stream, blob_out)
    finally:
        store.close()
    return 0


