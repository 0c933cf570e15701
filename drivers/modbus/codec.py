"""Register <-> value codec for Modbus points (pure functions, no I/O).

Invariants:
- Registers are 16-bit unsigned ints in wire order (the order the device sent them).
- ``word_order`` says which register holds the most significant word ("big": the first);
  ``byte_order`` says which byte of each register comes first ("big": the high byte, the Modbus
  standard). Strings are byte sequences: ``word_order`` does not apply, ``byte_order`` does.
- ``decode(encode(v)) == v`` for every value the type can hold (tested with hypothesis).
- Bad input raises ``CodecError`` with a message naming the type; never anything else.

pymodbus' ``convert_from_registers`` handles word order only (no byte swap), so the codec uses
``struct`` directly; the test server encodes with pymodbus, so the two are checked against each
other.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence

from edgegw.drivers.modbus.options import TYPE_WIDTH

_STRUCT: dict[str, str] = {
    "int16": ">h", "uint16": ">H",
    "int32": ">i", "uint32": ">I", "float32": ">f",
    "int64": ">q", "uint64": ">Q", "float64": ">d",
}
_INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


class CodecError(ValueError):
    """A value cannot be decoded from / encoded to registers."""


def _to_bytes(registers: Sequence[int], word_order: str, byte_order: str) -> bytes:
    words = registers if word_order == "big" else list(reversed(registers))
    out = bytearray()
    for word in words:
        out += word.to_bytes(2, "big" if byte_order == "big" else "little")
    return bytes(out)


def _from_bytes(data: bytes, word_order: str, byte_order: str) -> list[int]:
    words = [
        int.from_bytes(data[i : i + 2], "big" if byte_order == "big" else "little")
        for i in range(0, len(data), 2)
    ]
    return words if word_order == "big" else list(reversed(words))


def decode(
    registers: Sequence[int],
    dtype: str,
    *,
    word_order: str = "big",
    byte_order: str = "big",
    bit: int | None = None,
    encoding: str = "utf-8",
) -> int | float | bool | str:
    """Decode one point from exactly its registers."""
    if dtype == "bit":
        if bit is None or len(registers) != 1:
            raise CodecError("type bit needs one register and a bit number")
        return bool((registers[0] >> bit) & 1)
    if dtype == "bool":
        if len(registers) != 1:
            raise CodecError("type bool needs one register")
        return registers[0] != 0
    if dtype == "string":
        raw = b"".join(
            r.to_bytes(2, "big" if byte_order == "big" else "little") for r in registers
        )
        return raw.rstrip(b"\x00 ").decode(encoding, errors="replace")
    fmt = _STRUCT.get(dtype)
    if fmt is None:
        raise CodecError(f"unknown type {dtype!r}")
    if len(registers) != TYPE_WIDTH[dtype]:
        raise CodecError(f"type {dtype} needs {TYPE_WIDTH[dtype]} registers, got {len(registers)}")
    value: int | float = struct.unpack(fmt, _to_bytes(registers, word_order, byte_order))[0]
    return value


def encode(
    value: int | float | bool | str,
    dtype: str,
    *,
    word_order: str = "big",
    byte_order: str = "big",
    length: int | None = None,
    encoding: str = "utf-8",
) -> list[int]:
    """Encode one value into the registers of its type (not for type ``bit``)."""
    if dtype == "bool":
        return [1 if value else 0]
    if dtype == "string":
        if length is None:
            raise CodecError("type string needs a length")
        data = str(value).encode(encoding)
        if len(data) > 2 * length:
            raise CodecError(f"string of {len(data)} bytes does not fit {length} registers")
        data = data.ljust(2 * length, b"\x00")
        return [
            int.from_bytes(data[i : i + 2], "big" if byte_order == "big" else "little")
            for i in range(0, len(data), 2)
        ]
    fmt = _STRUCT.get(dtype)
    if fmt is None:
        raise CodecError(f"type {dtype!r} cannot be encoded")
    if dtype in _INT_RANGE:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CodecError(f"{value} does not fit {dtype}")
            value = round(value)
        if isinstance(value, str):
            raise CodecError(f"{value!r} is not a number")
        low, high = _INT_RANGE[dtype]
        if not low <= int(value) <= high:
            raise CodecError(f"{value} does not fit {dtype} ({low}..{high})")
        data = struct.pack(fmt, int(value))
    else:
        if isinstance(value, str):
            raise CodecError(f"{value!r} is not a number")
        try:
            data = struct.pack(fmt, float(value))
        except (OverflowError, struct.error) as exc:
            raise CodecError(f"{value} does not fit {dtype}: {exc}") from None
    return _from_bytes(data, word_order, byte_order)


RegisterDecoder = Callable[[Sequence[int], int], "int | float | bool | str"]


@functools.cache  # pure functions of their arguments: one per distinct layout, not per point
def compile_decoder(
    dtype: str,
    width: int,
    *,
    word_order: str = "big",
    byte_order: str = "big",
    bit: int | None = None,
    encoding: str = "utf-8",
) -> RegisterDecoder:
    """A fast decoder ``fn(registers, at)`` equal to ``decode(registers[at:at+width], ...)``.

    Built once per distinct layout (one ``struct`` pack + unpack per value on the hot path).
    Registers must be 16-bit values; pymodbus guarantees that for decoded responses.
    """
    if dtype == "bit":
        if bit is None:
            raise CodecError("type bit needs a bit number")
        mask = 1 << bit
        return lambda regs, at: bool(regs[at] & mask)
    if dtype == "bool":
        return lambda regs, at: regs[at] != 0
    if dtype == "string":
        pack_s = struct.Struct(f"{'>' if byte_order == 'big' else '<'}{width}H").pack

        def string(regs: Sequence[int], at: int) -> str:
            raw = pack_s(*regs[at : at + width])
            return raw.rstrip(b"\x00 ").decode(encoding, errors="replace")

        return string
    fmt = _STRUCT.get(dtype)
    if fmt is None:
        raise CodecError(f"unknown type {dtype!r}")
    if width != TYPE_WIDTH[dtype]:
        raise CodecError(f"type {dtype} needs {TYPE_WIDTH[dtype]} registers, got {width}")
    unpack = struct.Struct(fmt).unpack
    if width == 1 and byte_order == "big":
        signed = dtype == "int16"
        return (lambda regs, at: regs[at] - 0x10000 if regs[at] & 0x8000 else regs[at]) if signed \
            else (lambda regs, at: regs[at])
    pack = struct.Struct(f"{'>' if byte_order == 'big' else '<'}{width}H").pack
    if word_order == "big":
        return lambda regs, at: unpack(pack(*regs[at : at + width]))[0]
    return lambda regs, at: unpack(pack(*reversed(regs[at : at + width])))[0]
