"""Serial test harness: socat pty pairs, the scripted sensor process, a recording emit.

Real peers only: ``socat`` links two ptys (the driver opens one end, tests/serial/sensor.py the
other, with pyserial). The harness stands in for the runtime: it opens the driver with a real
``DeviceContext``, runs ``run(emit)`` as a task (stream mode) or calls ``read()`` (request mode)
with a recording ``emit``, and closes the driver afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from edgegw.drivers.serial import SerialDriver, SerialOptions
from edgegw.model import Lane, Quality, Sample
from edgegw.sdk import DeviceContext, Driver, PushDriver

SENSOR = Path(__file__).with_name("sensor.py")


async def poll_until(pred: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """Poll ``pred`` until true; fail the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or pred}")
        await asyncio.sleep(0.01)


class SocatPair:
    """``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B``: restartable at the same paths."""

    def __init__(self, directory: Path) -> None:
        self.driver_end = str(directory / "gw-tty")
        self.sensor_end = str(directory / "sensor-tty")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        for p in (self.driver_end, self.sensor_end):
            if os.path.lexists(p):
                os.unlink(p)
        self.proc = await asyncio.create_subprocess_exec(
            "socat", "-d", "-d",
            f"pty,raw,echo=0,link={self.driver_end}",
            f"pty,raw,echo=0,link={self.sensor_end}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await poll_until(
            lambda: os.path.exists(self.driver_end) and os.path.exists(self.sensor_end),
            what="socat pty links",
        )

    async def kill(self) -> None:
        """SIGKILL: the ptys vanish as when a USB adapter is pulled (links left dangling)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.proc = None


class Sensor:
    """The scripted sensor process (tests/serial/sensor.py) on the sensor end of a pair."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, port: str) -> Sensor:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SENSOR), port,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self = cls(proc)
        assert await self._line() == "ready"
        return self

    async def _line(self, within: float = 10.0) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        return line.decode().strip()

    async def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def command(self, cmd: dict[str, Any], within: float = 10.0) -> None:
        await self.send(cmd)
        assert await self._line(within) == "ok"

    async def write(self, chunks: Sequence[bytes], pause: float = 0.0) -> None:
        await self.command({"write": [c.hex() for c in chunks], "pause": pause})

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


class Recorder:
    """The recording ``emit``: keeps every sample, lets a test wait for a condition."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.calls: list[tuple[Lane, bool]] = []

    async def emit(
        self, samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> None:
        self.samples.extend(samples)
        self.calls.append((lane, durable))

    def metric(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.metric == name]

    def status(self) -> list[Quality]:
        return [s.quality for s in self.samples if s.metric == "_status"]

    async def wait(
        self, pred: Callable[[Recorder], bool], within: float = 10.0, what: str = ""
    ) -> None:
        await poll_until(lambda: pred(self), within, what)


def make_ctx(tmp_path: Path, device_id: str = "sensor-1", shared: dict[str, Any] | None = None,
             refs: dict[str, int] | None = None) -> DeviceContext:
    ctx = DeviceContext(
        device_id=device_id,
        driver_name="serial",
        state_dir=tmp_path / device_id,
        log=logging.getLogger(f"test.{device_id}"),
    )
    if shared is not None and refs is not None:
        ctx._shared, ctx._shared_refs = shared, refs  # one gateway-wide pool, as the runtime
    return ctx


def make_driver(options: dict[str, Any]) -> Any:
    """The driver ``SerialDriver(options)`` gives for the mode (stream or request variant)."""
    return SerialDriver(SerialOptions.model_validate(options))


@asynccontextmanager
async def running(driver: Driver, ctx: DeviceContext, rec: Recorder) -> AsyncIterator[None]:
    """Open a push driver and run it as the runtime does; cancel and close on exit."""
    assert isinstance(driver, PushDriver)
    await driver.open(ctx)
    task = asyncio.create_task(driver.run(rec.emit))
    try:
        yield
        assert not task.done(), task.exception() if task.done() else None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()
