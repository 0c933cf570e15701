"""Stored readings, alerts or gaps of any gateway/device/metric/time range, for people and tools.

Times accept ISO-8601 (``2024-05-01T12:00:00Z``; no zone = UTC), epoch milliseconds, ``now`` or a
relative offset from now (``-10m``, ``-2h``, ``-1d``, ``-30s``, ``-500ms``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, TextIO

from edgegw_cloud.apiclient import ApiClient, ApiError
from edgegw_cloud.commands import add_api_arguments
from edgegw_cloud.query import (
    READING_COLUMNS,
    TimeSpecError,
    alert_rows,
    gap_rows,
    iso_time,
    parse_time,
    reading_rows,
    write_parquet,
    write_text,
)
from edgegw_cloud.store import StoredReading
from edgegw_cloud.stores import open_store

HELP = "stored readings, alerts or gaps as JSON, JSON lines, CSV or Parquet"
DESCRIPTION = """\
Print (or write with --output) stored readings, alerts (every raise/clear) or gaps (what
gateways dropped) for any gateway/device/metric/time range. Times: ISO-8601
(2024-05-01T12:00:00Z), epoch milliseconds, now, or relative to now (-10m, -2h, -1d).
Formats: json, jsonl, csv, parquet (needs pyarrow: pip install 'edgegw[parquet]')."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="cloud data directory (or --api)")
    add_api_arguments(parser)
    parser.add_argument(
        "--store", metavar="URL",
        help="read this store instead of DATA/store.db (postgresql://USER@HOST/DB)",
    )
    parser.add_argument(
        "--what", choices=("readings", "alerts", "gaps"), default="readings",
        help="readings (default); alerts: every raise/clear event; gaps: what gateways dropped",
    )
    parser.add_argument("--gateway", help="only this gateway id")
    parser.add_argument("--device", help="only this device id (readings, alerts)")
    parser.add_argument("--metric", help="only this metric (readings)")
    parser.add_argument(
        "--since", help="start (inclusive): ISO-8601, epoch ms, now, or relative: -10m, -2h, -1d"
    )
    parser.add_argument("--until", help="end (exclusive), same forms as --since")
    parser.add_argument(
        "--format", choices=("json", "jsonl", "csv", "parquet"), default="json",
        help="json (one array), jsonl (one object per line), csv (header + rows), parquet "
        "(needs pyarrow; to --output or a pipe)",
    )
    parser.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")
    parser.add_argument("--limit", type=int, help="at most this many rows")
    parser.add_argument("--blob-out", type=Path, help="write blob values (snapshots) here")


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
        return _error(f"--until ({iso_time(until)}) must be after --since ({iso_time(since)})")
    if args.limit is not None and args.limit < 0:
        return _error("--limit must be >= 0")
    what = getattr(args, "what", "readings")
    fmt = args.format
    output: Path | None = getattr(args, "output", None)
    if fmt == "parquet":
        if importlib.util.find_spec("pyarrow") is None:
            return _error("--format parquet needs pyarrow: pip install 'edgegw[parquet]'")
        if output is None and out is None and sys.stdout.isatty():
            return _error("--format parquet is binary: give --output FILE or pipe it")
    if getattr(args, "api", None):
        return _run_api(args, since, until, out)
    if args.data_dir is None:
        return _error("give --data-dir DIR (this machine's cloud) or --api https://HOST:PORT")
    target = getattr(args, "store", None) or Path(args.data_dir) / "store.db"
    try:
        store = open_store(target, readonly=True)
    except (FileNotFoundError, ConnectionError) as exc:
        return _error(str(exc))
    blob_out: Path | None = args.blob_out
    if blob_out is not None:
        blob_out.mkdir(parents=True, exist_ok=True)
    limit = args.limit if args.limit is not None else 10**9
    opened: Any = None
    try:
        if what == "readings":
            rows: Any = reading_rows(store, store.readings(
                gateway=args.gateway, device=args.device, metric=args.metric,
                since_ms=since, until_ms=until, limit=args.limit), blob_out)
        elif what == "alerts":
            rows = alert_rows(store.alert_events(gateway=args.gateway, since_ms=since,
                                                 until_ms=until, limit=limit), args.device)
        else:
            rows = gap_rows(store.gap_records(gateway=args.gateway, since_ms=since,
                                              until_ms=until, limit=limit))
        if fmt == "parquet":
            sink: Any = output if output is not None else (
                out if out is not None else sys.stdout.buffer)
            write_parquet(rows, sink, readings=what == "readings")
        else:
            if output is not None:
                opened = open(output, "w", newline="")  # noqa: SIM115 - closed below
            stream = opened or (out if out is not None else sys.stdout)
            write_text(rows, stream, fmt, READING_COLUMNS if what == "readings" else None)
    finally:
        store.close()
        if opened is not None:
            opened.close()
    return 0


def _run_api(args: argparse.Namespace, since: int | None, until: int | None,
             out: TextIO | None) -> int:
    """The same export through the HTTP API of a cloud on another machine."""
    try:
        api = ApiClient.from_args(args.api, args.api_token_file, args.ca)
        limit = args.limit if args.limit is not None else 100_000
        if args.what == "readings":
            if not args.gateway:
                return _error("with --api, readings need --gateway GW")
            got = api.get(f"/api/v1/gateways/{args.gateway}/readings", device=args.device,
                          metric=args.metric, since=since, until=until, limit=limit)
            rows: Any = reading_rows(None, (StoredReading(args.gateway, r["device"], r["metric"],
                                                          r["ts_ms"], r["value"], r["quality"],
                                                          r["seq"]) for r in got))
        elif args.what == "alerts":
            rows = alert_rows(api.get("/api/v1/alerts/events", gateway=args.gateway,
                                      since=since, until=until, limit=limit), args.device)
        else:
            rows = gap_rows(api.get("/api/v1/gaps", gateway=args.gateway, since=since,
                                    until=until, limit=limit))
    except ApiError as exc:
        print(f"edgegw-cloud query: {exc}", file=sys.stderr)
        return 1
    if args.format == "parquet":
        sink: Any = args.output if args.output is not None else (
            out if out is not None else sys.stdout.buffer)
        write_parquet(rows, sink, readings=args.what == "readings")
        return 0
    if args.output is not None:
        with open(args.output, "w", newline="") as f:
            write_text(rows, f, args.format, READING_COLUMNS if args.what == "readings" else None)
        return 0
    write_text(rows, out if out is not None else sys.stdout, args.format,
               READING_COLUMNS if args.what == "readings" else None)
    return 0
