"""ModbusDriver against a real pymodbus TCP server (subprocess): values, coalescing, writes,
bad answers, silence. Also RTU framing over TCP (rtu_over_tcp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgegw import BadDataError, Columns, PermanentError, PointValue, Quality, TransientError
from edgegw.drivers.modbus import ModbusDriver
from edgegw.drivers.modbus.codec import compile_decoder
from edgegw.drivers.modbus.driver import WHOLE

from .modbus_sim import driver_points, layout
from .simproc import Devices, SimServer


def expected(unit: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in layout(unit):
        value = p["value"]
        if p.get("max") is not None and value > p["max"]:
            value = PointValue(value, Quality.OUT_OF_RANGE)
        out[p["name"]] = value
    return out


async def open_unit(devices: Devices, server: SimServer, unit: int, **kw: Any) -> ModbusDriver:
    options: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "unit_id": unit,
                               "timeout": 0.5, "max_gap": 10, "points": driver_points(unit)}
    return await devices.open(f"dev{unit}", **{**options, **kw})


async def test_every_kind_type_and_order_on_three_units(
    tcp_server: SimServer, devices: Devices
) -> None:
    drivers = {u: await open_unit(devices, tcp_server, u) for u in (1, 2, 3)}
    assert devices.shared_count == 1  # one client for the endpoint, shared by the unit ids
    for unit, driver in drivers.items():
        result = await driver.read()
        assert dict(result) == expected(unit)
    # coalescing: 70 points per unit in 4 requests (holding, input, coils, discrete inputs)
    for unit, driver in drivers.items():
        assert len(driver.groups) == 4
        assert tcp_server.counts(unit) == {3: 1, 4: 1, 1: 1, 2: 1}


async def test_max_gap_zero_splits_requests(tcp_server: SimServer, devices: Devices) -> None:
    driver = await open_unit(devices, tcp_server, 1, max_gap=0)
    # holes in the layout (28-29, 46-49, 55) split the 0..58 block into 4 requests per kind
    assert (await driver.read())["h_uint16_54"] == 0x1234 + 1
    counts = tcp_server.counts(1)
    assert counts[3] == counts[4] == 4 and counts[1] == counts[2] == 1


async def test_writes_change_the_server(tcp_server: SimServer, devices: Devices) -> None:
    points = [
        {"name": "sp", "address": 200, "type": "float32", "writable": True},
        {"name": "raw", "address": 202, "writable": True, "scale": 0.1, "offset": -10},
        {"name": "wide", "address": 204, "type": "int64", "writable": True, "word_order": "little"},
        {"name": "flag", "address": 208, "type": "bit", "bit": 4, "writable": True},
        {"name": "relay", "kind": "coil", "address": 50, "writable": True},
        {"name": "ro", "address": 209},
        {"name": "limited", "address": 210, "writable": True, "max": 100},
    ]
    driver = await devices.open("w", host="127.0.0.1", port=tcp_server.port, unit_id=2,
                                points=points)
    await driver.write("sp", 21.5)
    await driver.write("raw", 13.0)
    await driver.write("wide", -5)
    tcp_server.cmd(op="set", unit=2, table="h", address=208, values=[0b1])
    await driver.write("flag", True)
    await driver.write("relay", True)
    regs = tcp_server.cmd(op="get", unit=2, table="h", address=200, count=9)["values"]
    assert regs[0:2] == [0x41AC, 0x0000]  # 21.5 as float32, big-endian words
    assert regs[2] == 230  # (13 - -10) / 0.1
    assert regs[4:8] == [0xFFFB, 0xFFFF, 0xFFFF, 0xFFFF]  # -5, low word first
    assert regs[8] == 0b1_0001  # bit 4 set, bit 0 kept
    assert tcp_server.cmd(op="get", unit=2, table="c", address=50)["values"] == [True]
    result = await driver.read()
    assert result["sp"] == 21.5 and result["raw"] == pytest.approx(13.0) and result["wide"] == -5
    assert result["flag"] is True and result["relay"] is True
    await driver.write("flag", False)
    assert tcp_server.cmd(op="get", unit=2, table="h", address=208)["values"] == [0b1]
    with pytest.raises(PermanentError, match="not writable"):
        await driver.write("ro", 1)
    with pytest.raises(PermanentError, match="unknown point"):
        await driver.write("nope", 1)
    with pytest.raises(PermanentError, match="outside"):
        await driver.write("limited", 101)
    with pytest.raises(PermanentError, match="does not fit"):
        await driver.write("raw", 1e9)
    tcp_server.mode("exception", unit=2)
    with pytest.raises(PermanentError, match="exception response 2"):
        await driver.write("relay", False)


async def test_exception_response_marks_only_that_group(
    tcp_server: SimServer, devices: Devices
) -> None:
    # unit 1: holding registers 0.. exist; 1000.. too (all zero); points split into 2 groups
    driver = await devices.open(
        "x", host="127.0.0.1", port=tcp_server.port, unit_id=1,
        points=[{"name": "a", "address": 1}, {"name": "b", "address": 1000, "kind": "input"}])
    tcp_server.mode("exception", unit=1)
    with pytest.raises(BadDataError, match="every read failed"):
        await driver.read()
    assert driver.ctx.counters["exception_response"] == 2
    tcp_server.mode("normal", unit=1)
    assert await driver.read() == {"a": 40001, "b": 0}


async def test_partial_failure_is_per_point_bad_data(tcp_server: SimServer, devices: Devices,
                                                     tmp_path: Path) -> None:
    # a second server whose unit 1 answers input reads "short": the input group fails alone
    driver = await open_unit(devices, tcp_server, 1)
    tcp_server.mode("short", unit=1)
    result = await driver.read()
    assert result["h_int16_0"] == PointValue(None, Quality.BAD_DATA)
    assert result["i_uint16_1"] == PointValue(None, Quality.BAD_DATA)
    assert result["c_0"] == expected(1)["c_0"]  # bit reads are not shortened: still good
    assert driver.ctx.counters["bad_frame"] == 2
    tcp_server.mode("normal", unit=1)
    assert dict(await driver.read()) == expected(1)


async def test_malformed_frame_is_bad_data_and_connection_survives(
    tcp_server: SimServer, devices: Devices
) -> None:
    driver = await open_unit(devices, tcp_server, 3)
    other = await open_unit(devices, tcp_server, 2)
    tcp_server.mode("malformed", unit=3)
    result = await driver.read()  # register responses claim 250 bytes: undecodable
    assert result["h_float64_16"] == result["i_int32_2"] == PointValue(None, Quality.BAD_DATA)
    assert driver.ctx.counters["bad_frame"] == 2
    only_registers = await open_unit(devices, tcp_server, 3, points=driver_points(3)[:5])
    with pytest.raises(BadDataError, match="every read failed"):
        await only_registers.read()
    assert dict(await other.read()) == expected(2)  # the shared client still works
    tcp_server.mode("normal", unit=3)
    assert dict(await driver.read()) == expected(3)


async def test_silent_device_is_transient_and_recovers(
    tcp_server: SimServer, devices: Devices
) -> None:
    driver = await open_unit(devices, tcp_server, 1, timeout=0.2)
    tcp_server.mode("silent", unit=1)
    with pytest.raises(TransientError, match="no answer") as info:
        await driver.read()
    assert not isinstance(info.value, BadDataError)
    tcp_server.mode("normal", unit=1)
    assert dict(await driver.read()) == expected(1)


async def test_connection_refused_is_transient(devices: Devices, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = await devices.open("gone", host="127.0.0.1", port=port, timeout=0.3,
                                points=[{"name": "a", "address": 0}])
    with pytest.raises(TransientError, match="cannot connect"):
        await driver.read()


async def test_rtu_over_tcp(tmp_path: Path, devices: Devices) -> None:
    server = SimServer("--tcp", "0", "--rtu-over-tcp", "--units", "4,5", log_dir=tmp_path)
    try:
        for unit in (4, 5):
            driver = await devices.open(
                f"r{unit}", transport="rtu_over_tcp", host="127.0.0.1", port=server.port,
                unit_id=unit, timeout=0.5, max_gap=10, points=driver_points(unit))
            assert dict(await driver.read()) == expected(unit)
        assert devices.shared_count == 1
        server.mode("garbage", unit=5)
        with pytest.raises(BadDataError):
            await driver.read()
    finally:
        server.close()


async def test_mismatched_line_settings_on_one_bus_are_refused(
    tcp_server: SimServer, devices: Devices
) -> None:
    base = {"transport": "rtu_over_tcp", "host": "127.0.0.1", "port": tcp_server.port,
            "points": [{"name": "a", "address": 0}]}
    await devices.open("a", **base, baudrate=9600)
    with pytest.raises(PermanentError, match="baudrate"):
        await devices.open("b", **base, baudrate=19200, unit_id=2)


async def test_plain_register_groups_decode_like_the_point_readers(
    tcp_server: SimServer, devices: Devices
) -> None:
    """Groups of plain uint16 registers and of bits are decoded in one step (issue 13): the
    values, their order and a group's BAD_DATA on a bad answer are those of the per-point
    readers; a group with one scaled or little-endian point keeps the per-point readers."""
    plain = [p for p in driver_points(1) if p["kind"] == "coil" or (
        p["kind"] == "holding" and p.get("type") == "uint16" and "scale" not in p
        and "byte_order" not in p and p.get("max") is None)]
    assert {p["kind"] for p in plain} == {"holding", "coil"}
    driver = await open_unit(devices, tcp_server, 1, points=plain)
    assert all(g is not None for g in driver._pick)  # the fast path is taken
    want = {k: v for k, v in expected(1).items() if k in {p["name"] for p in plain}}
    got = await driver.read()
    assert list(got.items()) == [(p["name"], want[p["name"]]) for p in plain]
    assert all(type(v) is (bool if k.startswith("c_") else int) for k, v in got.items())
    mixed = await open_unit(devices, tcp_server, 1, max_gap=60, points=[
        p for p in driver_points(1) if p["name"] in ("h_uint16_1", "h_uint16_54")])
    assert mixed._pick == [None]
    assert dict(await mixed.read()) == {"h_uint16_1": 40001, "h_uint16_54": 4661}
    # memory (W3's 10,000 points): a plain group keeps no decoder per point, and points of
    # one layout share one decoder function
    assert driver._readers == [[] for _ in driver.groups]
    assert [len(r) for r in mixed._readers] == [2]
    assert compile_decoder("float32", 2, word_order="little") is compile_decoder(
        "float32", 2, word_order="little")


async def test_contiguous_plain_registers_are_returned_as_columns(
    tcp_server: SimServer, devices: Devices
) -> None:
    """Points that are a group's registers one by one take the response's register list as it
    is (issue 13, goal 5: no dict, no per-point pick); the values are those the per-point
    readers give; a failed group still comes back as a dict with BAD_DATA points."""
    points = [{"name": f"r{a}", "address": a} for a in range(12)]
    driver = await open_unit(devices, tcp_server, 1, points=points)
    assert driver._pick == [WHOLE]
    got = await driver.read()
    assert type(got) is Columns and got.names == tuple(p["name"] for p in points)
    assert all(type(v) is int for v in got.data)
    # the same registers through the per-point readers (a range makes the group non-plain)
    ranged = await open_unit(devices, tcp_server, 1, points=[
        {**p, "min": 0} if p["address"] == 0 else p for p in points])
    assert ranged._pick == [None]
    slow = await ranged.read()
    assert type(slow) is Columns  # no point out of its range: still columns
    assert list(slow.items()) == list(got.items())
    assert got["r1"] == 40001  # layout(1): holding register 1
    with_coil = await open_unit(devices, tcp_server, 1, points=[
        *points, {"name": "c_0", "address": 0, "kind": "coil"}])
    tcp_server.mode("short", unit=1)  # register answers short, bit answers whole
    result = await with_coil.read()
    assert type(result) is dict
    assert result["r0"] == result["r11"] == PointValue(None, Quality.BAD_DATA)
    assert result["c_0"] == expected(1)["c_0"]
    tcp_server.mode("normal", unit=1)
    assert type(await with_coil.read()) is Columns
