"""Firmware through the serial driver's hook: YMODEM to lrzsz's real `rb` on a socat pty pair.

The gateway runs for real (supervisor, bus schedulers, outbox) with two devices: the serial
device whose far end is `rb` (the "bootloader"), and a sim device on its own bus whose polls
must keep going during the transfer. Nothing is mocked: rb is Debian's lrzsz receiver.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial
from serial_harness import SocatPair, poll_until

from edgegw import FirmwareImage, TransientError
from edgegw.runtime.daemon import load
from edgegw.runtime.supervisor import Gateway

# the real peer: Debian's lrzsz (in the Makefile's APT_PACKAGES); never skipped, a missing
# receiver fails here with the fix
assert shutil.which("rb") is not None, "lrzsz's `rb` is not installed: run `make system-deps`"

IMAGE = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(150_000))  # not a multiple of 1 KiB


class Rb:
    """`rb` (YMODEM receive) reading and writing the sensor end of the pty pair."""

    def __init__(self, tty: str, directory: Path) -> None:
        self.tty = tty
        self.dir = directory
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # a bootloader starts with a clean line: drop the plc's earlier poll request, which
        # would otherwise sit in rb's input and be taken for a broken header
        with serial.Serial(self.tty) as port:
            port.reset_input_buffer()
        with self.dir.with_suffix(".log").open("wb") as err:
            self.proc = await asyncio.create_subprocess_shell(
                f"exec rb -vv -y -t 50 < {self.tty} > {self.tty}", cwd=self.dir, stderr=err
            )

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    async def received(self, name: str, data: bytes, within: float = 15.0) -> None:
        """The file is complete and byte-identical. (rb's exit status is not used as proof:
        lrzsz 0.12.21's rb sometimes aborts with "double free" AFTER writing a complete file.)"""
        path = self.dir / name
        await poll_until(
            lambda: path.exists() and path.read_bytes() == data, within, f"{path} complete"
        )
        await self.kill()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


def write_config(tmp: Path, tty: str) -> Path:
    import yaml

    doc = {
        "gateway": {"id": "gw-fw", "state_dir": str(tmp / "state"), "log_level": "warning"},
        "metrics": {"enabled": False},
        "uplink": {"enabled": False},
        "devices": [
            {
                "id": "plc",
                "driver": "serial",
                # polled at start, then rarely: a poll reply window must not eat rb's first 'C'
                # (rb repeats it only every 10 s; start_timeout covers two repeats under load)
                "poll": "60s",
                "options": {
                    "port": tty,
                    "mode": "request",
                    "request": "READ\r\n",
                    "reply_timeout": "200ms",
                    "reopen_min": "100ms",
                    "line": {"parse": "kv"},
                    # block_timeout above rb's longest own timeout (13 s at the first block and
                    # every 128th), as drivers/serial/README.md asks
                    "bootloader": {"start_timeout": "25s", "block_timeout": "15s"},
                },
            },
            {
                "id": "other",
                "driver": "sim",
                "poll": "10ms",  # the transfer of IMAGE over a pty can take ~0.1 s
                "options": {"points": [{"name": "t", "signal": "counter"}]},
            },
        ],
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
async def gateway(tmp_path: Path, pair: SocatPair) -> AsyncIterator[Gateway]:
    cfg, drivers = load(write_config(tmp_path, pair.driver_end))
    gw = Gateway(cfg, drivers)
    await gw.start()
    # the plc's first poll writes its request on the line: let it finish before rb listens
    await poll_until(
        lambda: gw.devices.poller("plc").last_quality is not None, 10, "first plc poll"
    )
    try:
        yield gw
    finally:
        await gw.stop()


def other_polls(gw: Gateway) -> int:
    return int(gw.devices.poller("other").polls)


async def test_image_arrives_byte_identical_and_other_polls_continue(
    gateway: Gateway, pair: SocatPair, tmp_path: Path
) -> None:
    rb = Rb(pair.sensor_end, tmp_path / "rx")
    await rb.start()
    seen: list[int] = []
    before = other_polls(gateway)
    polls_during: list[int] = []
    times: list[float] = []

    def progress(sent: int, total: int) -> None:
        assert total == len(IMAGE)
        seen.append(sent)
        polls_during.append(other_polls(gateway))
        times.append(time.monotonic())

    plc_polls = gateway.devices.poller("plc").polls
    await gateway.update_firmware("plc", FirmwareImage("fw.bin", "2.0", IMAGE), progress)
    await rb.received("fw.bin", IMAGE)
    assert seen[-1] == len(IMAGE) and seen == sorted(seen)
    # the sim device on its own bus kept polling while the transfer ran: at least a third of
    # its 10 ms slots (a transfer that blocked the event loop would leave it at none)
    due = (times[-1] - times[0]) / 0.010
    assert polls_during[-1] - polls_during[0] >= max(1, int(due / 3)), (due, polls_during)
    assert other_polls(gateway) > before
    # and the plc itself was held: at most the poll in flight when the hold began
    assert gateway.devices.poller("plc").polls - plc_polls <= 1
    assert gateway.devices._contexts["plc"].counters.get("firmware_updates") == 1


async def test_cut_line_fails_cleanly_and_is_retried(
    gateway: Gateway, pair: SocatPair, tmp_path: Path
) -> None:
    first = Rb(pair.sensor_end, tmp_path / "rx1")
    await first.start()
    second = Rb(pair.sensor_end, tmp_path / "rx2")
    cut = asyncio.Event()

    def progress(sent: int, total: int) -> None:
        if sent > total // 3 and not cut.is_set():
            cut.set()

    async def cutter() -> None:
        await cut.wait()
        await pair.kill()  # the line is cut mid-transfer
        await first.kill()
        await pair.start()
        # the bootloader comes back once the gateway has reopened the port (a pty drops what
        # is written while its other end is closed, and rb repeats its 'C' only every 10 s)
        link = gateway.devices._polled["plc"].inner.port.link  # type: ignore[attr-defined]
        await poll_until(lambda: link.is_open, 15, "port reopened for the retry")
        await second.start()

    task = asyncio.create_task(cutter())
    await gateway.update_firmware(
        "plc", FirmwareImage("fw.bin", "2.0", IMAGE), progress, attempts=4
    )
    await task
    await second.received("fw.bin", IMAGE)
    partial = tmp_path / "rx1" / "fw.bin"
    assert not partial.exists() or partial.read_bytes() != IMAGE
    counters = gateway.devices._contexts["plc"].counters
    assert counters.get("firmware_failures", 0) >= 1 and counters.get("firmware_updates") == 1


async def test_cut_line_with_no_retries_left_raises_transient(
    gateway: Gateway, pair: SocatPair, tmp_path: Path
) -> None:
    rb = Rb(pair.sensor_end, tmp_path / "rx")
    await rb.start()

    def progress(sent: int, total: int) -> None:
        if sent > total // 4 and rb.proc is not None and rb.proc.returncode is None:
            os.kill(rb.proc.pid, signal.SIGKILL)  # the bootloader dies mid-transfer

    with pytest.raises(TransientError, match="firmware transfer"):
        await gateway.update_firmware(
            "plc", FirmwareImage("fw.bin", "2.0", IMAGE), progress, attempts=1
        )
    # the device is released: a write goes through its bus again (its next poll is 60 s away)
    assert not gateway.devices._device_bus["plc"]._held


async def test_cancellation_aborts_the_transfer_on_the_wire(
    gateway: Gateway, pair: SocatPair, tmp_path: Path
) -> None:
    rb = Rb(pair.sensor_end, tmp_path / "rx")
    await rb.start()
    half = asyncio.Event()

    def progress(sent: int, total: int) -> None:
        if sent > total // 2:
            half.set()

    task = asyncio.create_task(
        gateway.update_firmware("plc", FirmwareImage("fw.bin", "2.0", IMAGE), progress)
    )
    # the transfer may also END before half of it (e.g. no 'C' from rb in time on a loaded
    # machine): never wait on `half` alone, or a failed transfer hangs the test
    halfway = asyncio.create_task(half.wait())
    await asyncio.wait({task, halfway}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    halfway.cancel()
    assert half.is_set(), f"transfer ended before half of the image: {task}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # rb got CAN CAN (or, when they landed inside a block, a broken block and then silence):
    # it never completes the file
    try:
        assert await rb.wait(20) != 0
    except TimeoutError:
        await rb.kill()
    partial = tmp_path / "rx" / "fw.bin"
    assert not partial.exists() or partial.read_bytes() != IMAGE
    assert not gateway.devices._device_bus["plc"]._held
