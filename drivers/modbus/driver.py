"""ModbusDriver: one device (unit id) on a Modbus TCP, RTU or RTU-over-TCP bus.

Invariants:
- Reads are planned once at ``open`` (see planner): one request per ``ReadGroup`` per poll.
- ``read()`` returns every configured point: a value, ``PointValue(v, OUT_OF_RANGE)`` outside
  [min, max], or ``PointValue(None, BAD_DATA)`` when its group got an exception response or a
  short/malformed frame. Only when every group failed that way does ``read`` raise
  ``BadDataError``. No answer / no connection raises ``TransientError`` at once (the device is
  down; the runtime turns that into ``comm_error`` samples for all points).
- Scale and offset are applied after decoding: ``value = raw * scale + offset``.
- The pymodbus client is shared by every unit id on the bus (``ctx.shared`` keyed by
  ``bus_key``) and closed when the last device releases it.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any, ClassVar

from edgegw import (
    BadDataError,
    Columns,
    DeviceContext,
    DriverOptions,
    PermanentError,
    PointValue,
    PolledDriver,
    Quality,
    ReadResult,
    TransientError,
    Value,
)
from edgegw.drivers.modbus.bus import ExceptionResponseError, ModbusBus
from edgegw.drivers.modbus.codec import CodecError, compile_decoder, encode
from edgegw.drivers.modbus.options import BIT_KINDS, ModbusOptions, ModbusPoint
from edgegw.drivers.modbus.planner import ReadGroup, plan_reads

PointReader = Callable[[Sequence[Any]], "Value | PointValue"]


def WHOLE(values: Sequence[Any]) -> Sequence[Any]:
    """A plain group's pick when its points are its registers one by one (a marker: read()
    extends its values with the response's list directly)."""
    return values


_BAD_DATA = PointValue(None, Quality.BAD_DATA)  # frozen: one instance serves every point

_READ_CALL = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


class ModbusDriver(PolledDriver):
    """Polls the configured points of one Modbus unit id; writes holding registers and coils."""

    Options: ClassVar[type[DriverOptions]] = ModbusOptions

    @classmethod
    def writable_points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, ModbusOptions)
        return [p.name for p in options.points if p.writable]

    def __init__(self, options: DriverOptions) -> None:
        if not isinstance(options, ModbusOptions):
            options = ModbusOptions.model_validate(options.model_dump())
        super().__init__(options)
        self.opts: ModbusOptions = options
        self.groups: list[ReadGroup] = plan_reads(
            options.points,
            max_gap=options.max_gap,
            max_registers=options.max_registers,
            max_bits=options.max_bits,
        )
        self._by_name = {p.name: p for p in options.points}
        #: every point's name in read order (groups in plan order, each group's points in
        #: order): read() returns its values as ``Columns`` of these names
        self._names: tuple[str, ...] = tuple(p.name for g in self.groups for p in g.points)
        #: per group, when every point is a raw value (a uint16 register or a bit, no scale,
        #: no range): WHOLE when the points are the group's registers one by one (the response
        #: list is taken as it is), else an itemgetter of their offsets; read() then decodes
        #: the group in C instead of with a Python call per point (issue 13, goal 5)
        self._pick: list[Callable[[Sequence[Any]], Any] | None] = [
            self._plain_group(g) for g in self.groups
        ]
        #: per group, one decoder per point; none for a plain group (never used: a decoder
        #: closure per point is ~0.5 KB, 5 MB at 10,000 points; issue 13, W3's memory)
        self._readers: list[list[PointReader]] = [
            [] if pick is not None else [self._compile(p, g) for p in g.points]
            for g, pick in zip(self.groups, self._pick, strict=True)
        ]
        #: per group, the request's description for error messages (formatted once, not per poll)
        self._what = [f"unit {options.unit_id} {g.kind} {g.start}+{g.count}" for g in self.groups]
        self._bus: ModbusBus | None = None

    @classmethod
    def bus_key(cls, options: DriverOptions) -> str | None:
        assert isinstance(options, ModbusOptions)
        return options.bus_endpoint()

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, ModbusOptions)
        return [p.name for p in options.points]

    # ----------------------------------------------------------------- lifecycle
    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)
        key = self.opts.bus_endpoint()
        bus = ctx.shared(key, lambda: ModbusBus(self.opts))
        try:
            bus.check_compatible(self.opts)
        except PermanentError:
            ctx.release(key)
            raise
        self._bus = bus

    async def close(self) -> None:
        if self._bus is None:
            return
        last = self.ctx.release(self._bus.endpoint)
        if isinstance(last, ModbusBus):
            last.close()
        self._bus = None

    def _require_bus(self) -> ModbusBus:
        if self._bus is None:
            raise TransientError("driver not open")
        return self._bus

    # ----------------------------------------------------------------- reads
    async def read(self) -> ReadResult:
        """Every point's value, as ``Columns`` (no dict per poll; issue 13) unless a point
        carries a quality (a group's BAD_DATA, out of range, non-finite): then a dict."""
        bus = self._require_bus()
        values: list[Any] = []
        failures: list[BadDataError] = []
        qualified = False  # a PointValue among the values
        for index, group in enumerate(self.groups):
            try:
                registers = await self._read_group(bus, group, self._what[index])
            except BadDataError as exc:  # this group only; TransientError ends the poll
                failures.append(exc)
                self.ctx.count(_event(exc))
                values.extend(repeat(_BAD_DATA, len(group.points)))
                qualified = True
                continue
            start = len(values)
            try:
                pick = self._pick[index]
                if pick is WHOLE:
                    values.extend(registers)  # a list of ints (pymodbus decodes a fresh one)
                elif pick is not None:
                    picked = pick(registers)
                    values.extend(map(bool, picked) if group.kind in BIT_KINDS else picked)
                else:
                    for reader in self._readers[index]:
                        value = reader(registers)
                        if type(value) is PointValue:
                            qualified = True
                        values.append(value)
            except (struct.error, IndexError, TypeError, ValueError):  # not 16-bit registers
                self.ctx.count("decode_error")
                del values[start:]
                values.extend(repeat(_BAD_DATA, len(group.points)))
                qualified = True
        if failures and len(failures) == len(self.groups):
            raise BadDataError(f"every read failed; first: {failures[0]}")
        if qualified:
            return dict(zip(self._names, values, strict=True))
        return Columns(self._names, values)

    async def _read_group(
        self, bus: ModbusBus, group: ReadGroup, what: str
    ) -> Sequence[int] | Sequence[bool]:
        call = getattr(bus.client, _READ_CALL[group.kind])
        response = await bus.request(
            call, what, timeout_s=self.opts.timeout, retries=self.opts.retries,
            address=group.start, count=group.count, device_id=self.opts.unit_id,
        )
        # pymodbus decodes a fresh list per response; nothing here changes it: no copy
        values: Sequence[int] | Sequence[bool]
        values = response.bits if group.kind in BIT_KINDS else response.registers
        if len(values) != group.count:
            if len(values) < group.count:
                raise BadDataError(f"{what}: short response ({len(values)} of {group.count})")
            if group.kind not in BIT_KINDS:  # more registers than asked for: the ones asked
                values = values[:group.count]
        return values

    def _plain_group(self, group: ReadGroup) -> Callable[[Sequence[Any]], Any] | None:
        """WHOLE or a getter of the raw values if every point of ``group`` is its raw value,
        else None."""
        for p in group.points:
            if group.kind not in BIT_KINDS and not (
                p.data_type == "uint16" and (p.byte_order or self.opts.byte_order) == "big"
                and p.scale == 1.0 and p.offset == 0.0 and p.min is None and p.max is None):
                return None
        offsets = [p.address - group.start for p in group.points]
        if not offsets:
            return None
        if group.kind not in BIT_KINDS and offsets == list(range(group.count)):
            return WHOLE  # (_read_group checks the response holds group.count registers)
        if len(offsets) > 1:
            return operator.itemgetter(*offsets)
        at = offsets[0]  # itemgetter of one index returns the item, not a 1-tuple
        return lambda values: (values[at],)

    def _compile(self, point: ModbusPoint, group: ReadGroup) -> PointReader:
        """Build the point's decoder once: ``fn(group values) -> value | PointValue``."""
        at = point.address - group.start
        if point.kind in BIT_KINDS:
            return lambda values: bool(values[at])
        decode_at = compile_decoder(
            point.data_type,
            point.width,
            word_order=point.word_order or self.opts.word_order,
            byte_order=point.byte_order or self.opts.byte_order,
            bit=point.bit,
            encoding=point.encoding,
        )
        numeric = point.data_type not in ("bool", "bit", "string")
        is_float = point.data_type.startswith("float")
        scaled = numeric and (point.scale != 1.0 or point.offset != 0.0)
        lo, hi = point.min, point.max
        ranged = numeric and (lo is not None or hi is not None)
        if not (scaled or ranged or is_float):
            return lambda values: decode_at(values, at)
        scale, offset, count = point.scale, point.offset, self._count_event

        def read(values: Sequence[Any]) -> Value | PointValue:
            value: Any = decode_at(values, at)
            if is_float and not math.isfinite(value):
                count("non_finite")
                return PointValue(None, Quality.BAD_DATA)
            if scaled:
                value = value * scale + offset
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                return PointValue(value, Quality.OUT_OF_RANGE)
            return value

        return read

    def _count_event(self, event: str) -> None:
        self.ctx.count(event)

    # ----------------------------------------------------------------- writes
    async def write(self, point: str, value: Value) -> None:
        spec = self._by_name.get(point)
        if spec is None:
            raise PermanentError(f"unknown point {point!r}; known: {', '.join(self._by_name)}")
        if not spec.writable:
            raise PermanentError(f"point {point!r} is not writable (set writable: true)")
        bus = self._require_bus()
        what = f"unit {self.opts.unit_id} write {point}"
        kw: dict[str, Any] = {
            "timeout_s": self.opts.timeout, "retries": self.opts.retries,
            "device_id": self.opts.unit_id,
        }
        try:
            if spec.kind == "coil":
                await bus.request(
                    bus.client.write_coil, what, address=spec.address, value=bool(value), **kw
                )
                return
            registers = await self._registers_for(bus, spec, value, what, kw)
            if len(registers) == 1:
                await bus.request(
                    bus.client.write_register, what, address=spec.address, value=registers[0], **kw
                )
            else:
                await bus.request(
                    bus.client.write_registers, what, address=spec.address, values=registers, **kw
                )
        except ExceptionResponseError as exc:
            self.ctx.count("write_refused")
            if exc.code in (1, 2, 3):  # function/address/value: the point map does not fit
                raise PermanentError(str(exc)) from exc
            raise

    async def _registers_for(
        self, bus: ModbusBus, spec: ModbusPoint, value: Value, what: str, kw: dict[str, Any]
    ) -> list[int]:
        if isinstance(value, bytes) or value is None:
            raise PermanentError(f"cannot write {value!r} to point {spec.name!r}")
        if spec.data_type == "bit":
            assert spec.bit is not None
            # read-modify-write of the one register; the bus lock is not held in between, so a
            # concurrent writer of the same register could interleave (documented in README)
            current = await bus.request(
                bus.client.read_holding_registers, what, address=spec.address, count=1, **kw
            )
            mask = 1 << spec.bit
            reg = int(current.registers[0])
            return [(reg | mask) if value else (reg & ~mask)]
        raw: int | float | bool | str = value
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (spec.min is not None and value < spec.min) or (
                spec.max is not None and value > spec.max
            ):
                raise PermanentError(
                    f"value {value} for {spec.name!r} is outside [{spec.min}, {spec.max}]"
                )
            raw = (value - spec.offset) / spec.scale
            if spec.scale == 1.0 and spec.offset == 0.0:
                raw = value
        try:
            return encode(
                raw,
                spec.data_type,
                word_order=spec.word_order or self.opts.word_order,
                byte_order=spec.byte_order or self.opts.byte_order,
                length=spec.length,
                encoding=spec.encoding,
            )
        except CodecError as exc:
            raise PermanentError(f"cannot write {value!r} to {spec.name!r}: {exc}") from None


def _event(exc: BadDataError) -> str:
    if isinstance(exc, ExceptionResponseError):
        return "exception_response"
    return "bad_frame"
