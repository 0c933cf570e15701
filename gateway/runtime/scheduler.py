"""BusScheduler: polls every device of one physical bus on absolute deadlines.

Invariants:
- One asyncio task per bus (``run``) and at most one request in flight on the bus.
- Each target has an absolute deadline on the monotonic clock: next = previous deadline +
  period (never now + period), so polling does not drift. A target more than one period
  behind skips the missed slots and counts them (``skipped_slots``).
- First deadlines are staggered: target i of n starts at ``i / n`` of its period (deterministic);
  with a ``stagger_slot`` (set by the device manager) i / n is its BUS among the gateway's
  buses, so every device of this bus shares one deadline and they are polled back to back.
- Queued writes run before the next poll (``submit_write``).
- Per-device circuit breaker: after ``failure_threshold`` consecutive failed polls the device
  is only probed every backoff interval (exponential from ``backoff_min`` to ``backoff_max``,
  with jitter); in between, its slots call the target's optional ``report_skipped()`` (cheap,
  no bus I/O) so its samples keep flowing with an error quality. A successful probe closes the
  breaker. A dead device thus costs healthy devices at most one timeout per probe.
- Health flips (ok -> failing, failing -> ok) are logged once each at INFO.
- Nothing a target does (raising included) stops the loop: an exception counts as a failure.
- Cancelling ``run`` stops it even if a driver swallowed the CancelledError.
- ``hold(device)`` (a firmware update) waits for that device's poll in flight, then skips its
  slots (counted as ``held_skips``, no bus I/O, no samples) until released; the other devices
  of the bus keep their schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import math
import random
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

log = logging.getLogger("edgegw.scheduler")

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@runtime_checkable
class PollTarget(Protocol):
    """One polled device. ``poll`` returns False on failure (feeds the circuit breaker).

    Optional: ``report_skipped()`` (sync or async), called for slots skipped while the
    device's breaker is open, to report the device's samples with an error quality.
    """

    device_id: str
    period: float
    stagger: bool

    async def poll(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 3
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    jitter: float = 0.2  # +-20 % of the backoff interval


LATENESS_WINDOW = 512  # polls per device over which lateness_p99 is computed


@dataclass
class _Slot:
    target: PollTarget
    index: int
    deadline: float = 0.0
    # circuit breaker
    consecutive_failures: int = 0
    open: bool = False
    probe_at: float = 0.0
    backoff: float = 0.0
    # stats
    polls: int = 0
    failures: int = 0
    skipped_slots: int = 0
    breaker_skips: int = 0
    held_skips: int = 0
    last_latency: float = 0.0
    lateness_last: float = 0.0
    lateness_max: float = 0.0
    # ring of the last LATENESS_WINDOW lateness values: 8 bytes each, no float objects kept
    lateness: array[float] = field(default_factory=lambda: array("d", bytes(8 * LATENESS_WINDOW)))
    lateness_n: int = 0
    removed: bool = False  # taken off the bus (remote configuration); never polled again

    def record_lateness(self, value: float) -> None:
        self.lateness_last = value
        if value > self.lateness_max:
            self.lateness_max = value
        self.lateness[self.lateness_n % LATENESS_WINDOW] = value
        self.lateness_n += 1

    def stats(self) -> dict[str, Any]:
        late = sorted(self.lateness[: min(self.lateness_n, LATENESS_WINDOW)])
        p99 = late[min(len(late) - 1, math.ceil(0.99 * len(late)) - 1)] if late else 0.0
        return {
            "polls": self.polls,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "state": "open" if self.open else "ok",
            "last_latency_s": self.last_latency,
            "lateness_last_s": self.lateness_last,
            "lateness_max_s": self.lateness_max,
            "lateness_p99_s": p99,
            "skipped_slots": self.skipped_slots,
            "breaker_skips": self.breaker_skips,
            "held_skips": self.held_skips,
        }


@dataclass
class _Write:
    device_id: str
    fn: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]


class BusScheduler:
    """Runs the polls and writes of one bus, one at a time, on absolute deadlines."""

    def __init__(
        self,
        name: str,
        *,
        inter_frame_delay: float = 0.0,
        breaker: BreakerPolicy | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.inter_frame_delay = inter_frame_delay
        self.policy = breaker or BreakerPolicy()
        self._clock = clock
        self._sleep = sleep  # injected with a fake clock; default: loop timers
        self._rng = rng or random.Random()
        self._slots: list[_Slot] = []
        self._heap: list[tuple[float, int]] = []
        self._writes: deque[_Write] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._started = False
        self._stop_requested = False
        self._running = False
        self.in_flight = 0
        self._held: set[str] = set()
        self._polling: str | None = None
        self._poll_done: asyncio.Event | None = None
        self.writes_done = 0
        self.write_failures = 0
        self.poll_errors = 0

    # ----------------------------------------------------------------- public API
    def add(self, target: PollTarget) -> None:
        """Add a device; allowed before or while running (it joins with its own stagger)."""
        if target.period <= 0:
            raise ValueError(f"device {target.device_id}: poll period must be > 0")
        slot = _Slot(target, len(self._slots))
        self._slots.append(slot)
        if self._started:
            slot.deadline = self._clock()
            heapq.heappush(self._heap, (slot.deadline, slot.index))
            self._wake()

    def remove(self, device_id: str) -> bool:
        """Take a device off the bus (a poll in flight finishes; no new one starts)."""
        found = False
        for slot in self._slots:
            if slot.target.device_id == device_id and not slot.removed:
                slot.removed = True
                found = True
        self._wake()
        return found

    async def submit_write(self, device_id: str, coro_fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``coro_fn()`` on this bus ahead of the next poll; returns its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.append(_Write(device_id, coro_fn, future))
        self._wake()
        return await future

    @contextlib.asynccontextmanager
    async def hold(self, device_id: str) -> AsyncIterator[None]:
        """Hold all scheduled traffic to ``device_id`` (after its poll in flight) while inside."""
        if device_id in self._held:
            raise RuntimeError(f"device {device_id} is already held (an update is running)")
        self._held.add(device_id)
        try:
            while self._polling == device_id:
                if self._poll_done is None:  # made only when someone waits (not per poll)
                    self._poll_done = asyncio.Event()
                await self._poll_done.wait()
            yield
        finally:
            self._held.discard(device_id)

    async def run(self) -> None:
        """The bus task: forever poll due targets, writes first. Cancel to stop."""
        self._start()
        me = asyncio.current_task()
        try:
            while True:
                # a cancel swallowed inside a driver (3.11's wait_for can lose one when the
                # awaited future completes at the same moment) must still stop the bus
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError
                if self._stop_requested:
                    return  # graceful stop: the poll that was in flight has been delivered
                if self._writes:
                    await self._run_write(self._writes.popleft())
                    continue
                if not self._heap:
                    await self._wait(None)
                    continue
                deadline, index = self._heap[0]
                delay = deadline - self._clock()
                if delay > 0:
                    await self._wait(delay)
                    continue
                heapq.heappop(self._heap)
                slot = self._slots[index]
                if slot.removed:
                    continue
                await self._run_slot(slot)
                if not slot.removed:
                    heapq.heappush(self._heap, (slot.deadline, index))
        finally:
            self._running = False
            for write in self._writes:
                if not write.future.done():
                    write.future.cancel()
            self._writes.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "bus": self.name,
            "in_flight": self.in_flight,
            "writes_queued": len(self._writes),
            "writes_done": self.writes_done,
            "write_failures": self.write_failures,
            "poll_errors": self.poll_errors,
            "devices": {s.target.device_id: s.stats() for s in self._slots if not s.removed},
        }

    # ----------------------------------------------------------------- internals
    def _start(self) -> None:
        if self._running:
            raise RuntimeError(f"bus scheduler {self.name} is already running")
        self._running = True
        if self._started:  # run() again after a cancel: keep the deadlines
            return
        self._started = True
        now = self._clock()
        n = len(self._slots)
        for slot in self._slots:
            # a gateway-wide slot (set by the device manager) wins over this bus's own index
            i, count = getattr(slot.target, "stagger_slot", None) or (slot.index, n)
            offset = slot.target.period * i / count if slot.target.stagger and count else 0.0
            slot.deadline = now + offset
            heapq.heappush(self._heap, (slot.deadline, slot.index))

    def request_stop(self) -> None:
        """Stop after the poll in flight (if any) completed and handed its samples on: a
        reading the device already served is never thrown away by a clean shutdown."""
        self._stop_requested = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, delay: float | None) -> None:
        """Sleep until ``delay`` passes or a write/target arrives."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        handle: asyncio.TimerHandle | None = None
        task: asyncio.Task[None] | None = None
        if delay is not None:
            if self._sleep is None:
                handle = loop.call_later(delay, _resolve, waiter)
            else:
                task = asyncio.ensure_future(self._sleep(delay))
                task.add_done_callback(lambda _t: _resolve(waiter))
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
            if task is not None and not task.done():
                task.cancel()

    async def _gap(self) -> None:
        if self.inter_frame_delay > 0:
            if self._sleep is not None:
                await self._sleep(self.inter_frame_delay)
            else:
                await asyncio.sleep(self.inter_frame_delay)  # bus timing, not synchronisation

    async def _run_write(self, write: _Write) -> None:
        if write.future.done():  # the submitter gave up
            return
        self.in_flight = 1
        try:
            result = await write.fn()
        except asyncio.CancelledError:
            write.future.cancel()
            raise
        except Exception as exc:  # handed to the submitter, never kills the bus
            self.write_failures += 1
            if not write.future.done():
                write.future.set_exception(exc)
        else:
            self.writes_done += 1
            if not write.future.done():
                write.future.set_result(result)
        finally:
            self.in_flight = 0
        await self._gap()

    async def _run_slot(self, slot: _Slot) -> None:
        start = self._clock()
        lateness = max(0.0, start - slot.deadline)
        if slot.target.device_id in self._held:
            slot.held_skips += 1
        elif slot.open and start < slot.probe_at:
            slot.breaker_skips += 1
            await self._report_skipped(slot)
        else:
            slot.record_lateness(lateness)
            self.in_flight = 1
            self._polling = slot.target.device_id
            try:
                ok = await slot.target.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a PollTarget must not raise; if it does, it is a failure
                self.poll_errors += 1
                log.exception("bus %s: poll of %s raised", self.name, slot.target.device_id)
                ok = False
            finally:
                self.in_flight = 0
                self._polling = None
                done, self._poll_done = self._poll_done, None
                if done is not None:
                    done.set()
            end = self._clock()
            slot.last_latency = end - start
            slot.polls += 1
            if not ok or slot.open or slot.consecutive_failures:  # else the breaker stays shut
                self._breaker(slot, bool(ok), start)
            if self.inter_frame_delay > 0:
                await self._gap()
        self._advance(slot)

    async def _report_skipped(self, slot: _Slot) -> None:
        report = getattr(slot.target, "report_skipped", None)
        if report is None:
            return
        try:
            result = report()
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.poll_errors += 1
            log.exception("bus %s: report_skipped of %s raised", self.name, slot.target.device_id)

    def _breaker(self, slot: _Slot, ok: bool, started: float) -> None:
        """Update the breaker; the next probe is due ``backoff`` after this attempt started."""
        policy = self.policy
        if ok:
            if slot.open:
                log.info(
                    "bus %s: device %s ok again after %d failed polls",
                    self.name,
                    slot.target.device_id,
                    slot.consecutive_failures,
                )
            slot.open = False
            slot.consecutive_failures = 0
            slot.backoff = 0.0
            return
        slot.failures += 1
        slot.consecutive_failures += 1
        if slot.open:  # a failed half-open probe: back off further
            slot.backoff = min(slot.backoff * 2, policy.backoff_max)
        elif slot.consecutive_failures >= policy.failure_threshold:
            slot.open = True
            slot.backoff = min(max(policy.backoff_min, slot.target.period), policy.backoff_max)
            log.info(
                "bus %s: device %s failing (%d consecutive failed polls); probing every %.1fs",
                self.name,
                slot.target.device_id,
                slot.consecutive_failures,
                slot.backoff,
            )
        else:
            return
        spread = 1.0 + policy.jitter * (2 * self._rng.random() - 1)
        slot.probe_at = started + slot.backoff * spread

    def _advance(self, slot: _Slot) -> None:
        period = slot.target.period
        slot.deadline += period
        behind = self._clock() - slot.deadline
        if behind > period:
            missed = int(behind // period)
            slot.deadline += missed * period
            slot.skipped_slots += missed


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
