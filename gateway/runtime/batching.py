"""Batching that adapts to the link: small batches while the link keeps up, bigger ones when not.

A batch costs bytes per series (id, first value, step) whatever its length, so on a slow link
longer batches are much cheaper per reading (W1 at 1 s polling: ~3 bytes/reading at one
reading per series, ~1.4 at three), while on a fast link short batches give low latency.

Policy (``AdaptiveAge``, consulted by the batcher for the telemetry lane; re-evaluated at most
once per ``EVERY`` seconds):
- utilisation u = bytes sealed per second (last ``WINDOW`` s) / link rate (``LinkEstimate``);
  no rate estimate yet counts as u = 0 (the link has not been shown to be slow);
- the pipe is *saturated* when the bytes in it reach 80% of its window (flow control is
  holding batches back);
- u > ``GROW_ABOVE`` or saturated: max_age doubles, up to ``max_age_slow``;
- u < ``SHRINK_BELOW`` and not saturated: max_age halves, down to ``min_age``
  (the wide band between the two thresholds keeps it from oscillating);
Bounds: ``min_age`` <= age <= ``max_age_slow`` always; ``max_readings`` still applies. A batch
occupies the link for u x age seconds (an alert may queue behind one): under a second at the
defaults on 64 kbit/s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from edgegw.model import Lane

log = logging.getLogger("edgegw.pipeline")

EVERY = 1.0
REPACK_EVERY = 2.0
REPACK_PAUSE = 0.1
REPACK_FLIGHT = 0.5
REPACK_MIN = 4 * 1024
REPACK_DEFAULT = 64 * 1024
WINDOW = 10.0
GROW_ABOVE = 0.25
SHRINK_BELOW = 0.06


class _Link(Protocol):
    in_pipe: int

    def rate(self, now: float) -> float | None: ...

    def cwnd(self, now: float) -> int: ...


def wire(batcher: Any, uplink: Any, dictionary: Any, *, min_age: float,
         max_age_slow: float) -> AdaptiveAge | None:
    """Connect the batcher, the uplink and the series dictionary (the supervisor calls this)."""
    if dictionary is not None:
        uplink.on_delivered = dictionary.delivered
    if max_age_slow <= min_age:
        return None
    policy = AdaptiveAge(lambda: batcher.bytes_sealed, uplink.flow, min_age=min_age,
                         max_age_slow=max_age_slow)
    batcher.age_policy = policy
    return policy


async def repack_loop(repacker: Any, uplink: Any, outbox_thread: Any,
                      every: float = REPACK_EVERY) -> None:
    """Re-pack the telemetry backlog now and then (``edgegw.store.repack``), into batches of
    about ``REPACK_FLIGHT`` seconds of the measured link (``REPACK_DEFAULT`` before any
    estimate). The CPU-heavy merge runs in a worker thread of its own, never in the outbox
    thread (which seals alerts: an alert must not wait behind a re-pack). Runs until
    cancelled; a failing re-pack is logged and retried later."""
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repack")
    try:
        while True:
            await asyncio.sleep(every)  # a period, not synchronisation
            rate = uplink.flow.rate(time.monotonic())
            target = max(REPACK_MIN, int(rate * REPACK_FLIGHT)) if rate else REPACK_DEFAULT
            try:
                # alerts first: a backlog of one-alert batches costs a round of per-batch work
                # each, ahead of every alert raised after the reconnect
                for lane in (Lane.ALERT, Lane.TELEMETRY):
                    while True:
                        rows = await outbox_thread.call(repacker.collect, uplink.held_seqs(),
                                                        target, lane)
                        if not rows:
                            break
                        plan = await loop.run_in_executor(worker, repacker.merge, rows,
                                                          target, lane)
                        if plan is None or await outbox_thread.call(repacker.commit,
                                                                    plan) is None:
                            break
                        uplink.notify()
                        await asyncio.sleep(REPACK_PAUSE)  # let live batches and alerts through
            except Exception:
                log.exception("re-packing the backlog failed; retrying in %.0f s", every)
    finally:
        # never block the event loop on a merge in progress: it touches no database, and
        # its result is simply dropped
        worker.shutdown(wait=False, cancel_futures=True)


class AdaptiveAge:
    """Callable giving the telemetry lane's current max_age (seconds)."""

    def __init__(
        self,
        sealed_bytes: Callable[[], int],
        link: _Link,
        *,
        min_age: float,
        max_age_slow: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sealed = sealed_bytes
        self._link = link
        self.min_age = min_age
        self.max_age_slow = max(min_age, max_age_slow)
        self._clock = clock
        self.age = min_age
        self._last = -EVERY
        self._hist: collections.deque[tuple[float, int]] = collections.deque()
        self.utilisation = 0.0
        self.changes = 0

    def __call__(self) -> float:
        now = self._clock()
        if now - self._last >= EVERY:
            self._last = now
            self._update(now)
        return self.age

    def _update(self, now: float) -> None:
        h = self._hist
        h.append((now, self._sealed()))
        while len(h) > 2 and h[0][0] < now - WINDOW:
            h.popleft()
        span = h[-1][0] - h[0][0]
        sealed_rate = (h[-1][1] - h[0][1]) / span if span > 0 else 0.0
        rate = self._link.rate(now)
        u = sealed_rate / rate if rate else 0.0
        self.utilisation = u
        saturated = self._link.in_pipe >= 0.8 * self._link.cwnd(now)
        age = self.age
        if u > GROW_ABOVE or saturated:
            age = min(self.max_age_slow, age * 2)
        elif u < SHRINK_BELOW:
            age = max(self.min_age, age / 2)
        if age != self.age:
            self.changes += 1
            self.age = age

    def stats(self) -> dict[str, float]:
        return {"batch_age_s": self.age, "link_utilisation": round(self.utilisation, 3),
                "batch_age_changes": self.changes}
