"""Fixtures of the RTSP driver tests: a real GStreamer RTSP server and a recording harness.

The server (rtsp_server.py) runs under the system python3 because ``gi`` is a Debian package
that the venv cannot import. The harness stands in for the gateway runtime: it opens the
driver with a real DeviceContext, runs ``run(emit)`` as a task with a recording ``emit`` and
closes the driver afterwards, exactly as the runtime's push-driver lifecycle does.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgegw.drivers.rtsp import RtspDriver, RtspOptions
from edgegw.model import Lane, Quality, Sample
from edgegw.sdk import DeviceContext

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """A GStreamer RTSP server subprocess on a fixed loopback port (restartable)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def start(self, timeout: float = 20.0) -> None:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.proc = proc
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                if sel.select(remaining):
                    line = proc.stdout.readline()
                    if line.startswith("READY"):
                        return
                    if not line:  # exited
                        break
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        self.kill()
        raise RuntimeError(f"RTSP test server did not start on port {self.port}: {err}")

    def kill(self) -> None:
        """SIGKILL: the camera vanishes without an RTSP TEARDOWN, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.proc = None


@pytest.fixture(scope="module")
def rtsp_server() -> Iterator[RtspServer]:
    server = RtspServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def fresh_rtsp_server() -> Iterator[RtspServer]:
    """A server of the test's own, for tests that kill and restart it."""
    server = RtspServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass(frozen=True)
class Record:
    sample: Sample
    lane: Lane
    at: float  # monotonic time of the emit


class Recorder:
    """A recording ``emit``: keeps every sample with its lane; lets tests wait for conditions."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._changed = asyncio.Event()

    async def __call__(
        self, samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> None:
        now = time.monotonic()
        self.records.extend(Record(s, lane, now) for s in samples)
        self._changed.set()

    def samples(
        self,
        metric: str | None = None,
        *,
        quality: Quality | None = None,
        after: float = float("-inf"),
    ) -> list[Sample]:
        return [
            r.sample
            for r in self.records
            if (metric is None or r.sample.metric == metric)
            and (quality is None or r.sample.quality is quality)
            and r.at > after
        ]

    def values(self, metric: str, *, after: float = float("-inf")) -> list[Any]:
        return [s.value for s in self.samples(metric, quality=Quality.GOOD, after=after)]

    async def wait_for(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        """Poll ``predicate`` on every emit until it holds or ``within`` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = sorted({(s.metric, s.quality.label) for s in self.samples()})
                raise AssertionError(f"{what}: not within {within}s; seen {seen}")
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


@asynccontextmanager
async def running_driver(
    tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[RtspDriver, Recorder]]:
    """Open the driver, run it with a recording emit, and close it (bounded) at the end."""
    driver = RtspDriver(RtspOptions(**options))
    ctx = DeviceContext(
        device_id="cam1",
        driver_name="rtsp",
        state_dir=tmp_path,
        log=logging.getLogger("edgegw.test.rtsp"),
    )
    recorder = Recorder()
    await driver.open(ctx)
    task = asyncio.create_task(driver.run(recorder))
    try:
        yield driver, recorder
        assert not task.done(), f"run() ended on its own: {task.exception()!r}"
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        # bounded: the decode thread honours open/read timeouts
        await asyncio.wait_for(driver.close(), 15)


@pytest.fixture
def run_driver(
    tmp_path: Path,
) -> Callable[..., Any]:
    def factory(**options: Any) -> Any:
        return running_driver(tmp_path, **options)

    return factory
