"""The gateway daemon's process lifecycle (uvicorn-style), behind ``edgegw run``.

SIGTERM/SIGINT start a graceful shutdown (drivers stopped, pending and held readings sealed into
the outbox, outbox closed) bounded by ``--shutdown-timeout``; a second signal forces exit at
once. The config is checked completely before anything starts; a bad config exits 2 with every
issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from edgegw.config import (
    ConfigError,
    GatewayConfig,
    check_loaded,
    drivers_from_registry,
    load_config,
)
from edgegw.device.config_apply import ConfigApply
from edgegw.ota.trial import active_trial, run_trial
from edgegw.runtime.supervisor import Gateway
from edgegw.sdk import DriverEntry, discover_drivers, driver_names

log = logging.getLogger("edgegw.daemon")


class Restart:
    """Set by the ``restart`` command: after the clean stop, the process re-executes itself."""

    requested = False


def reexec_if_requested() -> None:
    if Restart.requested:
        log.info("restarting (requested by a cloud command)")
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "edgegw.cli", *sys.argv[1:]])


def load(config: Path) -> tuple[GatewayConfig, dict[str, DriverEntry]]:
    """Load and check the config; exit 2 printing every issue when it is not valid.

    A remotely pushed config that was never confirmed (or was cut off while installing) is
    reverted first, before it is read (commit-confirmed, docs/device-management.md)."""
    if ConfigApply(config).recover() == "reverted":
        log.warning("%s: an unconfirmed remote configuration was reverted at start", config)
    try:
        cfg = load_config(config)
        used = {d.driver for d in cfg.devices}
        # Import only the drivers the config uses (resident memory); a misspelt name still
        # gets its did-you-mean from the full list when it is not installed at all.
        drivers = discover_drivers(only=used if used <= set(driver_names()) else None)
        ok, broken = drivers_from_registry(drivers)
        # A broken plugin is a warning: only its own devices become unavailable.
        cfg = check_loaded(cfg, ok, unavailable=broken)
        cfg.release_source()  # resident memory: only the check reads it
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, drivers


async def serve(
    cfg: GatewayConfig,
    drivers: Mapping[str, DriverEntry],
    duration: float | None,
    shutdown_timeout: float,
    drain: float = 0.0,
) -> int:
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

    def request_restart() -> None:
        Restart.requested = True
        loop.call_later(0.5, stop.set)  # let the command's result reach the cloud first

    gw.request_restart = request_restart  # type: ignore[attr-defined]

    def request_exit(why: str) -> None:
        """OTA: a clean stop, exit status 0; the launcher (systemd Restart=always) starts the
        new slot's trial. Not a re-exec: the launcher must decide which slot runs."""
        log.warning("stopping for %s (the service manager starts the launcher again)", why)
        loop.call_later(0.5, stop.set)  # let the `trial` state reach the cloud first

    gw.request_exit = request_exit  # type: ignore[attr-defined]
    trial_rc: asyncio.Task[int] | None = None
    try:
        await gw.start()
        trial_rc = _start_trial(gw, stop)
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
    if trial_rc is not None:
        if not trial_rc.done():
            trial_rc.cancel()
            return 0
        return trial_rc.result()
    return 0


def _start_trial(gw: Gateway, stop: asyncio.Event) -> asyncio.Task[int] | None:
    """The OTA health gate, when the launcher started this version on trial."""
    trial = active_trial()
    if trial is None:
        return None
    return asyncio.create_task(run_trial(gw, trial[0], trial[1], stop), name="ota-trial")
