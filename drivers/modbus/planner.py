"""Register coalescing: turn a device's points into as few read requests as allowed.

Invariants:
- Planned once per device at open; reads then issue exactly one request per ``ReadGroup``.
- A group holds points of one kind only; its span never exceeds the per-request limit
  (``max_registers`` for registers, ``max_bits`` for bits) and it only bridges holes of at most
  ``max_gap`` unread addresses (a hole may hold addresses the device refuses to read).
- Every point belongs to exactly one group and lies entirely inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgegw.drivers.modbus.options import BIT_KINDS, ModbusPoint


@dataclass(frozen=True, slots=True)
class ReadGroup:
    """One read request: ``count`` registers/bits of ``kind`` from ``start``."""

    kind: str
    start: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_reads(
    points: Sequence[ModbusPoint], *, max_gap: int, max_registers: int, max_bits: int
) -> list[ReadGroup]:
    """Group points into read requests (ordered by kind, then address)."""
    groups: list[ReadGroup] = []
    for kind in ("holding", "input", "coil", "discrete"):
        limit = max_bits if kind in BIT_KINDS else max_registers
        members = sorted((p for p in points if p.kind == kind), key=lambda p: (p.address, p.width))
        current: list[ModbusPoint] = []
        start = end = 0
        for point in members:
            p_end = point.address + point.width
            if current and point.address - end <= max_gap and max(end, p_end) - start <= limit:
                current.append(point)
                end = max(end, p_end)
                continue
            if current:
                groups.append(ReadGroup(kind, start, end - start, tuple(current)))
            current, start, end = [point], point.address, p_end
        if current:
            groups.append(ReadGroup(kind, start, end - start, tuple(current)))
    return groups
