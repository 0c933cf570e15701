"""Run the broker, the enrollment service and the ingest (logic in ``edgegw_cloud.server``).

Prints ``serving mqtts://HOST:PORT`` (the gateway listener) and ``enrollment mqtts://HOST:PORT``
(the service listener) once ready; SIGINT/SIGTERM stop it cleanly, a second
signal forces exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.ingest import tune_gc
from edgegw_cloud.server import serve

HELP = "run the broker, enrollment service and ingest (and the dashboard with --http)"
DESCRIPTION = """\
Run the cloud: the MQTT broker gateways deliver to (mutual TLS), the enrollment service, the
ingest into the store, and with --http the dashboard and JSON API. Prints `serving URL` when
ready; Ctrl-C or SIGTERM stops it cleanly. See docs/operator-guide.md for a two-machine set-up."""
log = logging.getLogger("edgegw.cloud")


class _Signals:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(130)  # second signal: force
        log.info("signal %d: stopping", signum)
        self.stop.set()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the broker listens on for gateways (both its listeners: --port for "
        "gateways, --enroll-port for enrollment): an address of this host (e.g. 192.0.2.10) or "
        "0.0.0.0 / :: for all; the cloud's own services always use 127.0.0.1 (default: "
        "127.0.0.1, this machine only)",
    )
    parser.add_argument("--port", type=int, default=8883,
                        help="managed broker: the gateway listener (gateways' uplink.broker)")
    parser.add_argument("--enroll-port", type=int, default=None,
                        help="managed broker: the enrollment/service listener (default: "
                        "--port + 1)")
    parser.add_argument(
        "--http",
        metavar="ADDR:PORT",
        help="also serve the dashboard and the JSON API (HTTPS, the broker's certificate) on "
        "ADDR:PORT, e.g. 0.0.0.0:8443; needs an account (`user add`) or an API token "
        "(`api-token create`). Off unless given",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep the data in PostgreSQL (postgresql://USER@HOST:PORT/DB; the tables are "
        "created on first start, TimescaleDB hypertable when the extension is there) instead "
        "of DATA/store.db (SQLite, the default)",
    )
    parser.add_argument(
        "--forward",
        action="append",
        metavar="URL",
        help="also hand every newly stored reading to this sink (repeatable): "
        "mqtt://HOST:PORT/PREFIX (JSON per metric topic), influx+udp://HOST:PORT, "
        "influx+tcp://HOST:PORT, influx+file:///PATH (InfluxDB line protocol); best effort, "
        "drops counted (the store stays the source of truth)",
    )
    parser.add_argument("--broker", help="use this external broker (mqtts://HOST:PORT) instead")
    parser.add_argument("--no-ingest", action="store_true", help="broker + enrollment only")
    parser.add_argument(
        "--ingest-processes",
        type=int,
        default=0,
        metavar="N",
        help="run the ingest as N processes on the shared subscription (default: a thread)",
    )
    parser.add_argument(
        "--ingest-stats-dir",
        type=Path,
        default=None,
        help="with --ingest-processes: each process writes its final counters here as JSON",
    )


def run(args: argparse.Namespace) -> int:
    data = paths(args)
    stop = threading.Event()
    handler = _Signals(stop)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if not args.no_ingest and not args.ingest_processes:
        tune_gc()  # the ingest runs in this process (a thread): ingest_processes tune their own
    return serve(
        data,
        port=args.port,
        enroll_port=args.enroll_port,
        listen=args.listen,
        http=args.http,
        store=args.store,
        forward=tuple(args.forward or ()),
        broker_url=args.broker,
        stop=stop,
        ingest=not args.no_ingest,
        ingest_processes=args.ingest_processes,
        ingest_stats_dir=args.ingest_stats_dir,
    )
