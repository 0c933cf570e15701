"""A dead device on a real Modbus bus: quality flip, healthy devices on schedule, recovery.

Two real pymodbus TCP servers = two buses. Bus A serves units 1, 2, 3 (one endpoint, one
scheduler, one shared client); bus B serves unit 1. Unit 3 on bus A goes silent (reads the
request, never answers, keeps the connection), then answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from edgegw import Quality
from edgegw.runtime.scheduler import BreakerPolicy, BusScheduler

from .busrig import Recorder, attach, until
from .modbus_sim import driver_points
from .simproc import Devices, SimServer

PERIOD = 0.4
TIMEOUT = 0.2  # the Modbus request timeout of every device
SLACK = 0.15  # scheduling noise allowed on a shared 2-core CI machine


async def test_dead_device_flips_quality_keeps_others_on_schedule_and_recovers(
    tcp_server: SimServer, devices: Devices, tmp_path: Path
) -> None:
    other = SimServer("--tcp", "0", "--units", "1", log_dir=tmp_path)
    rec = Recorder()
    policy = BreakerPolicy(failure_threshold=3, backoff_min=0.6, backoff_max=1.2)
    bus_a = BusScheduler("a", breaker=policy)
    bus_b = BusScheduler("b", breaker=policy)
    few = driver_points(1)[:6] + driver_points(1)[-4:]  # registers and bits: 4 requests
    for unit in (1, 2, 3):
        drv = await devices.open(f"a{unit}", host="127.0.0.1", port=tcp_server.port,
                                 unit_id=unit, timeout=TIMEOUT, points=few)
        attach(bus_a, rec, f"a{unit}", drv, period=PERIOD)
    drv = await devices.open("b1", host="127.0.0.1", port=other.port, unit_id=1,
                             timeout=TIMEOUT, points=few)
    attach(bus_b, rec, "b1", drv, period=PERIOD)
    tasks = [asyncio.create_task(bus.run()) for bus in (bus_a, bus_b)]
    try:
        await until(lambda: all(bus_a.stats()["devices"][f"a{u}"]["polls"] >= 2 for u in (1, 2, 3)),
                    5, "first polls")
        assert all(s.quality is Quality.GOOD for _, s in rec.seen["a3"])

        # --- unit 3 goes silent
        t_dead = time.monotonic()
        tcp_server.mode("silent", unit=3)
        await until(lambda: rec.first("a3", t_dead, Quality.COMM_ERROR), 3, "comm_error samples")
        flip = rec.first("a3", t_dead, Quality.COMM_ERROR)
        assert flip is not None and flip - t_dead <= 2 * PERIOD  # within two poll periods
        failed_batch = [s for s in rec.since("a3", flip) if s.quality is Quality.COMM_ERROR]
        assert {s.metric for s in failed_batch} == {p["name"] for p in few}  # every point
        assert all(s.value is None for s in failed_batch)
        await until(lambda: bus_a.stats()["devices"]["a3"]["state"] == "open", 3, "breaker open")
        t_open = time.monotonic()
        # while open: samples keep flowing with comm_error (no bus I/O for skipped slots)
        await until(lambda: bus_a.stats()["devices"]["a3"]["breaker_skips"] >= 2, 3, "skips")
        assert rec.since("a3", t_open) and all(
            s.quality is Quality.COMM_ERROR for s in rec.since("a3", t_open))
        # healthy devices kept their schedule: on the shared bus late by at most one timeout of
        # the dead device, on the other bus not at all
        stats = bus_a.stats()["devices"]
        for unit in (1, 2):
            assert stats[f"a{unit}"]["lateness_max_s"] <= TIMEOUT + SLACK, stats[f"a{unit}"]
            assert stats[f"a{unit}"]["consecutive_failures"] == 0
        assert bus_b.stats()["devices"]["b1"]["lateness_max_s"] <= SLACK
        good_a1 = [s for s in rec.since("a1", t_dead) if s.quality is Quality.GOOD]
        assert len(good_a1) >= len(few) * int((time.monotonic() - t_dead) / PERIOD - 1)

        # --- bad answers from unit 2 are counted quality changes, the bus keeps running
        t_bad = time.monotonic()
        tcp_server.mode("exception", unit=2)
        await until(lambda: rec.first("a2", t_bad, Quality.BAD_DATA), 3, "bad_data samples")
        tcp_server.mode("normal", unit=2)
        t_fix = time.monotonic()
        await until(lambda: rec.first("a2", t_fix, Quality.GOOD), 3, "a2 good again")

        # --- unit 3 answers again: recovers without restart
        t_back = time.monotonic()
        tcp_server.mode("normal", unit=3)
        await until(lambda: rec.first("a3", t_back, Quality.GOOD), 2 * policy.backoff_max + 1,
                    "recovery")
        await until(lambda: bus_a.stats()["devices"]["a3"]["state"] == "ok", 2, "breaker closed")
        assert all(not t.done() for t in tasks)  # neither scheduler died
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        other.close()
