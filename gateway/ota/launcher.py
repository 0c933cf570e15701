#!/usr/bin/env python3
"""edgegw-launch: the gateway's "bootloader" between systemd and the versioned slots.

Standard library only, and installed by the installer as a root-owned copy outside the slots
(``/opt/edgegw/bin/edgegw-launch``), so no update can break or replace it. systemd's ExecStart
runs it; it decides which slot runs and then ``exec``s that slot's ``edgegw run`` (same pid, so
Type=notify, NotifyAccess=main and the watchdog see the daemon itself).

Layout under the slots dir (``/opt/edgegw/slots``, writable by the service user)::

    <version>/            one virtualenv per installed version (``.incomplete`` while installing)
    current -> <version>  the slot the launcher runs (it rewrites the link itself, atomically)
    boot.json             {"committed": V, "trial": {...} | null, "last_result": {...}}

Boot protocol (the boot counter of a bootloader):
- No trial: run ``committed``.
- A trial ``{"version", "attempts", "max_attempts", "deadline_s", "failed"}``: if it was marked
  failed (health gate said no, or the guard's deadline passed) or ``attempts >= max_attempts``
  (crash loop, hang before READY killed by TimeoutStartSec, watchdog kills - every start counts),
  roll back: ``current`` -> committed, trial cleared, ``last_result`` = rolled_back with reason.
  Otherwise increment ``attempts`` and fsync BEFORE the new version starts, then fork a guard
  that marks the trial failed and stops the service when the health gate has not committed it
  within ``deadline_s`` (the next start then rolls back).
- The daemon of the trial version commits by ``commit()`` once its health gate passed.

Invariants: boot.json is replaced atomically (write, fsync, rename, fsync dir); the committed
slot is never deleted while a trial runs; every decision is logged to stderr (the journal).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

BOOT_FILE = "boot.json"
CURRENT = "current"
INCOMPLETE = ".incomplete"
ENV_SLOTS = "EDGEGW_SLOTS"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_DEADLINE_S = 300.0


def _log(msg: str) -> None:
    print(f"edgegw-launch: {msg}", file=sys.stderr, flush=True)


def read_boot(slots: Path) -> dict[str, Any]:
    try:
        doc = json.loads((slots / BOOT_FILE).read_text())
    except FileNotFoundError:
        return {"committed": None, "trial": None, "last_result": None}
    except (OSError, ValueError) as exc:
        # A torn file cannot happen (atomic replace); a corrupt one must not brick the gateway.
        _log(f"{slots / BOOT_FILE} unreadable ({exc}); falling back to the current link")
        return {"committed": None, "trial": None, "last_result": None}
    return doc if isinstance(doc, dict) else {"committed": None, "trial": None}


def write_boot(slots: Path, doc: dict[str, Any]) -> None:
    tmp = slots / f"{BOOT_FILE}.tmp"
    with tmp.open("w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, slots / BOOT_FILE)
    fd = os.open(slots, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def point_current(slots: Path, version: str) -> None:
    link = slots / CURRENT
    with contextlib.suppress(OSError):
        if os.readlink(link) == version:
            return
    tmp = slots / f".{CURRENT}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(version, tmp)
    os.replace(tmp, link)  # rename(2): atomic
    fd = os.open(slots, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_version(slots: Path) -> str | None:
    try:
        return os.readlink(slots / CURRENT)
    except OSError:
        return None


def slot_ok(slots: Path, version: str | None) -> bool:
    if not version:
        return False
    d = slots / version
    return (d / "bin" / "edgegw").exists() and not (d / INCOMPLETE).exists()


def begin_trial(
    slots: Path,
    version: str,
    *,
    release: str = "",
    serial: int = 0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> None:
    """Called by the updater after the slot is complete: the next start runs ``version``."""
    doc = read_boot(slots)
    if not doc.get("committed"):
        doc["committed"] = current_version(slots)
    # the replay mark is set with the trial, in one atomic write: an install killed before this
    # point can be retried with the same offer; one that got this far cannot be replayed
    doc["accepted_serial"] = max(int(doc.get("accepted_serial") or 0), serial)
    doc["trial"] = {
        "version": version,
        "release": release,
        "attempts": 0,
        "max_attempts": max_attempts,
        "deadline_s": deadline_s,
        "failed": None,
        "started_ms": int(time.time() * 1000),
    }
    write_boot(slots, doc)


def commit(slots: Path, version: str) -> bool:
    """The trial version passed its health gate: it becomes the committed version."""
    doc = read_boot(slots)
    trial = doc.get("trial")
    if not trial or trial.get("version") != version or trial.get("failed"):
        return False
    previous = doc.get("committed")
    doc["committed"] = version
    doc["previous"] = previous
    doc["trial"] = None
    doc["last_result"] = {
        "release": trial.get("release", ""),
        "version": version,
        "state": "committed",
        "reason": "",
        "ms": int(time.time() * 1000),
    }
    write_boot(slots, doc)
    return True


def fail_trial(slots: Path, version: str, reason: str) -> bool:
    doc = read_boot(slots)
    trial = doc.get("trial")
    if not trial or trial.get("version") != version or trial.get("failed"):
        return False
    trial["failed"] = reason
    write_boot(slots, doc)
    return True


def decide(slots: Path) -> str:
    """Apply the boot protocol; returns the version to run (and points ``current`` at it)."""
    doc = read_boot(slots)
    trial = doc.get("trial")
    committed = doc.get("committed") or current_version(slots)
    if trial:
        version = trial.get("version")
        reason = trial.get("failed")
        if not reason and int(trial.get("attempts", 0)) >= int(trial.get("max_attempts", 1)):
            reason = (
                f"did not pass its health gate in {trial.get('attempts')} start(s) "
                "(crash, hang before READY or watchdog)"
            )
        if not reason and not slot_ok(slots, version):
            reason = f"slot {version} is incomplete or missing"
        if reason:
            _log(f"rolling back {version} -> {committed}: {reason}")
            if committed and slot_ok(slots, committed):
                # ``current`` first: whoever reads the rollback in boot.json (the agent, the
                # status command) then finds the committed version current. A crash between
                # the two leaves the trial recorded and this branch runs again.
                point_current(slots, committed)
            doc["trial"] = None
            doc["last_result"] = {
                "release": trial.get("release", ""),
                "version": version,
                "state": "rolled_back",
                "reason": str(reason),
                "ms": int(time.time() * 1000),
            }
            doc["committed"] = committed
            write_boot(slots, doc)
        else:
            trial["attempts"] = int(trial.get("attempts", 0)) + 1
            doc["trial"] = trial
            doc["committed"] = committed
            write_boot(slots, doc)  # counted before the new version runs a single instruction
            _log(f"trial of {version}: start {trial['attempts']}/{trial.get('max_attempts')}")
            point_current(slots, str(version))
            return str(version)
    if not committed or not slot_ok(slots, committed):
        raise SystemExit(f"edgegw-launch: no usable slot in {slots} (committed={committed!r})")
    point_current(slots, committed)
    return str(committed)


def _guard(slots: Path, version: str, deadline_s: float, main_pid: int) -> None:
    """Forked child: stop the service if the trial is still uncommitted at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.05, end - time.monotonic())))
        if os.getppid() != main_pid:
            os._exit(0)  # the daemon is gone: nothing to guard
        trial = read_boot(slots).get("trial")
        if not trial or trial.get("version") != version:
            os._exit(0)  # committed (or rolled back)
        if trial.get("failed"):
            break
    if fail_trial(slots, version, f"health gate not passed within {deadline_s:g}s"):
        _log(f"trial of {version}: health gate deadline passed; stopping the service")
    with contextlib.suppress(ProcessLookupError):
        os.kill(main_pid, signal.SIGTERM)
    time.sleep(15)
    with contextlib.suppress(ProcessLookupError):
        if os.getppid() == main_pid:
            os.kill(main_pid, signal.SIGKILL)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--slots":
        print("usage: edgegw-launch --slots DIR [edgegw run arguments...]", file=sys.stderr)
        return 2
    slots = Path(args[1])
    rest = args[2:] or ["run"]
    version = decide(slots)
    trial = read_boot(slots).get("trial")
    if trial and trial.get("version") == version:
        main_pid = os.getpid()
        if os.fork() == 0:  # stays in the service's cgroup/process group: stopped with it
            _guard(slots, version, float(trial.get("deadline_s", DEFAULT_DEADLINE_S)), main_pid)
    exe = slots / version / "bin" / "edgegw"
    os.environ[ENV_SLOTS] = str(slots)
    os.execv(str(exe), [str(exe), *rest])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
