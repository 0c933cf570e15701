"""RTSP driver fault handling: server killed and restarted, silent and garbage peers, no PyAV.

Every test ends in bounded time: the driver's open/read timeouts are what bound it, and the
harness fails the test if ``close()`` does not return within 15 s.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgegw.drivers.rtsp import RtspDriver, RtspOptions
from edgegw.model import Quality
from edgegw.sdk import DeviceContext, PermanentError

pytestmark = pytest.mark.timeout(60)


async def test_server_killed_and_restarted_reconnects(
    fresh_rtsp_server: Any, run_driver: Any
) -> None:
    server = fresh_rtsp_server
    async with run_driver(
        url=server.url("mjpeg-moving"),
        snapshot_every="300ms",
        metrics_every="500ms",
        frame_deadline="1s",
        read_timeout="1s",
        open_timeout="2s",
        backoff_min="200ms",
        backoff_max="1s",
    ) as (drv, rec):
        await rec.wait_for(lambda: rec.values("snapshot"), 20, "a first snapshot")
        server.kill()
        killed_at = time.monotonic()
        await rec.wait_for(
            lambda: len(rec.samples("fps", quality=Quality.COMM_ERROR)) >= 2,
            15,
            "comm_error after the server died, at the deadline and again on a metrics tick",
        )
        down = rec.samples(quality=Quality.COMM_ERROR)
        assert {s.metric for s in down} == {"brightness", "motion", "fps"}
        assert all(s.value is None for s in down)
        assert drv.stats()["stalled"] == 1

        server.start()
        restarted_at = time.monotonic()
        await rec.wait_for(
            lambda: (
                rec.values("snapshot", after=restarted_at)
                and rec.values("brightness", after=restarted_at)
            ),
            30,
            "snapshots and good metrics after the restart",
        )
        assert drv.stats()["stalled"] == 0
        worker = drv.stats()["worker"]
        assert worker["connects"] >= 2
        assert worker["disconnects"] >= 1
    assert sum(rec.values("reconnects")) >= 1
    # from the first comm_error until the restart, nothing good was reported
    first_error = min(r.at for r in rec.records if r.sample.quality is Quality.COMM_ERROR)
    assert first_error > killed_at
    gap = [
        r
        for r in rec.records
        if first_error <= r.at < restarted_at and r.sample.metric in ("brightness", "motion")
    ]
    assert len(gap) >= 4 and all(r.sample.quality is Quality.COMM_ERROR for r in gap)


@asynccontextmanager
async def tcp_peer(reply: bytes | None) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on a free loopback port: answers ``reply`` to anything, or nothing at all."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while data := await reader.read(4096):
                if reply is not None and b"\r\n\r\n" in data:
                    writer.write(reply)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        server.close()
        await server.wait_closed()


SILENT_OPTS = {
    "open_timeout": "1s",
    "read_timeout": "1s",
    "frame_deadline": "1500ms",
    "metrics_every": "1s",
    "backoff_min": "200ms",
    "backoff_max": "500ms",
}


@pytest.mark.parametrize(
    "reply",
    [
        None,  # accepts and never answers
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # not RTSP
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n\x00\xff garbage \xfe" * 3,  # RTSP-ish garbage
    ],
    ids=["silent", "http", "garbage"],
)
async def test_bad_peer_reports_comm_error_without_hanging(
    run_driver: Any, reply: bytes | None
) -> None:
    async with tcp_peer(reply) as (port, connections):
        started = time.monotonic()
        async with run_driver(url=f"rtsp://127.0.0.1:{port}/stream", **SILENT_OPTS) as (drv, rec):
            await rec.wait_for(
                lambda: len(rec.samples("fps", quality=Quality.COMM_ERROR)) >= 2,
                20,
                "comm_error reported (at the deadline and on a metrics tick)",
            )
            await rec.wait_for(
                lambda: drv.stats()["worker"]["connect_failures"] >= 2,
                20,
                "the driver kept retrying",
            )
        elapsed = time.monotonic() - started
    assert len(connections) >= 2
    assert rec.samples(quality=Quality.GOOD, metric="brightness") == []
    assert rec.samples("snapshot") == []
    assert elapsed < 30  # bounded by the timeouts, not by the peer


async def test_connection_refused(run_driver: Any) -> None:
    async with tcp_peer(None) as (port, _):
        pass  # the port is free again: nothing listens there now
    async with run_driver(url=f"rtsp://127.0.0.1:{port}/x", **SILENT_OPTS) as (drv, rec):
        await rec.wait_for(
            lambda: rec.samples("brightness", quality=Quality.COMM_ERROR),
            20,
            "comm_error for a refused connection",
        )
        assert "refused" in str(drv.stats()["worker"]["last_error"]).lower()


async def test_credentials_never_logged(run_driver: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with tcp_peer(None) as (port, _):
        pass
    url = f"rtsp://admin:s3cret-pw@127.0.0.1:{port}/x"
    async with run_driver(url=url, **SILENT_OPTS) as (_drv, rec):
        await rec.wait_for(lambda: rec.samples("fps", quality=Quality.COMM_ERROR), 20, "comm_error")
    assert "admin:***@" in caplog.text
    assert "s3cret-pw" not in caplog.text


async def test_open_without_pyav_is_a_permanent_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PyAV is installed here; make its import fail the way a missing package does
    # (sys.modules[name] = None makes `import name` raise ImportError).
    monkeypatch.setitem(sys.modules, "av", None)
    for name in ("edgegw.drivers.rtsp.worker", "edgegw.drivers.rtsp.imaging"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    driver = RtspDriver(RtspOptions(url="rtsp://127.0.0.1:1/x"))
    ctx = DeviceContext("cam1", "rtsp", tmp_path, __import__("logging").getLogger("t"))
    with pytest.raises(PermanentError, match=r"install edgegw\[camera\]") as info:
        await driver.open(ctx)
    assert info.value.quality is Quality.CONFIG_ERROR


def test_importing_the_driver_does_not_import_pyav() -> None:
    code = (
        "import sys, edgegw.drivers.rtsp, edgegw.sdk\n"
        "assert 'av' not in sys.modules, 'av imported eagerly'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported eagerly'\n"
        "assert edgegw.sdk.discover_drivers()['rtsp'].cls is edgegw.drivers.rtsp.RtspDriver\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
