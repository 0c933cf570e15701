"""The health gate a freshly switched version runs before it commits itself.

Started by ``edgegw run`` when the launcher says this process is a trial (``EDGEGW_SLOTS`` set
and ``boot.json`` holds a trial for this very version). The gate passes when, after READY:

- the uplink (when enabled) is connected and the cloud has acknowledged at least one batch;
- every enabled device has been polled with a GOOD result at least once (push devices: their
  task is running);
- under a systemd watchdog, at least one WATCHDOG=1 ping was sent (a version whose pipeline
  stalls must not commit before the watchdog could notice).

Then ``launcher.commit`` makes this version the committed one. A device reporting
CONFIG_ERROR or UNAVAILABLE fails the gate at once: the trial is marked failed with that reason
and the daemon stops with exit status 1; the launcher then brings the previous slot back at the
next start (no network needed). A gate that is simply never met (cloud unreachable, device
silent) is ended by the launcher's guard at the trial deadline, with the same result.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from edgegw.ota import launcher

log = logging.getLogger("edgegw.ota.trial")

FATAL_DEVICE_STATES = ("CONFIG_ERROR", "UNAVAILABLE")


def running_version() -> str:
    """The version of the code running in this process (not whatever metadata is on sys.path)."""
    from edgegw import __version__

    return __version__


def active_trial() -> tuple[Path, str] | None:
    """(slots dir, version) when this process is the trial run of a new version."""
    slots = os.environ.get(launcher.ENV_SLOTS)
    if not slots:
        return None
    trial = launcher.read_boot(Path(slots)).get("trial")
    version = running_version()
    if trial and trial.get("version") == version and not trial.get("failed"):
        return Path(slots), version
    return None


def gate(gw: Any) -> tuple[bool, str]:
    """(passed, why not / fatal reason prefixed with 'fatal: ')."""
    health: dict[str, str] = gw.device_health()
    for dev, state in sorted(health.items()):
        if state.startswith("unavailable") or state in FATAL_DEVICE_STATES:
            return False, f"fatal: device {dev}: {state}"
    waiting = sorted(d for d, s in health.items() if s != "ok")
    if waiting:
        return False, f"devices not yet polled GOOD: {', '.join(waiting[:5])}"
    from edgegw.runtime.sdnotify import watchdog_interval

    if watchdog_interval() is not None and not getattr(gw, "watchdog_pings", 0):
        return False, "no watchdog ping sent yet"
    st = gw.uplink_stats()
    if st is not None:
        if not st.get("connected"):
            return False, "uplink not connected"
        if not st.get("acks_received") and health:
            return False, "no batch acknowledged by the cloud yet"
    return True, ""


async def run_trial(gw: Any, slots: Path, version: str, stop: asyncio.Event) -> int:
    """Poll the gate until it passes (commit, return 0) or fails fatally (return 1)."""
    log.info("trial of %s: waiting for the health gate", version)
    why = ""
    while not stop.is_set():
        ok, why = gate(gw)
        if ok:
            if launcher.commit(slots, version):
                log.info("trial of %s passed its health gate: committed", version)
            return 0
        if why.startswith("fatal: "):
            reason = why[len("fatal: ") :]
            launcher.fail_trial(slots, version, reason)
            log.error("trial of %s failed its health gate: %s; stopping for rollback", version, why)
            stop.set()
            return 1
        await asyncio.sleep(0.25)
    log.info("trial of %s interrupted (%s)", version, why)
    return 0
