"""A wall clock that can be stepped back for one process tree: Debian's libfaketime.

``SteppedClock.env()`` preloads libfaketime (its thread-safe build) with
``FAKETIME_TIMESTAMP_FILE`` (a relative offset in seconds, re-read on every call:
``FAKETIME_NO_CACHE``, ~20 us per wall-clock read) and
``FAKETIME_DONT_FAKE_MONOTONIC``: an NTP step moves CLOCK_REALTIME, never CLOCK_MONOTONIC, and
the runtime's schedules use the monotonic clock. ``step(-40)`` moves the child's wall clock
40 s back at once; OpenSSL's certificate checks see the stepped clock too (our certificates
are backdated 5 minutes, so steps totalling less than that keep TLS working).

Known limit (libfaketime 0.9.10, upstream issue #426): with the monotonic clock excluded,
``time.sleep()`` raises EINVAL under Python 3.11 (its clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME) is mis-adjusted). The daemon's run path never calls ``time.sleep`` (asyncio and
threading waits are not affected), which is why libfaketime, not a clock seam in the daemon,
is used: it steps exactly the clock the daemon, SQLite and OpenSSL read.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path


def libfaketime() -> str:
    # the MT variant: in a multi-threaded process (the daemon has an outbox thread, paho's
    # thread, executors) libfaketime.so.1 returned the UNSTEPPED time for ~1 in 3000 calls of
    # 4 threads here (a race over its parsed offset); libfaketimeMT.so.1: none in 240 000
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise RuntimeError("libfaketimeMT.so.1 not found: install Debian package libfaketime "
                           "(in the Makefile's APT_PACKAGES; `make system-deps`)")
    return found[0]


class SteppedClock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{self.offset_s:+d}\n")
        os.replace(tmp, self.path)  # a reader never sees a half-written offset

    def step(self, seconds: int) -> None:
        """Move the wall clock of every process started with ``env()`` by ``seconds``."""
        self.offset_s += seconds
        self._write()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return dict(base if base is not None else os.environ, LD_PRELOAD=libfaketime(),
                    FAKETIME_TIMESTAMP_FILE=str(self.path), FAKETIME_NO_CACHE="1",
                    FAKETIME_DONT_FAKE_MONOTONIC="1")
