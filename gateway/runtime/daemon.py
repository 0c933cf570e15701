"""`edgegw run`: the gateway daemon's process lifecycle (uvicorn-style).

SIGTERM/SIGINT start a graceful shutdown (drivers stopped, pending readings sealed into the outbox,
outbox closed) bounded by ``--shutdown-timeout``; a second signal forces exit at once. The
config is checked completely before anything starts; a bad config exits 2 with every issue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("edgegw.daemon")


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


def load(config: Path) -> tuple[Any, Any]:
    """Load and check the config; exit 2 printing every issue when it is not valid."""
    from edgegw.config import ConfigError, check_loaded, drivers_from_registry, load_config
    from edgegw.sdk import discover_drivers, driver_names

    try:
        cfg = load_config(config)
        used = {d.driver for d in cfg.devices}
        # Import only the drivers the config uses (resident memory); a misspelt name still
        # gets its did-you-mean from the full list when it is not installed at all.
        drivers = discover_drivers(only=used if used <= set(driver_names()) else None)
        ok, broken = drivers_from_registry(drivers)
        # A broken plugin is a warning: only its own devices become unavailable.
        cfg = check_loaded(cfg, ok, unavailable=broken)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, drivers


async def serve(
    cfg: Any, drivers: Any, duration: float | None, shutdown_timeout: float, drain: float = 0.0
) -> int:
    from edgegw.runtime.supervisor import Gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.error("second signal %s: exiting without a clean shutdown", signum)
            os._exit(1)
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    gw = Gateway(cfg, drivers)
    try:
        await gw.start()
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        else:
            await stop.wait()
    finally:
        try:
            await asyncio.wait_for(gw.stop(drain), shutdown_timeout + drain)
        except TimeoutError:
            log.error("clean shutdown took longer than %.0f s; exiting", shutdown_timeout)
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    cfg, drivers = load(args.config)
    # --log-level / -v on the command line win; otherwise gateway.log_level from the config.
    explicit = getattr(args, "log_level", None) or getattr(args, "verbose", 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not explicit:
        logging.getLogger().setLevel(str(cfg.gateway.log_level).upper())
    from edgegw.logfmt import quiet_libraries  # APScheduler's per-job INFO lines

    quiet_libraries(logging.getLogger().getEffectiveLevel())
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # pymodbus logs every timeout at ERROR; our poller reports it once per health flip.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return asyncio.run(
        serve(cfg, drivers, args.duration, args.shutdown_timeout, args.drain_timeout)
    )
