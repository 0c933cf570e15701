"""Pure parts of the Modbus driver: codec round trips, coalescing plans, option validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus.client import ModbusTcpClient

from edgegw.drivers.modbus import ModbusDriver, ModbusOptions, ModbusPoint
from edgegw.drivers.modbus.codec import CodecError, decode, encode
from edgegw.drivers.modbus.planner import plan_reads

INT_TYPES = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
orders = st.sampled_from(["big", "little"])


@given(data=st.data(), dtype=st.sampled_from(sorted(INT_TYPES)), wo=orders, bo=orders)
def test_integer_round_trip(data: st.DataObject, dtype: str, wo: str, bo: str) -> None:
    low, high = INT_TYPES[dtype]
    value = data.draw(st.integers(low, high))
    regs = encode(value, dtype, word_order=wo, byte_order=bo)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, dtype, word_order=wo, byte_order=bo) == value


@given(value=st.floats(allow_nan=False), wo=orders, bo=orders)
def test_float64_round_trip(value: float, wo: str, bo: str) -> None:
    regs = encode(value, "float64", word_order=wo, byte_order=bo)
    assert decode(regs, "float64", word_order=wo, byte_order=bo) == value


@given(value=st.floats(width=32, allow_nan=False), wo=orders)
def test_float32_matches_pymodbus(value: float, wo: str) -> None:
    """Our codec and pymodbus' own converter agree (byte order big, the only one it knows)."""
    ours = encode(value, "float32", word_order=wo)
    theirs = ModbusTcpClient.convert_to_registers(value, ModbusTcpClient.DATATYPE.FLOAT32,
                                                  word_order=wo)  # type: ignore[arg-type]
    assert ours == theirs
    assert decode(theirs, "float32", word_order=wo) == value


def test_byte_order_little_swaps_bytes_in_each_register() -> None:
    assert encode(0x11223344, "uint32") == [0x1122, 0x3344]
    assert encode(0x11223344, "uint32", byte_order="little") == [0x2211, 0x4433]
    assert encode(0x11223344, "uint32", word_order="little") == [0x3344, 0x1122]
    both = {"word_order": "little", "byte_order": "little"}
    assert decode([0x4433, 0x2211], "uint32", **both) == 0x11223344


def test_string_bit_and_bool() -> None:
    regs = encode("PUMP-7", "string", length=4)
    assert len(regs) == 4 and decode(regs, "string") == "PUMP-7"
    assert decode(encode("ab", "string", length=2, byte_order="little"), "string",
                  byte_order="little") == "ab"
    assert decode([0b1000_0000_0000_0100], "bit", bit=2) is True
    assert decode([0b1000_0000_0000_0100], "bit", bit=15) is True
    assert decode([0b1000_0000_0000_0100], "bit", bit=3) is False
    assert decode([7], "bool") is True and decode([0], "bool") is False


@pytest.mark.parametrize(
    ("value", "dtype", "kw"),
    [(70000, "uint16", {}), (-1, "uint32", {}), (2**63, "int64", {}), ("x", "int16", {}),
     (math.inf, "int32", {}), ("too long!", "string", {"length": 2}), (1e39, "float32", {})],
)
def test_encode_rejects_what_does_not_fit(value: Any, dtype: str, kw: dict[str, Any]) -> None:
    with pytest.raises(CodecError):
        encode(value, dtype, **kw)


def test_decode_rejects_wrong_register_count() -> None:
    with pytest.raises(CodecError, match="needs 2 registers"):
        decode([1, 2, 3], "float32")


def _p(name: str, address: int, kind: str = "holding", **kw: Any) -> ModbusPoint:
    return ModbusPoint(name=name, kind=kind, address=address, **kw)  # type: ignore[arg-type]


def test_planner_merges_within_gap_and_limit() -> None:
    points = [_p("a", 0), _p("b", 1, type="float32"), _p("c", 6), _p("d", 40),
              _p("e", 0, "input"), _p("f", 3, "coil"), _p("g", 1999, "coil")]
    groups = plan_reads(points, max_gap=3, max_registers=125, max_bits=2000)
    assert [(g.kind, g.start, g.count) for g in groups] == [
        ("holding", 0, 7), ("holding", 40, 1), ("input", 0, 1), ("coil", 3, 1), ("coil", 1999, 1)]
    wide = plan_reads(points, max_gap=2000, max_registers=125, max_bits=2000)
    assert [(g.kind, g.start, g.count) for g in wide][-1] == ("coil", 3, 1997)
    assert [p.name for p in groups[0].points] == ["a", "b", "c"]
    tight = plan_reads(points, max_gap=0, max_registers=125, max_bits=100)
    assert [(g.kind, g.start, g.count) for g in tight] == [
        ("holding", 0, 3), ("holding", 6, 1), ("holding", 40, 1), ("input", 0, 1),
        ("coil", 3, 1), ("coil", 1999, 1)]


@given(addresses=st.lists(st.integers(0, 500), min_size=1, max_size=40),
       gap=st.integers(0, 20), limit=st.integers(4, 125))
def test_planner_invariants(addresses: list[int], gap: int, limit: int) -> None:
    points = [_p(f"p{i}", a, type="uint32") for i, a in enumerate(addresses)]
    groups = plan_reads(points, max_gap=gap, max_registers=limit, max_bits=2000)
    seen = [p.name for g in groups for p in g.points]
    assert sorted(seen) == sorted(p.name for p in points)
    for g in groups:
        assert g.count <= limit
        for p in g.points:
            assert g.start <= p.address and p.address + p.width <= g.start + g.count


BASE: dict[str, Any] = {"host": "10.0.0.5", "points": [{"name": "t", "address": 0}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [({"points": [{"name": "c", "kind": "coil", "address": 0, "type": "int16"}]}, "use type bool"),
     ({"points": [{"name": "s", "address": 0, "type": "string"}]}, "needs length"),
     ({"points": [{"name": "b", "address": 0, "type": "bit"}]}, "needs bit"),
     ({"points": [{"name": "b", "address": 0, "type": "bit", "bit": 16}]}, "less than or equal"),
     ({"points": [{"name": "x", "address": 65535, "type": "float32"}]}, "runs past 65535"),
     ({"points": [{"name": "x", "address": 70000}]}, "less than or equal"),
     ({"points": [{"name": "x", "address": 0}, {"name": "x", "address": 1}]}, "duplicate point"),
     ({"points": [{"name": "x", "address": 0, "kind": "input", "writable": True}]}, "writable"),
     ({"points": [{"name": "x", "address": 0, "typo": 1}]}, "Unexpected keyword argument"),
     ({"transport": "rtu", "host": None}, "needs serial_port"),
     ({"host": None}, "needs host"),
     ({"max_registers": 126}, "less than or equal"),
     ({"timeout": "5 sex"}, "bad duration"),
     ({"max_registers": 2, "points": [{"name": "f", "address": 0, "type": "float64"}]},
      "more than max_registers")],
)
def test_options_reject_bad_config(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusOptions.model_validate({**BASE, **change})


def test_options_defaults_bus_key_and_points() -> None:
    o = ModbusOptions.model_validate({**BASE, "timeout": "250ms"})
    assert o.timeout == 0.25 and o.retries == 0 and o.points[0].data_type == "uint16"
    assert ModbusDriver.bus_key(o) == "modbus-tcp://10.0.0.5:502"
    assert list(ModbusDriver.points(o)) == ["t"]
    rtu = ModbusOptions.model_validate(
        {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E",
         "points": [{"name": "c", "kind": "coil", "address": 0}]})
    assert ModbusDriver.bus_key(rtu) == "modbus-rtu:///dev/ttyUSB0"
    assert rtu.points[0].data_type == "bool"
    # 3.5 characters of 11 bits at 9600 baud; fixed 1.75 ms above 19200 baud
    assert rtu.frame_gap() == pytest.approx(3.5 * 11 / 9600)
    fast = rtu.model_copy(update={"baudrate": 115200})
    assert fast.frame_gap() == pytest.approx(0.00175)
    assert ModbusOptions.model_validate({**BASE, "inter_frame_delay": "5ms"}).frame_gap() == 0.005


@given(data=st.data(), dtype=st.sampled_from(
    ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool",
     "bit", "string"]), wo=orders, bo=orders, pad=st.integers(0, 3))
def test_compiled_decoder_equals_reference(data: st.DataObject, dtype: str, wo: str, bo: str,
                                           pad: int) -> None:
    from edgegw.drivers.modbus.codec import compile_decoder
    from edgegw.drivers.modbus.options import TYPE_WIDTH

    width = data.draw(st.integers(1, 6)) if dtype == "string" else TYPE_WIDTH[dtype]
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width))
    bit = data.draw(st.integers(0, 15)) if dtype == "bit" else None
    group = [0x5555] * pad + regs + [0xAAAA]
    fast = compile_decoder(dtype, width, word_order=wo, byte_order=bo, bit=bit)(group, pad)
    ref = decode(regs, dtype, word_order=wo, byte_order=bo, bit=bit)
    assert fast == ref or (isinstance(ref, float) and math.isnan(ref) and math.isnan(fast))
