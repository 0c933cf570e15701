"""Run the gateway daemon (lifecycle in ``edgegw.runtime.daemon``).

SIGTERM/SIGINT start a graceful shutdown (drivers stopped, pending and held readings sealed into
the outbox, outbox closed) bounded by ``--shutdown-timeout``; a second signal forces exit at once.
The config is checked completely before anything starts; a bad config exits 2 with every issue.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from edgegw.protocol.logfmt import quiet_libraries
from edgegw.protocol.logthrottle import install as throttle_repeated_logs
from edgegw.runtime.daemon import load, reexec_if_requested, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, type=Path, help="gateway YAML file")
    parser.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this many seconds (demos, tests)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on shutdown, wait up to this long for the uplink to deliver the outbox",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="bound on the clean shutdown (added to --drain-timeout)",
    )


def run(args: argparse.Namespace) -> int:
    cfg, drivers = load(args.config)
    # --log-level / -v on the command line win; otherwise gateway.log_level from the config.
    explicit = getattr(args, "log_level", None) or getattr(args, "verbose", 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not explicit:
        logging.getLogger().setLevel(str(cfg.gateway.log_level).upper())
    quiet_libraries(logging.getLogger().getEffectiveLevel())  # APScheduler's per-job INFO
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # pymodbus logs every timeout at ERROR; our poller reports it once per health flip.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # a fault that repeats (dead device, full disk) logs its first WARNING/ERROR line, then one
    # summary with the count per minute (issue 9 #10: 841 ERROR lines in 20 s before)
    repeats = throttle_repeated_logs()
    try:
        rc = asyncio.run(
            serve(cfg, drivers, args.duration, args.shutdown_timeout, args.drain_timeout)
        )
    finally:
        repeats.close()
    if rc == 0:
        reexec_if_requested()  # the `restart` command
    return rc
