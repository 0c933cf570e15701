"""Configuration model of the serial sensor driver.

Invariants enforced here, so the decoder and the driver never re-check them:
- exactly one of ``line`` / ``binary`` framing is configured;
- ``request`` mode has exactly one of ``request`` / ``request_hex``; ``stream`` mode has neither;
- regexes compile and have at least one named group; struct layouts carry an explicit byte
  order and unpack to exactly ``len(fields)`` values; the length field, payload and checksum
  fit inside ``max_frame``;
- hex strings (``start``, ``end``, ``request_hex``) are already bytes after validation.
"""

from __future__ import annotations

import codecs
import re
import struct
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgegw import DriverOptions, Duration, HexBytes, Id

from .checksums import CHECKSUM_SIZES

Seconds = Annotated[Duration, Field(gt=0)]
ValueType = Literal["auto", "int", "float", "str", "bool", "hex"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineOptions(_Strict):
    """Text lines: split at ``terminator``, then parsed by ``regex``, ``kv`` or ``delimited``."""

    terminator: str = "\n"
    encoding: str = "utf-8"
    max_length: int = Field(1024, ge=1, le=1 << 20)
    strip: bool = True
    parse: Literal["regex", "kv", "delimited"] = "regex"
    #: regex with named groups; each group is a metric (re.search: may match inside the line)
    regex: str | None = None
    #: kv: separator between pairs (None = any whitespace) and between key and value
    pair_separator: str | None = None
    kv_separator: str = "="
    #: delimited: field separator and the metric name of each field by index (null = skip)
    delimiter: str = ","
    fields: list[str | None] = Field(default_factory=list)
    #: conversion of each metric's text ("auto": int, else float, else the string)
    types: dict[str, ValueType] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> LineOptions:
        if not self.terminator:
            raise ValueError("line.terminator must not be empty (e.g. '\\n' or '\\r\\n')")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"line.encoding {self.encoding!r} is not a known codec") from None
        if self.parse == "regex":
            if not self.regex:
                raise ValueError("line.parse=regex needs line.regex with named groups")
            try:
                compiled = re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"line.regex does not compile: {exc}") from None
            if not compiled.groupindex:
                raise ValueError("line.regex has no named groups: use (?P<metric>...)")
        if self.parse == "delimited":
            if not any(self.fields):
                raise ValueError("line.parse=delimited needs line.fields (metric name per index)")
            if not self.delimiter:
                raise ValueError("line.delimiter must not be empty")
        if self.parse == "kv" and not self.kv_separator:
            raise ValueError("line.kv_separator must not be empty")
        return self

    def metric_names(self) -> list[str]:
        if self.parse == "regex" and self.regex:
            return list(re.compile(self.regex).groupindex)
        if self.parse == "delimited":
            return [f for f in self.fields if f]
        return []


class LengthField(_Strict):
    """Where the frame length lives and what it counts."""

    offset: int = Field(ge=0)  # from the first byte of the start marker
    size: Literal[1, 2, 4] = 1
    endian: Literal["big", "little"] = "big"
    #: payload = the struct payload only; frame = the whole frame; rest = everything after
    #: the length field (payload + checksum + end marker)
    counts: Literal["payload", "frame", "rest"] = "payload"
    adjust: int = 0  # added to the field's value before use


class ChecksumOptions(_Strict):
    type: Literal["crc16-modbus", "crc8", "xor", "sum8"]
    poly: int = Field(0x07, ge=1, le=0xFF)  # crc8 only
    init: int | None = Field(None, ge=0, le=0xFFFF)  # default: 0xFFFF for crc16, 0 for crc8
    #: first frame byte covered (0 = first byte of the start marker); coverage ends just
    #: before the checksum, which sits right after the payload
    covers_from: int = Field(0, ge=0)
    endian: Literal["big", "little"] = "little"  # crc16 byte order on the wire (Modbus: little)


class BinaryOptions(_Strict):
    """Binary frames: start marker, optional length field, struct payload, checksum, end marker."""

    start: HexBytes
    end: HexBytes | None = None
    length: LengthField | None = None
    #: where the struct payload begins (default: after the length field, else after ``start``)
    payload_offset: int | None = Field(None, ge=0)
    layout: str  # Python struct format with explicit byte order, e.g. ">hHB"
    fields: list[str | None]  # metric name per unpacked value (null = ignore)
    checksum: ChecksumOptions | None = None
    max_frame: int = Field(512, ge=2, le=65536)

    @model_validator(mode="after")
    def _check(self) -> BinaryOptions:
        if not self.start:
            raise ValueError("binary.start must be at least one byte (hex, e.g. 'AA 55')")
        if self.end is not None and not self.end:
            raise ValueError("binary.end must be at least one byte or omitted")
        if not self.layout or self.layout[0] not in "<>!=":
            raise ValueError(
                f"binary.layout {self.layout!r} needs an explicit byte order first "
                "('<' little or '>' big endian, e.g. '>hHB')"
            )
        try:
            size = struct.calcsize(self.layout)
            count = len(struct.unpack(self.layout, bytes(size)))
        except struct.error as exc:
            raise ValueError(
                f"binary.layout {self.layout!r} is not a struct format: {exc}"
            ) from None
        if count != len(self.fields):
            raise ValueError(
                f"binary.layout {self.layout!r} unpacks {count} values but binary.fields "
                f"names {len(self.fields)} (use null for values to ignore)"
            )
        names = [f for f in self.fields if f]
        if len(set(names)) != len(names):
            raise ValueError("binary.fields has duplicate names")
        if self.length is not None and self.length.offset + self.length.size > self.body_offset:
            raise ValueError("binary.payload_offset overlaps the length field")
        if self.body_offset < len(self.start) and self.payload_offset is not None:
            raise ValueError("binary.payload_offset overlaps the start marker")
        if self.checksum is not None and self.checksum.covers_from > self.body_offset:
            raise ValueError("binary.checksum.covers_from lies after the payload start")
        if self.min_frame > self.max_frame:
            raise ValueError(f"binary frames need {self.min_frame} bytes > max_frame")
        return self

    @property
    def body_offset(self) -> int:
        if self.payload_offset is not None:
            return self.payload_offset
        if self.length is not None:
            return self.length.offset + self.length.size
        return len(self.start)

    @property
    def payload_size(self) -> int:
        return struct.calcsize(self.layout)

    @property
    def checksum_size(self) -> int:
        return CHECKSUM_SIZES[self.checksum.type] if self.checksum else 0

    @property
    def min_frame(self) -> int:
        return self.body_offset + self.payload_size + self.checksum_size + len(self.end or b"")


class CommandOptions(_Strict):
    """A command written to the device for one writable point (request mode).

    ``send`` is a text template formatted with the value (``"SP {value:.1f}\r\n"``), encoded
    like the lines; with ``ack``, the device's reply line must match that regex within
    ``reply_timeout`` (a non-matching reply is the device refusing the command).
    """

    send: str = Field(min_length=1)
    ack: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CommandOptions:
        try:
            self.send.format(value=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"command template {self.send!r} is not valid: {exc} (use {{value}}, "
                "e.g. 'SP {value:.1f}\\r\\n')"
            ) from None
        if self.ack is not None:
            try:
                re.compile(self.ack)
            except re.error as exc:
                raise ValueError(f"ack regex {self.ack!r}: {exc}") from None
        return self


class BootloaderOptions(_Strict):
    """Firmware updates through the device's bootloader (YMODEM, see drivers/serial/README).

    ``enter`` (text, encoded like the lines) is written first to make the application jump to
    its bootloader; then the image goes with YMODEM (1 KiB blocks, CRC-16).
    """

    protocol: Literal["ymodem"] = "ymodem"
    enter: str | None = None
    start_timeout: Seconds = 30.0  # wait for the bootloader's first 'C' and the header's ACK
    block_timeout: Seconds = 10.0  # wait for each ACK
    retries: int = Field(10, ge=0, le=100)  # NAKs per block before giving up


class SensorRouting(_Strict):
    """Several sensors on one line (stream mode): each frame names its sensor in ``field``.

    ``ids`` maps the field's value, as text, to the sub-device id its readings carry (set
    ``types: {FIELD: str}`` to keep leading zeros). A frame from an address not listed is a bad
    frame (counted ``unknown_sensor``); the field itself is not a reading.
    """

    field: str = Field(min_length=1)
    ids: dict[str, Id] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SensorRouting:
        seen: dict[str, str] = {}
        for addr, dev in self.ids.items():
            if dev in seen:
                raise ValueError(
                    f"sensors.ids: {dev!r} is given to both {seen[dev]!r} and {addr!r}"
                )
            seen[dev] = addr
        return self


class SerialOptions(DriverOptions):
    """Options of one serial sensor (``devices[].options`` with ``driver: serial``)."""

    #: use the stable /dev/serial/by-id/... path, not /dev/ttyUSB0 (renumbered on replug)
    port: str
    baudrate: int = Field(9600, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = 1  # 1, 1.5 or 2
    mode: Literal["stream", "request"] = "stream"
    request: str | None = None  # request mode: text sent each poll (encoded like lines)
    request_hex: HexBytes | None = None  # request mode: raw bytes sent each poll
    reply_timeout: Seconds = 1.0
    line: LineOptions | None = None
    binary: BinaryOptions | None = None
    scale: dict[str, float] = Field(default_factory=dict)  # metric -> factor for numbers
    status_interval: Seconds = 60.0  # stream mode: period of the `_status` sample
    silence_timeout: Seconds | None = None  # stream mode: no frame this long -> comm_error
    reopen_min: Seconds = 0.5
    reopen_max: Seconds = 30.0
    exclusive: bool = True  # lock the port (TIOCEXCL + flock) so no other process reads it
    #: request mode: writable points -> the command that sets them
    commands: dict[str, CommandOptions] = Field(default_factory=dict)
    #: request mode: firmware updates through the device's bootloader (OTA firmware releases)
    bootloader: BootloaderOptions | None = None


    #: stream mode: several sensors on the line, addressed as sub-devices
    sensors: SensorRouting | None = None

    @model_validator(mode="after")
    def _check(self) -> SerialOptions:
        if (self.line is None) == (self.binary is None):
            raise ValueError("set exactly one of `line` (text sensors) or `binary` (framed bytes)")
        has_request = self.request is not None or self.request_hex is not None
        if self.mode == "request":
            if self.request is not None and self.request_hex is not None:
                raise ValueError("set only one of `request` (text) or `request_hex` (bytes)")
            if not has_request:
                raise ValueError("mode=request needs `request` (text) or `request_hex` (bytes)")
        elif has_request:
            raise ValueError("`request`/`request_hex` only apply to mode=request")
        if self.bootloader is not None and self.mode != "request":
            raise ValueError("`bootloader` needs mode=request (the update must own the port)")
        if self.commands and self.mode != "request":
            raise ValueError("`commands` need mode=request (the reply must not race the stream)")
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits {self.stopbits} is not one of 1, 1.5, 2")
        if self.reopen_max < self.reopen_min:
            raise ValueError("reopen_max must be >= reopen_min")
        if self.sensors is not None:
            if self.mode != "stream":
                raise ValueError("`sensors` need mode=stream (each frame names its sensor)")
            names = self.metric_names()
            if names and self.sensors.field not in names:
                raise ValueError(
                    f"sensors.field {self.sensors.field!r} is not a field of the frames "
                    f"(fields: {', '.join(names)})"
                )
        return self

    def request_bytes(self) -> bytes:
        if self.request_hex is not None:
            return self.request_hex
        encoding = self.line.encoding if self.line is not None else "latin-1"
        return (self.request or "").encode(encoding)

    def metric_names(self) -> list[str]:
        if self.binary is not None:
            return [f for f in self.binary.fields if f]
        assert self.line is not None
        return self.line.metric_names()
