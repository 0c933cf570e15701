"""Checksums of binary serial sensors: CRC-16/Modbus, CRC-8 (configurable poly), XOR, SUM8.

Invariants: pure functions of bytes, no I/O; CRC tables are built once per polynomial and cached.
``CHECKSUM_SIZES`` gives the number of bytes each algorithm occupies in a frame.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

CHECKSUM_SIZES: dict[str, int] = {"crc16-modbus": 2, "crc8": 1, "xor": 1, "sum8": 1}


@lru_cache(maxsize=1)
def _crc16_modbus_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc16_modbus(data: bytes, init: int = 0xFFFF) -> int:
    """CRC-16/MODBUS (reflected poly 0x8005, init 0xFFFF); sent little-endian on the wire."""
    table = _crc16_modbus_table()
    crc = init
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


@lru_cache(maxsize=16)
def _crc8_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


def crc8(data: bytes, poly: int = 0x07, init: int = 0x00) -> int:
    """CRC-8, MSB first, no reflection, no final XOR (poly 0x07 = CRC-8/SMBUS)."""
    table = _crc8_table(poly)
    crc = init
    for b in data:
        crc = table[crc ^ b]
    return crc


def xor8(data: bytes) -> int:
    """XOR of all bytes (NMEA-style longitudinal parity)."""
    acc = 0
    for b in data:
        acc ^= b
    return acc


def sum8(data: bytes) -> int:
    """Sum of all bytes modulo 256."""
    return sum(data) & 0xFF


def checksum_function(
    kind: str, *, poly: int = 0x07, init: int | None = None
) -> Callable[[bytes], int]:
    """The checksum function for a configured algorithm name (see ``CHECKSUM_SIZES``)."""
    if kind == "crc16-modbus":
        start16 = 0xFFFF if init is None else init
        return lambda data: crc16_modbus(data, start16)
    if kind == "crc8":
        start8 = 0 if init is None else init
        return lambda data: crc8(data, poly, start8)
    if kind == "xor":
        return xor8
    if kind == "sum8":
        return sum8
    raise ValueError(f"unknown checksum {kind!r} (use one of {', '.join(CHECKSUM_SIZES)})")
