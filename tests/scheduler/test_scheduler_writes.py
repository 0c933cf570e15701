"""BusScheduler on the real loop: writes ahead of polls, raising targets, one request in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from edgegw.runtime.scheduler import BusScheduler


class Probe:
    """A PollTarget recording the bus activity it sees (real clock)."""

    def __init__(self, name: str, log: list[str], bus: BusScheduler, period: float = 0.02,
                 raise_on: set[int] | None = None) -> None:
        self.device_id, self.period, self.stagger = name, period, True
        self.log, self.bus, self.raise_on = log, bus, raise_on or set()
        self.n = 0
        self.max_in_flight_seen = 0

    async def poll(self) -> bool:
        self.n += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.bus.in_flight)
        self.log.append(f"poll {self.device_id}")
        await asyncio.sleep(0.002)  # stands in for the request's I/O
        if self.n in self.raise_on:
            raise RuntimeError("a broken target")
        return True


async def until(pred: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_writes_run_before_the_next_poll_and_return_results() -> None:
    log: list[str] = []
    bus = BusScheduler("w")
    targets = [Probe(f"d{i}", log, bus) for i in range(3)]
    for t in targets:
        bus.add(t)
    task = asyncio.create_task(bus.run())
    try:
        await until(lambda: len(log) >= 6)

        async def write(tag: str) -> str:
            log.append(f"write {tag}")
            assert bus.in_flight == 1
            await asyncio.sleep(0.001)
            return tag.upper()

        async def failing() -> None:
            raise ValueError("device refused")

        before = len(log)
        results = await asyncio.gather(
            bus.submit_write("d1", lambda: write("a")), bus.submit_write("d2", lambda: write("b")))
        assert results == ["A", "B"]
        # both queued writes ran back to back, at most one poll (already in flight) before them
        idx = log.index("write a", before)
        assert idx - before <= 1 and log[idx + 1] == "write b"
        with pytest.raises(ValueError, match="refused"):
            await bus.submit_write("d1", failing)
        await until(lambda: log.count("poll d0") >= 10)
        stats = bus.stats()
        assert stats["writes_done"] == 2 and stats["write_failures"] == 1
        assert all(t.max_in_flight_seen == 1 for t in targets)  # one request in flight
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_raising_target_is_a_failure_not_a_dead_bus(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    bus = BusScheduler("r")
    bad = Probe("bad", log, bus, raise_on={2, 3})
    good = Probe("good", log, bus)
    bus.add(bad)
    bus.add(good)
    task = asyncio.create_task(bus.run())
    try:
        await until(lambda: bad.n >= 6 and good.n >= 6)
        stats = bus.stats()
        assert stats["poll_errors"] == 2
        assert stats["devices"]["bad"]["failures"] == 2
        assert stats["devices"]["bad"]["consecutive_failures"] == 0  # recovered at poll 4
        assert stats["devices"]["good"]["failures"] == 0
        assert not task.done()
        assert "poll of bad raised" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_rejects_bad_period_and_double_run() -> None:
    bus = BusScheduler("x")
    probe = Probe("p", [], bus)
    probe.period = 0
    with pytest.raises(ValueError, match="period"):
        bus.add(probe)
    task = asyncio.create_task(bus.run())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already running"):
        await bus.run()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
