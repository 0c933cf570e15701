"""BusScheduler on a fake monotonic clock: no drift, stagger, skipped slots, circuit breaker.

The clock is injected (a deterministic fake whose sleep advances it), so these tests assert
exact schedule positions without depending on the machine's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable

import pytest

from edgegw.runtime.scheduler import BreakerPolicy, BusScheduler, PollTarget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += max(0.0, delay)
        await asyncio.sleep(0)  # let other tasks see the new time


class Target:
    """A PollTarget whose poll takes ``cost`` fake seconds and succeeds per ``ok``."""

    def __init__(self, clock: FakeClock, name: str, period: float, *, cost: float = 0.01,
                 stagger: bool = True, ok: Callable[[int], bool] = lambda n: True) -> None:
        self.clock, self.device_id, self.period, self.stagger = clock, name, period, stagger
        self.cost, self.ok = cost, ok
        self.starts: list[float] = []
        self.skipped_reports: list[float] = []

    async def poll(self) -> bool:
        self.starts.append(self.clock.now)
        self.clock.now += self.cost
        return self.ok(len(self.starts))

    def report_skipped(self) -> None:
        self.skipped_reports.append(self.clock.now)


async def run_until(bus: BusScheduler, clock: FakeClock, until: float) -> None:
    task = asyncio.create_task(bus.run())
    while clock.now < until:
        await asyncio.sleep(0)
        if task.done():
            task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_absolute_deadlines_do_not_drift_and_are_staggered() -> None:
    clock = FakeClock()
    bus = BusScheduler("b", clock=clock, sleep=clock.sleep)
    targets = [Target(clock, f"d{i}", 1.0, cost=0.013) for i in range(3)]
    for t in targets:
        assert isinstance(t, PollTarget)
        bus.add(t)
    start = clock.now
    await run_until(bus, clock, start + 1000.5)
    for i, t in enumerate(targets):
        assert len(t.starts) >= 1000
        # poll k of target i starts exactly at start + i/3 + k: no accumulated drift
        worst = max(abs(s - (start + i / 3 + k)) for k, s in enumerate(t.starts))
        assert worst < 1e-6
    stats = bus.stats()["devices"]
    assert all(s["skipped_slots"] == 0 and s["lateness_max_s"] < 1e-6 for s in stats.values())


async def test_unstaggered_targets_start_together_and_queue() -> None:
    clock = FakeClock()
    bus = BusScheduler("b", clock=clock, sleep=clock.sleep)
    targets = [Target(clock, f"d{i}", 1.0, cost=0.1, stagger=False) for i in range(3)]
    for t in targets:
        bus.add(t)
    start = clock.now
    await run_until(bus, clock, start + 5)
    # one request in flight: they run back to back, each late by the polls before it
    assert [t.starts[0] - start for t in targets] == pytest.approx([0.0, 0.1, 0.2])
    assert bus.stats()["devices"]["d2"]["lateness_max_s"] == pytest.approx(0.2)


async def test_falling_more_than_a_period_behind_skips_and_counts_slots() -> None:
    clock = FakeClock()
    bus = BusScheduler("b", clock=clock, sleep=clock.sleep)
    slow = Target(clock, "slow", 1.0, cost=0.2)
    slow.ok = lambda n: True
    bus.add(slow)
    start = clock.now

    async def stall() -> bool:  # the 3rd poll hangs for 3.5 periods
        slow.starts.append(clock.now)
        clock.now += 3.5 if len(slow.starts) == 3 else 0.2
        return True

    slow.poll = stall  # type: ignore[method-assign]
    await run_until(bus, clock, start + 10)
    offsets = [round(s - start, 6) for s in slow.starts]
    # polls at 0, 1, 2 (stalls to 5.5) -> slots 3 and 4 skipped, 5 runs late, then 6, 7 ...
    assert offsets[:6] == [0.0, 1.0, 2.0, 5.5, 6.0, 7.0]
    assert bus.stats()["devices"]["slow"]["skipped_slots"] == 2


async def test_circuit_breaker_backs_off_reports_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    policy = BreakerPolicy(failure_threshold=3, backoff_min=2.0, backoff_max=8.0, jitter=0.0)
    bus = BusScheduler("b", clock=clock, sleep=clock.sleep, breaker=policy, rng=random.Random(1))
    healthy = Target(clock, "ok", 1.0)
    alive = {"dead": True}
    dead = Target(clock, "dead", 1.0, cost=0.5, ok=lambda n: not alive["dead"])
    bus.add(healthy)
    bus.add(dead)
    start = clock.now
    caplog.set_level(logging.INFO, logger="edgegw.scheduler")
    await run_until(bus, clock, start + 30)
    polls = [round(s - start, 3) for s in dead.starts]
    # 3 failures at its slots (0.5, 1.5, 2.5); then probes after 2, 4, 8, 8 s (capped)
    assert polls[:3] == [0.5, 1.5, 2.5]
    gaps = [round(b - a) for a, b in itertools.pairwise(polls[2:])]
    assert gaps[:4] == [2, 4, 8, 8]
    # every skipped slot still reported (one per period the device was not polled)
    assert len(dead.skipped_reports) + len(dead.starts) == pytest.approx(30, abs=1)
    state = bus.stats()["devices"]["dead"]
    assert state["state"] == "open" and state["breaker_skips"] == len(dead.skipped_reports)
    # the healthy device was never late by more than one dead poll
    assert bus.stats()["devices"]["ok"]["lateness_max_s"] <= 0.5 + 1e-9

    alive["dead"] = False
    await run_until(bus, clock, clock.now + 10)
    assert bus.stats()["devices"]["dead"]["state"] == "ok"
    assert bus.stats()["devices"]["dead"]["consecutive_failures"] == 0
    flips = [r.getMessage() for r in caplog.records if r.name == "edgegw.scheduler"]
    assert sum("failing" in m for m in flips) == 1  # logged once, not per failure
    assert sum("ok again" in m for m in flips) == 1


async def test_jitter_spreads_probes_within_bounds() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(failure_threshold=1, backoff_min=10.0, backoff_max=10.0, jitter=0.2)
    bus = BusScheduler("b", clock=clock, sleep=clock.sleep, breaker=policy, rng=random.Random(7))
    dead = Target(clock, "dead", 0.1, cost=0.0, ok=lambda n: False)
    bus.add(dead)
    await run_until(bus, clock, clock.now + 200)
    gaps = [b - a for a, b in itertools.pairwise(dead.starts)]
    assert all(8.0 - 0.1 <= g <= 12.0 + 0.1 for g in gaps)
    assert max(gaps) - min(gaps) > 0.5  # actually jittered, not a fixed interval


def test_lateness_p99_over_the_last_window() -> None:
    """The lateness ring keeps only the last LATENESS_WINDOW polls (fixed memory per device)."""
    import math
    import random

    from edgegw.runtime.scheduler import LATENESS_WINDOW, _Slot

    slot = _Slot(target=None, index=0)  # type: ignore[arg-type]
    rng = random.Random(5)
    values = [rng.random() for _ in range(LATENESS_WINDOW + 300)]
    for v in values:
        slot.record_lateness(v)
    last = sorted(values[-LATENESS_WINDOW:])
    expected = last[math.ceil(0.99 * len(last)) - 1]
    assert slot.stats()["lateness_p99_s"] == expected
    assert len(slot.lateness) == LATENESS_WINDOW
