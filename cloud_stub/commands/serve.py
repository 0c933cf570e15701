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
from edgegw_cloud.server import serve

HELP = "run the broker, enrollment service and ingest"
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
    parser.add_argument("--port", type=int, default=8883,
                        help="managed broker: the gateway listener (gateways' uplink.broker)")
    parser.add_argument("--enroll-port", type=int, default=None,
                        help="managed broker: the enrollment/service listener (default: "
                        "--port + 1)")
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
    return serve(
        data,
        port=args.port,
        enroll_port=args.enroll_port,
        broker_url=args.broker,
        stop=stop,
        ingest=not args.no_ingest,
        ingest_processes=args.ingest_processes,
        ingest_stats_dir=args.ingest_stats_dir,
    )
