"""Configuration model of the Modbus driver (one device = one unit id on one bus).

Invariants enforced here, so the rest of the driver never re-checks them:
- every point's data type fits its kind (coil/discrete carry only ``bool``);
- ``string`` points have a ``length`` (registers), ``bit`` points a ``bit`` in 0..15;
- every point lies inside the 16-bit address space and fits in one request
  (``max_registers`` for registers, ``max_bits`` for coils/discrete inputs);
- point names are unique; serial transports name a serial port, TCP transports a host.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

from edgegw import DriverOptions, Duration

Kind = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "bool", "bit", "string",
]
Order = Literal["big", "little"]
Transport = Literal["tcp", "rtu", "rtu_over_tcp"]

#: registers occupied by each fixed-width type (string: its ``length``)
TYPE_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "bool": 1, "bit": 1,
    "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}
REGISTER_KINDS = frozenset({"holding", "input"})
BIT_KINDS = frozenset({"coil", "discrete"})
MAX_REGISTERS_PER_READ = 125  # Modbus spec: read holding/input registers
MAX_BITS_PER_READ = 2000  # Modbus spec: read coils/discrete inputs



Seconds = Annotated[Duration, Field(ge=0)]


@dataclass(config=ConfigDict(extra="forbid"), frozen=True, slots=True, kw_only=True)
class ModbusPoint:
    """One named value of the device: where it lives and how to decode it."""

    name: str = Field(min_length=1)
    address: int = Field(ge=0, le=65535, description="protocol (0-based) address")
    kind: Kind = "holding"
    type: DataType | None = Field(default=None, description="default: uint16, bool for bits")
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of the register (type bit)")
    length: int | None = Field(
        default=None, ge=1, le=MAX_REGISTERS_PER_READ, description="string registers"
    )
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False
    min: float | None = None
    max: float | None = None
    word_order: Order | None = None
    byte_order: Order | None = None
    encoding: str = "utf-8"

    @model_validator(mode="after")
    def _check(self) -> ModbusPoint:
        if self.type is None:
            object.__setattr__(self, "type", "bool" if self.kind in BIT_KINDS else "uint16")
        dtype = self.data_type
        if self.kind in BIT_KINDS and dtype != "bool":
            raise ValueError(
                f"point {self.name!r}: kind {self.kind} holds single bits; use type bool"
            )
        if dtype == "string" and self.length is None:
            raise ValueError(f"point {self.name!r}: type string needs length (in registers)")
        if dtype == "bit" and self.bit is None:
            raise ValueError(f"point {self.name!r}: type bit needs bit: 0..15")
        if dtype != "bit" and self.bit is not None:
            raise ValueError(f"point {self.name!r}: bit is only valid with type bit")
        if dtype != "string" and self.length is not None:
            raise ValueError(f"point {self.name!r}: length is only valid with type string")
        if self.address + self.width > 65536:
            raise ValueError(
                f"point {self.name!r}: address {self.address} + {self.width} registers "
                "runs past 65535"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"point {self.name!r}: min {self.min} > max {self.max}")
        if self.scale == 0:
            raise ValueError(f"point {self.name!r}: scale must not be 0")
        if self.writable and self.kind not in ("holding", "coil"):
            raise ValueError(f"point {self.name!r}: only holding registers and coils are writable")
        return self

    @property
    def data_type(self) -> str:
        assert self.type is not None  # filled by the validator
        return self.type

    @property
    def width(self) -> int:
        """Registers (or bits, for coil/discrete) this point occupies."""
        if self.kind in BIT_KINDS:
            return 1
        if self.data_type == "string":
            assert self.length is not None
            return self.length
        return TYPE_WIDTH[self.data_type]


class ModbusOptions(DriverOptions):
    """Options of one Modbus device (one unit id on a TCP endpoint or a serial line)."""

    transport: Transport = "tcp"
    host: str | None = Field(default=None, description="tcp / rtu_over_tcp: host name or address")
    port: int = Field(default=502, ge=1, le=65535, description="tcp / rtu_over_tcp: TCP port")
    serial_port: str | None = Field(
        default=None, description="rtu: serial device, preferably /dev/serial/by-id/..."
    )
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: Seconds = 1.0
    retries: int = Field(default=0, ge=0, le=10, description="0: the runtime retries")
    inter_frame_delay: Seconds | None = Field(
        default=None, description="pause between frames; RTU never goes below 3.5 char times"
    )
    word_order: Order = "big"
    byte_order: Order = "big"
    max_gap: int = Field(default=0, ge=0, le=MAX_REGISTERS_PER_READ)
    max_registers: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ)
    max_bits: int = Field(default=MAX_BITS_PER_READ, ge=1, le=MAX_BITS_PER_READ)
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ModbusOptions:
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("transport rtu needs serial_port (e.g. /dev/serial/by-id/usb-...)")
        if self.transport != "rtu" and not self.host:
            raise ValueError(f"transport {self.transport} needs host")
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"duplicate point name {point.name!r}")
            seen.add(point.name)
            limit = self.max_bits if point.kind in BIT_KINDS else self.max_registers
            if point.width > limit:
                raise ValueError(
                    f"point {point.name!r} spans {point.width} registers, more than "
                    f"max_registers={limit}"
                )
        return self

    @property
    def serial(self) -> bool:
        """True when frames are RTU frames (on a serial line or tunnelled over TCP)."""
        return self.transport in ("rtu", "rtu_over_tcp")

    def char_time(self) -> float:
        """Seconds one character occupies on the serial line."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def frame_gap(self) -> float:
        """Effective pause between frames: 3.5 char times (1.75 ms above 19200 baud) minimum."""
        configured = self.inter_frame_delay or 0.0
        if not self.serial:
            return configured
        t35 = 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time()
        return max(t35, configured)

    def bus_endpoint(self) -> str:
        """The physical bus this device sits on (shared by all unit ids on it)."""
        if self.transport == "tcp":
            return f"modbus-tcp://{self.host}:{self.port}"
        if self.transport == "rtu_over_tcp":
            return f"modbus-rtu-over-tcp://{self.host}:{self.port}"
        return f"modbus-rtu://{self.serial_port}"


