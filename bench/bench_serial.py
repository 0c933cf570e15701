"""Serial driver throughput through a socat pty pair, against a raw pyserial read loop (same run).

A writer process blasts N text lines into one end of a pty pair; the other end is read by
(1) a plain pyserial loop that only counts newlines (the ceiling) and (2) the serial driver in
stream mode with regex parsing, whose emit only counts samples. Prints JSON:
lines/s of both and the driver/raw ratio. Usage: python bench/bench_serial.py [--lines N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import serial

from edgegw.drivers.serial import SerialDriver, SerialOptions, SerialStreamDriver
from edgegw.model import Lane, Sample
from edgegw.sdk import DeviceContext

LINE_REGEX = r"^T=(?P<temp>-?\d+\.\d+);H=(?P<hum>\d+)$"

WRITER = r"""
import sys, serial
port = serial.Serial(sys.argv[1], timeout=1)
n = int(sys.argv[2])
data = b"".join(b"T=%d.%02d;H=%d\r\n" % (i % 40, i % 100, i % 100) for i in range(n))
sys.stdin.readline()  # go
for i in range(0, len(data), 4096):
    port.write(data[i:i + 4096])
port.flush()
sys.stdin.readline()  # wait before closing (socat would end the pair)
"""


class Pair:
    def __init__(self, directory: Path) -> None:
        self.a, self.b = str(directory / "a"), str(directory / "b")
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty links")
            time.sleep(0.01)

    def writer(self, n: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", WRITER, self.b, str(n)],
                                stdin=subprocess.PIPE)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def go(w: subprocess.Popen[bytes]) -> None:
    assert w.stdin is not None
    w.stdin.write(b"\n")
    w.stdin.flush()


def finish(w: subprocess.Popen[bytes]) -> None:
    assert w.stdin is not None
    w.stdin.write(b"\n")
    w.stdin.close()
    w.wait()


def raw_ceiling(directory: Path, n: int) -> float:
    pair = Pair(directory)
    try:
        port = serial.Serial(pair.a, timeout=0.5)
        w = pair.writer(n)
        time.sleep(0.3)  # let the writer open its end before "go" (bench pacing only)
        seen, t0 = 0, time.perf_counter()
        go(w)
        while seen < n:
            chunk = port.read(max(1, port.in_waiting))
            seen += chunk.count(b"\n")
        elapsed = time.perf_counter() - t0
        finish(w)
        port.close()
        return n / elapsed
    finally:
        pair.close()


async def driver_rate(directory: Path, n: int) -> float:
    pair = Pair(directory)
    got = 0
    done = asyncio.Event()

    async def emit(samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY,
                   durable: bool = False) -> None:
        nonlocal got
        got += sum(1 for s in samples if s.metric == "hum")
        if got >= n:
            done.set()

    opts = SerialOptions.model_validate({
        "port": pair.a, "baudrate": 115200,
        "line": {"regex": LINE_REGEX, "terminator": "\r\n", "types": {"temp": "float"}},
    })
    driver = SerialDriver(opts)
    assert isinstance(driver, SerialStreamDriver)
    ctx = DeviceContext("bench", "serial", directory, logging.getLogger("bench"))
    await driver.open(ctx)
    task = asyncio.create_task(driver.run(emit))
    try:
        deadline = time.monotonic() + 10
        while not (hasattr(driver, "link") and driver.link.is_open):
            if time.monotonic() > deadline:
                raise RuntimeError("driver did not open the port")
            await asyncio.sleep(0.01)
        w = pair.writer(n)
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        go(w)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - t0
        finish(w)
        return n / elapsed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()
        pair.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_ceiling(Path(tmp), args.lines)
        drv = asyncio.run(driver_rate(Path(tmp), args.lines))
    print(json.dumps({
        "bench": "serial_stream_lines",
        "lines": args.lines,
        "raw_pyserial_lines_per_s": round(raw),
        "driver_lines_per_s": round(drv),
        "driver_samples_per_s": round(drv * 2),
        "driver_vs_raw": round(drv / raw, 3),
    }))


if __name__ == "__main__":
    main()
