"""Serial driver against a scripted sensor on a real socat pty pair (stream and request mode)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serial_harness import (
    Recorder,
    Sensor,
    SocatPair,
    make_ctx,
    make_driver,
    poll_until,
    running,
)

from edgegw.drivers.serial import SerialRequestDriver, SerialStreamDriver
from edgegw.drivers.serial.checksums import crc16_modbus
from edgegw.model import Quality
from edgegw.sdk import BadDataError, PermanentError, TransientError

LINE = {
    "regex": r"^T=(?P<temp>-?\d+\.\d+);H=(?P<hum>\d+)$",
    "types": {"temp": "float", "hum": "int"},
    "terminator": "\r\n",
    "max_length": 32,
}
BINARY = {
    "start": "AA 55",
    "length": {"offset": 2, "size": 1, "counts": "payload"},
    "layout": ">hH",
    "fields": ["temp", "hum"],
    "checksum": {"type": "crc16-modbus", "covers_from": 2},
    "max_frame": 64,
}
FAST_REOPEN = {"reopen_min": 0.05, "reopen_max": 0.2}


def bin_frame(temp: int, hum: int, *, corrupt: bool = False) -> bytes:
    body = bytes([4]) + struct.pack(">hH", temp, hum)
    crc = crc16_modbus(body) ^ (0x0100 if corrupt else 0)
    return b"\xaa\x55" + body + crc.to_bytes(2, "little")


def values(rec: Recorder, metric: str) -> list[Any]:
    return [s.value for s in rec.metric(metric)]


async def opened(driver: SerialStreamDriver, times: int = 1) -> None:
    await poll_until(lambda: hasattr(driver, "link") and driver.link.opens >= times
                     and driver.link.is_open, what=f"driver port open #{times}")


# ------------------------------------------------------------------------ stream mode
async def test_stream_lines_exact_with_garbage_split_and_overlong(
    pair: SocatPair, sensor_factory: Callable[[], Any], tmp_path: Path
) -> None:
    driver = make_driver({"port": pair.driver_end, "line": LINE, "status_interval": 0.3})
    assert isinstance(driver, SerialStreamDriver)
    ctx, rec = make_ctx(tmp_path), Recorder()
    async with running(driver, ctx, rec):
        await opened(driver)
        sensor: Sensor = await sensor_factory()
        await sensor.write(
            [
                b"T=21.50;H=40\r\n",
                b"T=21.",  # one line split over three reads
                b"60;H=4",
                b"1\r\n#$%garbage",
                b"!!\r\n",  # parse_error
                b"T=" + b"9" * 50 + b"\r\n",  # line_too_long
                b"\x00\x01T=-1.25;H=42\r\n",  # leading noise: the regex is anchored -> parse_error
                b"T=-1.25;H=42\r\n",
            ],
            pause=0.03,
        )
        await rec.wait(lambda r: len(r.metric("hum")) == 3, what="three readings")
        # The periodic _status carries the bad frames of its interval (BAD_DATA when > 0).
        await rec.wait(lambda r: sum(int(s.value or 0) for s in r.metric("_status")) == 3,
                       what="bad frames reported through _status")
    assert values(rec, "temp") == [21.5, 21.6, -1.25]
    assert values(rec, "hum") == [40, 41, 42]
    assert all(s.quality is Quality.GOOD for s in rec.metric("temp") + rec.metric("hum"))
    assert dict(ctx.counters) == {"parse_error": 2, "line_too_long": 1}
    for s in rec.metric("_status"):
        assert s.quality is (Quality.BAD_DATA if s.value else Quality.GOOD)


async def test_stream_binary_exact_with_garbage_partial_and_bad_checksum(
    pair: SocatPair, sensor_factory: Callable[[], Any], tmp_path: Path
) -> None:
    driver = make_driver({"port": pair.driver_end, "binary": BINARY, "scale": {"temp": 0.1}})
    ctx, rec = make_ctx(tmp_path), Recorder()
    good = [(215, 40), (-12, 41), (300, 42), (0, 43)]
    f = [bin_frame(t, h) for t, h in good]
    async with running(driver, ctx, rec):
        await opened(driver)
        sensor: Sensor = await sensor_factory()
        await sensor.write(
            [
                b"\x13\x37\x00" + f[0][:4],  # garbage run 1, then half a frame
                f[0][4:],
                bin_frame(100, 1, corrupt=True),  # checksum_error
                f[1][:3],  # truncated frame (sensor reset) followed by a full one
                f[1],
                b"\x42" + f[2],  # garbage run 2
                f[3][:1],
                f[3][1:],
            ],
            pause=0.03,
        )
        await rec.wait(lambda r: len(r.metric("hum")) == 4, what="four frames")
    assert [round(v, 1) for v in values(rec, "temp")] == [21.5, -1.2, 30.0, 0.0]
    assert values(rec, "hum") == [h for _, h in good]
    # The truncated frame's claimed length runs into the next frame: its checksum fails too.
    assert dict(ctx.counters) == {
        "garbage": 2, "garbage_bytes": 4, "checksum_error": 2,
    }


# ------------------------------------------------------------------------ request mode
async def test_request_mode_replies_timeouts_and_bad_data(
    pair: SocatPair, sensor_factory: Callable[[], Any], tmp_path: Path
) -> None:
    driver = make_driver(
        {"port": pair.driver_end, "mode": "request", "request": "MEAS?\r\n", "line": LINE,
         "reply_timeout": 2}
    )
    assert isinstance(driver, SerialRequestDriver)
    ctx = make_ctx(tmp_path)
    await driver.open(ctx)
    sensor: Sensor = await sensor_factory()
    req = b"MEAS?\r\n".hex()
    await sensor.send({"pause": 0.03, "respond": [
        {"request": req, "reply": [b"T=22.".hex(), b"00;H=5".hex(), b"0\r\n".hex()]},
        {"request": req, "reply": [b"ERR\r\n".hex()]},  # answers, but malformed
        {"request": req, "reply": None},  # silent
        {"request": req, "reply": [b"T=23.25;H=51\r\n".hex()]},
    ]})
    try:
        assert await driver.read() == {"temp": 22.0, "hum": 50}
        with pytest.raises(BadDataError, match="malformed reply"):
            await driver.read()
        with pytest.raises(TransientError, match="no reply") as silent:
            await driver.read()
        assert not isinstance(silent.value, BadDataError)
        assert await driver.read() == {"temp": 23.25, "hum": 51}
        assert await sensor._line() == "ok"  # the sensor saw exactly the four requests
    finally:
        await driver.close()
    assert dict(ctx.counters) == {"parse_error": 1, "timeout": 1}


async def test_request_mode_two_devices_share_one_port(
    pair: SocatPair, sensor_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """RS-485 multi-drop: two addressed sensors on one port, one exchange at a time."""
    shared: dict[str, Any] = {}
    refs: dict[str, int] = {}
    base = {"port": pair.driver_end, "mode": "request", "binary": BINARY, "reply_timeout": 1}
    a = make_driver(base | {"request_hex": "01 52"})
    b = make_driver(base | {"request_hex": "02 52"})
    ctx_a = make_ctx(tmp_path, "a", shared, refs)
    ctx_b = make_ctx(tmp_path, "b", shared, refs)
    await a.open(ctx_a)
    await b.open(ctx_b)
    assert a.port is b.port
    sensor: Sensor = await sensor_factory()
    await sensor.send({"respond": [
        {"request": "0152", "reply": [bin_frame(10, 1).hex()]},
        {"request": "0252", "reply": [bin_frame(20, 2).hex()]},
        {"request": "0152", "reply": [bin_frame(11, 3, corrupt=True).hex()]},
        {"request": "0252", "reply": [bin_frame(21, 4).hex()]},
    ]})
    try:
        results = await asyncio.gather(a.read(), b.read())  # serialised by the port lock
        assert results == [{"temp": 10, "hum": 1}, {"temp": 20, "hum": 2}]
        with pytest.raises(BadDataError, match="checksum_error"):
            await a.read()
        assert await b.read() == {"temp": 21, "hum": 4}
    finally:
        await a.close()
        await b.close()
    assert shared == {} and refs == {}  # the last close released the port
    assert dict(ctx_a.counters) == {"checksum_error": 1}
    assert dict(ctx_b.counters) == {}


async def test_request_mode_commands_acked_refused_silent_and_unknown(
    pair: SocatPair, sensor_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """Writes (rule actions, commands) go out as the configured command on the shared port."""
    driver = make_driver(
        {"port": pair.driver_end, "mode": "request", "request": "MEAS?\r\n", "line": LINE,
         "reply_timeout": 1,
         "commands": {"setpoint": {"send": "SP {value:.1f}\r\n", "ack": "^OK"},
                      "reset": {"send": "RST\r\n"}}}
    )
    assert isinstance(driver, SerialRequestDriver)
    ctx = make_ctx(tmp_path)
    await driver.open(ctx)
    sensor: Sensor = await sensor_factory()
    await sensor.send({"respond": [
        {"request": b"SP 21.5\r\n".hex(), "reply": [b"OK 21.5\r\n".hex()]},
        {"request": b"MEAS?\r\n".hex(), "reply": [b"T=21.50;H=40\r\n".hex()]},
        {"request": b"SP 99.0\r\n".hex(), "reply": [b"ERR range\r\n".hex()]},
        {"request": b"SP 20.0\r\n".hex(), "reply": None},  # silent
        {"request": b"RST\r\n".hex(), "reply": None},  # no ack configured
    ]})
    try:
        await driver.write("setpoint", 21.5)
        assert await driver.read() == {"temp": 21.5, "hum": 40}
        with pytest.raises(BadDataError, match=r"refused .* 'ERR range'"):
            await driver.write("setpoint", 99)
        with pytest.raises(TransientError, match="no reply"):
            await driver.write("setpoint", 20)
        await driver.write("reset", 1)
        with pytest.raises(PermanentError, match="no command for point 'valve'"):
            await driver.write("valve", 1)
        assert await sensor._line() == "ok"  # the sensor saw every command, in order
    finally:
        await driver.close()
    assert dict(ctx.counters) == {"commands": 2, "command_refused": 1, "command_timeout": 1}


# ------------------------------------------------------------------------ port vanishes
async def test_stream_recovers_when_pty_pair_is_killed_and_recreated(
    pair: SocatPair, tmp_path: Path
) -> None:
    driver = make_driver({"port": pair.driver_end, "line": LINE} | FAST_REOPEN)
    ctx, rec = make_ctx(tmp_path), Recorder()
    async with running(driver, ctx, rec):
        await opened(driver)
        sensor = await Sensor.start(pair.sensor_end)
        await sensor.write([b"T=1.00;H=1\r\n"])
        await rec.wait(lambda r: values(r, "hum") == [1], what="first reading")

        await pair.kill()  # the adapter is pulled
        await sensor.stop()
        await rec.wait(lambda r: Quality.COMM_ERROR in r.status(), what="comm_error status")

        await pair.start()  # ... and plugged in again at the same path
        await opened(driver, times=2)
        sensor = await Sensor.start(pair.sensor_end)
        try:
            await sensor.write([b"T=2.00;H=2\r\n"])
            await rec.wait(lambda r: values(r, "hum") == [1, 2], what="reading after replug")
        finally:
            await sensor.stop()
    assert rec.status()[-2:] == [Quality.COMM_ERROR, Quality.GOOD]
    assert ctx.counters["port_lost"] == 1
    assert values(rec, "temp") == [1.0, 2.0]


async def test_request_mode_recovers_without_restart(pair: SocatPair, tmp_path: Path) -> None:
    driver = make_driver(
        {"port": pair.driver_end, "mode": "request", "request": "R\r\n", "line": LINE,
         "reply_timeout": 2} | FAST_REOPEN
    )
    ctx = make_ctx(tmp_path)
    await driver.open(ctx)
    plan = {"respond": [{"request": b"R\r\n".hex(), "reply": [b"T=5.00;H=5\r\n".hex()]}] * 20}
    sensor = await Sensor.start(pair.sensor_end)
    try:
        await sensor.send(plan)
        assert await driver.read() == {"temp": 5.0, "hum": 5}
        await pair.kill()
        await sensor.stop()
        with pytest.raises(TransientError):
            await driver.read()
        await pair.start()
        sensor = await Sensor.start(pair.sensor_end)
        await sensor.send(plan)

        result: dict[str, Any] = {}

        async def poll() -> None:  # the runtime's schedule, compressed
            while True:
                try:
                    result.update(await driver.read())
                    return
                except TransientError:
                    await asyncio.sleep(0.05)

        await asyncio.wait_for(poll(), 10)
        assert result == {"temp": 5.0, "hum": 5}
    finally:
        await sensor.stop()
        await driver.close()
    assert ctx.counters["port_unavailable"] >= 1
