"""ModbusDriver over RTU: a real pymodbus RTU server on one end of a socat pty pair.

A pty ignores the baud rate, so frames arrive at pty speed; the RTU framing, CRCs, unit-id
addressing and the inter-frame gap are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgegw import BadDataError, Quality
from edgegw.runtime.scheduler import BreakerPolicy, BusScheduler

from .busrig import Recorder, attach, until
from .modbus_sim import driver_points
from .simproc import Devices, SimServer, pty_pair
from .test_modbus_tcp import expected

PERIOD = 0.5
TIMEOUT = 0.2
SLACK = 0.15


@pytest.fixture
def rtu_line(tmp_path: Path) -> Iterator[tuple[SimServer, Path]]:
    with pty_pair(tmp_path) as (server_end, client_end):
        server = SimServer("--serial", str(server_end), "--units", "1,2,3,9", log_dir=tmp_path)
        try:
            yield server, client_end
        finally:
            server.close()


def rtu(port: Path, unit: int, **kw: Any) -> dict[str, Any]:
    return {"transport": "rtu", "serial_port": str(port), "baudrate": 115200, "unit_id": unit,
            "timeout": TIMEOUT, "max_gap": 10, "points": driver_points(unit), **kw}


async def test_rtu_values_exact_on_three_units(
    rtu_line: tuple[SimServer, Path], devices: Devices
) -> None:
    server, port = rtu_line
    for unit in (1, 2, 3):
        driver = await devices.open(f"u{unit}", **rtu(port, unit))
        assert dict(await driver.read()) == expected(unit)
        assert server.counts(unit) == {3: 1, 4: 1, 1: 1, 2: 1}
    assert devices.shared_count == 1  # one serial port, one client
    server.mode("garbage", unit=2)  # CRC corrupted: unreadable answer = bad data, not silence
    with pytest.raises(BadDataError):
        await devices.opened[1].read()


async def test_silent_unit_delays_others_by_at_most_one_timeout(
    rtu_line: tuple[SimServer, Path], devices: Devices
) -> None:
    server, port = rtu_line
    server.mode("silent", unit=9)
    rec = Recorder()
    bus = BusScheduler("rtu", breaker=BreakerPolicy(backoff_min=1.0, backoff_max=2.0))
    few = driver_points(1)[:8]
    for unit in (1, 2, 3, 9):
        driver = await devices.open(f"u{unit}", **rtu(port, unit, points=few))
        attach(bus, rec, f"u{unit}", driver, period=PERIOD)
    t0 = time.monotonic()
    task = asyncio.create_task(bus.run())
    try:
        await until(lambda: bus.stats()["devices"]["u1"]["polls"] >= 8, 10, "8 polls")
        stats = bus.stats()["devices"]
        assert stats["u9"]["failures"] >= 3 and stats["u9"]["state"] == "open"
        for unit in (1, 2, 3):
            s = stats[f"u{unit}"]
            assert s["failures"] == 0
            assert s["lateness_max_s"] <= TIMEOUT + SLACK, s
        assert {s.quality for s in rec.since("u9", t0)} == {Quality.COMM_ERROR}
        assert {s.quality for s in rec.since("u1", t0)} == {Quality.GOOD}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
