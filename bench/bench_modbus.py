"""Modbus polling overhead: raw pymodbus client loop vs ModbusDriver vs DevicePoller+BusScheduler.

Starts the test server (tests/modbus/modbus_sim.py, a real pymodbus TCP server) in a
subprocess, then for ``--seconds`` each runs the same read requests:
1. raw: AsyncModbusTcpClient issuing the driver's planned requests back to back (the ceiling);
2. driver: ``ModbusDriver.read()`` in a tight loop (adds decoding, scale, range checks);
3. scheduled: the same driver behind DevicePoller + BusScheduler (period shorter than a poll,
   so the bus is never idle), samples going to a counting sink.
Prints one JSON object; ``overhead_pct`` = how much slower (3) is than (1) per poll in a tight
loop (client and server share the 2 cores, so this mixes in the server's time), and
``cpu_overhead_pct`` = how much more client CPU (3) spends per poll than (1): what a gateway
polling at a fixed period actually pays.

``--instructions N`` (issue 13, goal 5; deterministic under load, unlike CPU time): each mode
(raw client, driver, poller + scheduler; all tight loops) runs in a child process under
``valgrind --tool=callgrind`` for N and for 2N polls; instructions per poll = (I(2N) - I(N)) / N,
so start-up and imports cancel out. The server runs natively.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import callgrind_total  # noqa: E402
from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from edgegw import DeviceContext, Sample  # noqa: E402
from edgegw.drivers.modbus import ModbusDriver, ModbusOptions  # noqa: E402
from edgegw.runtime.poller import DevicePoller  # noqa: E402
from edgegw.runtime.scheduler import BusScheduler  # noqa: E402

SIM = ROOT / "tests" / "modbus" / "modbus_sim.py"
sys.path.insert(0, str(SIM.parent))
from modbus_sim import driver_points  # noqa: E402


async def bench_raw(
    port: int, groups: list[Any], seconds: float, period: float | None = None
) -> dict[str, float]:
    """The raw client, back to back, or at a fixed poll ``period`` (absolute deadlines, as any
    poller must do)."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    calls = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }
    loop = asyncio.get_running_loop()
    polls = 0
    start, cpu0 = loop.time(), time.process_time()
    deadline = start
    while loop.time() - start < seconds:
        for g in groups:
            await calls[g.kind](g.start, count=g.count, device_id=1)
        polls += 1
        if period is not None:
            deadline += period
            await asyncio.sleep(max(0.0, deadline - loop.time()))
    elapsed, cpu = loop.time() - start, time.process_time() - cpu0
    client.close()
    return {
        "polls_per_s": polls / elapsed,
        "req_per_s": polls * len(groups) / elapsed,
        "cpu_us_per_poll": cpu / polls * 1e6,
    }


async def open_driver(options: ModbusOptions, tmp: Path) -> ModbusDriver:
    driver = ModbusDriver(options)
    await driver.open(DeviceContext("bench", "modbus", tmp, logging.getLogger("bench")))
    return driver


async def bench_driver(options: ModbusOptions, seconds: float, tmp: Path) -> dict[str, float]:
    driver = await open_driver(options, tmp)
    polls = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        await driver.read()
        polls += 1
    elapsed = time.perf_counter() - start
    await driver.close()
    return {"polls_per_s": polls / elapsed}


async def bench_scheduled(
    options: ModbusOptions, seconds: float, tmp: Path, period: float = 1e-4
) -> dict[str, Any]:
    """DevicePoller + BusScheduler; the default period is shorter than a poll (never idle)."""
    driver = await open_driver(options, tmp)
    counted = {"samples": 0}

    def sink(samples: list[Sample]) -> None:
        counted["samples"] += len(samples)

    poller = DevicePoller("bench", driver, period=period, timeout=2.0, sink=sink)
    bus = BusScheduler("bench")
    bus.add(poller)
    task = asyncio.create_task(bus.run())
    start, cpu0, polls0 = time.perf_counter(), time.process_time(), poller.polls
    await asyncio.sleep(seconds)  # the measurement window itself
    polls = poller.polls - polls0
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await driver.close()
    return {
        "polls_per_s": polls / elapsed,
        "samples_per_s": counted["samples"] / elapsed,
        "failures": poller.failures,
        "cpu_us_per_poll": cpu / max(polls, 1) * 1e6,
    }


def _raw_decoders(points: list[dict[str, Any]], start: int) -> list[Any]:
    """Per point, what a raw pymodbus user writes to get its value from the group's registers:
    pymodbus's own ``convert_from_registers`` (word order), the byte swap, bit, scale and range
    (the ``raw_decoded`` ceiling: the driver's decoding work, done the plain pymodbus way)."""
    convert, dt = AsyncModbusTcpClient.convert_from_registers, AsyncModbusTcpClient.DATATYPE
    widths = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "int64": 4,
              "uint64": 4, "float64": 4}
    out = []
    for p in points:
        a, kind = p["address"] - start, p.get("type", "uint16")
        if kind == "bit":
            out.append(lambda r, a=a, b=p["bit"]: bool((r[a] >> b) & 1))
            continue
        if kind == "bool":
            out.append(lambda r, a=a: r[a] != 0)
            continue
        w = p["length"] if kind == "string" else widths[kind]  # length: in registers
        swap = p.get("byte_order") == "little"
        wo = p.get("word_order", "big")
        scale, offset = p.get("scale", 1.0), p.get("offset", 0.0)
        lo, hi = p.get("min"), p.get("max")
        t = dt[kind.upper()]

        def read(r: Any, a: int = a, w: int = w, t: Any = t, wo: str = wo,
                 swap: bool = swap, scale: float = scale, offset: float = offset,
                 lo: Any = lo, hi: Any = hi) -> Any:
            regs = r[a:a + w]
            if swap:
                regs = [((x & 0xFF) << 8) | (x >> 8) for x in regs]
            v = convert(regs, t, word_order=wo)
            if scale != 1.0 or offset != 0.0:
                v = v * scale + offset
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return ("out_of_range", v)
            return v
        out.append(read)
    return out


async def child_polls(mode: str, port: int, npoints: int, polls: int) -> None:
    """``polls`` polls of ``mode``, nothing printed: for callgrind. The modes add one layer
    each: raw (requests only) | raw_decoded (+ pymodbus's decoding into a name -> value dict) |
    bus (the driver's requests under its bus discipline: lock, connection check, error
    mapping) | driver (+ decoding into the read result) | poller (+ the per-poll deadline,
    the samples, the sink) | scheduled (+ the bus scheduler: deadlines, breaker)."""
    options = _options(port, npoints)
    groups = ModbusDriver(options).groups
    tmp = Path("/tmp")
    if mode in ("raw", "raw_decoded"):
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        calls = {"holding": client.read_holding_registers, "input": client.read_input_registers,
                 "coil": client.read_coils, "discrete": client.read_discrete_inputs}
        points = _points(npoints)
        decoders = []
        for g in groups:
            mine = [p for p in points if g.start <= p["address"] < g.start + g.count]
            decoders.append(list(zip([p["name"] for p in mine], _raw_decoders(mine, g.start),
                                     strict=True)))
        gc.freeze()  # see _callgrind: only this loop's own garbage is collected
        for _ in range(polls):
            result: dict[str, Any] = {}
            for g, decode in zip(groups, decoders, strict=True):
                response = await calls[g.kind](g.start, count=g.count, device_id=1)
                if mode == "raw_decoded":
                    regs = response.registers
                    for name, f in decode:
                        result[name] = f(regs)
        client.close()
        return
    driver = await open_driver(options, tmp)
    gc.freeze()
    if mode == "bus":
        bus = driver._bus
        for _ in range(polls):
            for index, group in enumerate(driver.groups):
                await driver._read_group(bus, group, driver._what[index])
    elif mode == "driver":
        for _ in range(polls):
            await driver.read()
    elif mode == "poller":
        poller = DevicePoller("bench", driver, period=1e-4, timeout=2.0, sink=lambda s: None)
        for _ in range(polls):
            await poller.poll()
    else:
        done = asyncio.Event()
        got = {"n": 0}

        def sink(samples: list[Sample]) -> None:
            got["n"] += 1
            if got["n"] >= polls:
                done.set()

        poller = DevicePoller("bench", driver, period=1e-4, timeout=2.0, sink=sink)
        bus = BusScheduler("bench")
        bus.add(poller)
        task = asyncio.create_task(bus.run())
        await done.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await driver.close()


def _callgrind(mode: str, port: int, npoints: int, polls: int) -> int:
    # Each child freezes the heap it built before its loop (gc.freeze): a full collection of
    # that heap falls into one of the N / 2N runs or not depending on timing, and swung the
    # difference by +-10k instructions per poll; collections of the loop's own garbage stay.
    return callgrind_total([__file__, "--child", mode, "--port", str(port), "--points",
                            str(npoints), "--polls", str(polls), "--layout", LAYOUT])


CHILD_MODES = ("raw", "raw_decoded", "bus", "driver", "poller", "scheduled")


def instructions(port: int, npoints: int, polls: int) -> dict[str, Any]:
    """Instructions per poll of each layer (``child_polls``); the increments between layers
    say where the overhead over raw pymodbus goes."""
    per_poll = {}
    for mode in CHILD_MODES:
        if mode == "raw_decoded" and LAYOUT == "uint16":
            continue  # plain registers: the raw values are the values
        one, two = _callgrind(mode, port, npoints, polls), _callgrind(mode, port, npoints,
                                                                       2 * polls)
        per_poll[mode] = (two - one) / polls
    raw = per_poll["raw"]
    out: dict[str, Any] = {
        "polls_n": polls,
        "points": npoints,
        "instructions_per_poll": {k: round(v) for k, v in per_poll.items()},
        "layers": {
            "bus discipline (lock, connection check, error mapping)":
                round(per_poll["bus"] - raw),
            "decoding into the read result": round(per_poll["driver"] - per_poll["bus"]),
            "poller (per-poll deadline, SampleBlock, sink)":
                round(per_poll["poller"] - per_poll["driver"]),
            "bus scheduler (deadlines, breaker, lateness)":
                round(per_poll["scheduled"] - per_poll["poller"]),
        },
        "driver_overhead_pct": round((per_poll["driver"] / raw - 1) * 100, 1),
        "poller_scheduler_overhead_pct": round((per_poll["scheduled"] / raw - 1) * 100, 1),
        "goal_overhead_pct": 10,
        "met": per_poll["scheduled"] / raw - 1 <= 0.10,
    }
    if "raw_decoded" in per_poll:
        # like for like when points need decoding: raw pymodbus decoding them itself
        out["poller_scheduler_overhead_vs_raw_decoded_pct"] = round(
            (per_poll["scheduled"] / per_poll["raw_decoded"] - 1) * 100, 1)
    return out


LAYOUT = "mixed"  # --layout


def _points(npoints: int) -> list[dict[str, Any]]:
    """The test layout's holding registers (mixed types), or W2's plain uint16 registers."""
    if LAYOUT == "uint16":
        return [{"name": f"r{a}", "kind": "holding", "address": 1000 + a, "type": "uint16"}
                for a in range(npoints)]
    return [p for p in driver_points(1) if p["kind"] == "holding"][:npoints]


def _options(port: int, npoints: int) -> ModbusOptions:
    points = _points(npoints)
    return ModbusOptions.model_validate(
        {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout": 2, "max_gap": 10,
         "points": points})


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2]


def start_server() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(SIM), "--tcp", "0", "--units", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(json.loads(proc.stdout.readline())["port"])


async def main(port: int, seconds: float, npoints: int, rounds: int) -> dict[str, Any]:
    points = _points(npoints)
    options = ModbusOptions.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "unit_id": 1,
            "timeout": 2,
            "max_gap": 10,
            "points": points,
        }
    )
    groups = ModbusDriver(options).groups
    tmp = Path("/tmp")
    raw: list[dict[str, float]] = []
    drv: list[dict[str, float]] = []
    sched: list[dict[str, Any]] = []
    # interleaved rounds: the machine's load drifts; adjacent runs see the same load
    for _ in range(rounds):
        raw.append(await bench_raw(port, groups, seconds))
        drv.append(await bench_driver(options, seconds, tmp))
        sched.append(await bench_scheduled(options, seconds, tmp))
    # Paced: both at the same fixed period (2 ms = 500 polls/s), client CPU per poll. This is the
    # like-for-like figure: a gateway polls on a schedule, and so must any raw loop.
    paced_raw: list[dict[str, float]] = []
    paced_sched: list[dict[str, float]] = []
    for _ in range(rounds):
        paced_raw.append(await bench_raw(port, groups, seconds, period=0.002))
        paced_sched.append(await bench_scheduled(options, seconds, tmp, period=0.002))
    paced_ratio = [
        s["cpu_us_per_poll"] / r["cpu_us_per_poll"]
        for r, s in zip(paced_raw, paced_sched, strict=True)
    ]
    ratio_drv = [r["polls_per_s"] / d["polls_per_s"] for r, d in zip(raw, drv, strict=True)]
    ratio_sched = [r["polls_per_s"] / s["polls_per_s"] for r, s in zip(raw, sched, strict=True)]
    return {
        "points": len(points),
        "layout": LAYOUT,
        "requests_per_poll": len(groups),
        "rounds": rounds,
        "seconds_each": seconds,
        "raw_pymodbus_polls_per_s": [round(r["polls_per_s"]) for r in raw],
        "driver_read_loop_polls_per_s": [round(d["polls_per_s"]) for d in drv],
        "poller_scheduler_polls_per_s": [round(s["polls_per_s"]) for s in sched],
        "poller_scheduler_samples_per_s_median": round(
            _median([s["samples_per_s"] for s in sched])
        ),
        "failures": sum(s["failures"] for s in sched),
        "driver_overhead_pct_median": round((_median(ratio_drv) - 1) * 100, 1),
        "overhead_pct_median": round((_median(ratio_sched) - 1) * 100, 1),
        "overhead_pct_best_round": round((min(ratio_sched) - 1) * 100, 1),
        # The gateway's own cost: client-process CPU per poll (the server runs elsewhere).
        "raw_cpu_us_per_poll_median": round(_median([r["cpu_us_per_poll"] for r in raw])),
        "poller_scheduler_cpu_us_per_poll_median": round(
            _median([s["cpu_us_per_poll"] for s in sched])
        ),
        "cpu_overhead_pct_median": round(
            (
                _median(
                    [
                        s["cpu_us_per_poll"] / r["cpu_us_per_poll"]
                        for r, s in zip(raw, sched, strict=True)
                    ]
                )
                - 1
            )
            * 100,
            1,
        ),
        "paced_500_polls_per_s": {
            "raw_cpu_us_per_poll_median": round(_median([r["cpu_us_per_poll"] for r in paced_raw])),
            "poller_scheduler_cpu_us_per_poll_median": round(
                _median([s["cpu_us_per_poll"] for s in paced_sched])
            ),
            "cpu_overhead_pct_median": round((_median(paced_ratio) - 1) * 100, 1),
        },
        "goal_overhead_pct": 10,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="also count instructions per poll under callgrind (N and 2N polls)")
    ap.add_argument("--layout", choices=("mixed", "uint16"), default="mixed",
                    help="mixed: the test layout's types (float32, scaled, strings...); "
                    "uint16: plain registers as in W1/W2")
    ap.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--polls", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    LAYOUT = args.layout
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        asyncio.run(child_polls(args.child, args.port, args.points, args.polls))
        sys.exit(0)
    server, server_port = start_server()
    try:
        report = asyncio.run(main(server_port, args.seconds, args.points, args.rounds))
        if args.instructions:
            report["callgrind"] = instructions(server_port, args.points, args.instructions)
    finally:
        server.terminate()
        server.wait(5)
    print(json.dumps(report, indent=2))
