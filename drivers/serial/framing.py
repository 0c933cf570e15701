"""Frame decoders: bytes in, records ({metric: value}) and counted errors out. No I/O.

``feed(data)`` may be called with any split of the byte stream (one byte at a time, many frames
at once); the result is the same records and the same error counts as one call with everything.

Error counters (the keys of ``FeedResult.errors``; the driver passes them to ``ctx.count``):
- line framing: ``line_too_long`` (once per over-long line, its rest is discarded up to the next
  terminator), ``decode_error`` (bytes not valid in ``line.encoding``), ``parse_error`` (text
  does not have the configured shape). Empty lines are ignored, not counted.
- binary framing: ``garbage`` (once per run of bytes outside any frame; ``garbage_bytes`` counts
  the bytes), ``bad_length`` (length field out of range), ``bad_end_marker``,
  ``checksum_error``, ``bad_payload``. After a bad frame the decoder resynchronises on the next
  start marker *after the bad frame's first byte*; bytes skipped on the way belong to the bad
  frame and are not counted again as garbage.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edgegw import Value

from .checksums import checksum_function
from .options import BinaryOptions, LineOptions, SerialOptions
from .parsers import ParseError, make_line_parser

Record = dict[str, Value]


@dataclass
class FeedResult:
    records: list[Record] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class FrameDecoder(Protocol):
    def feed(self, data: bytes) -> FeedResult: ...

    def reset(self) -> None: ...


def _apply_scale(record: Record, scale: Mapping[str, float]) -> Record:
    if scale:
        for name, factor in scale.items():
            value = record.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[name] = value * factor
    return record


class LineDecoder:
    """Splits at the terminator, bounds line length, decodes text and parses it."""

    def __init__(self, opts: LineOptions, scale: Mapping[str, float] | None = None) -> None:
        self._term = opts.terminator.encode(opts.encoding)
        self._max = opts.max_length
        self._encoding = opts.encoding
        self._strip = opts.strip
        self._parse = make_line_parser(opts)
        self._scale = dict(scale or {})
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line, dropping up to the next terminator

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes) -> FeedResult:
        result = FeedResult()
        buf = self._buf
        buf += data
        term, tlen = self._term, len(self._term)
        pos = 0
        while True:
            end = buf.find(term, pos)
            if end < 0:
                break
            line = bytes(buf[pos:end])
            pos = end + tlen
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self._max:
                result.errors["line_too_long"] += 1
                continue
            self._handle(line, result)
        del buf[:pos]
        if not self._discarding and len(buf) > self._max + tlen - 1:
            # No terminator within max_length: count once, drop until the next terminator.
            result.errors["line_too_long"] += 1
            self._discarding = True
        if self._discarding and len(buf) >= tlen:
            del buf[: len(buf) - (tlen - 1)]  # keep a possibly split terminator
        return result

    def _handle(self, raw: bytes, result: FeedResult) -> None:
        try:
            text = raw.decode(self._encoding)
        except UnicodeDecodeError:
            result.errors["decode_error"] += 1
            return
        if self._strip:
            text = text.strip()
        if not text:
            return
        try:
            record = self._parse(text)
        except ParseError:
            result.errors["parse_error"] += 1
            return
        result.records.append(_apply_scale(record, self._scale))


class BinaryDecoder:
    """Finds start markers, checks length / end marker / checksum, unpacks the struct payload."""

    def __init__(self, opts: BinaryOptions, scale: Mapping[str, float] | None = None) -> None:
        self._o = opts
        self._start = opts.start
        self._end = opts.end or b""
        self._body = opts.body_offset
        self._psize = opts.payload_size
        self._csize = opts.checksum_size
        self._struct = struct.Struct(opts.layout)
        self._fields = list(opts.fields)
        self._scale = dict(scale or {})
        cs = opts.checksum
        self._checksum = checksum_function(cs.type, poly=cs.poly, init=cs.init) if cs else None
        self._buf = bytearray()
        self._in_garbage = False  # a garbage run is being skipped (counted once)
        self._after_error = False  # skipping the rest of a bad frame (not garbage)

    def reset(self) -> None:
        self._buf.clear()
        self._in_garbage = False
        self._after_error = False

    def _skip(self, n: int, result: FeedResult) -> None:
        if n <= 0:
            return
        if not self._after_error:
            if not self._in_garbage:
                result.errors["garbage"] += 1
                self._in_garbage = True
            result.errors["garbage_bytes"] += n
        del self._buf[:n]

    def _bad(self, kind: str, result: FeedResult) -> None:
        result.errors[kind] += 1
        self._after_error = True
        self._in_garbage = False
        del self._buf[:1]  # resync on the next start marker after this frame's first byte

    def _frame_length(self, buf: bytearray) -> int | None:
        """Total frame length, or None when more bytes are needed; -1 when out of range."""
        lf = self._o.length
        if lf is None:
            return self._o.min_frame
        if len(buf) < lf.offset + lf.size:
            return None
        raw = int.from_bytes(buf[lf.offset : lf.offset + lf.size], lf.endian) + lf.adjust
        if lf.counts == "payload":
            total = self._body + raw + self._csize + len(self._end)
        elif lf.counts == "frame":
            total = raw
        else:
            total = lf.offset + lf.size + raw
        if total < self._o.min_frame or total > self._o.max_frame:
            return -1
        return total

    def feed(self, data: bytes) -> FeedResult:
        result = FeedResult()
        buf = self._buf
        buf += data
        start, slen = self._start, len(self._start)
        while True:
            i = buf.find(start)
            if i < 0:
                self._skip(len(buf) - (slen - 1), result)  # keep a possibly split marker
                break
            self._skip(i, result)
            self._in_garbage = False
            total = self._frame_length(buf)
            if total is None:
                break
            if total < 0:
                self._bad("bad_length", result)
                continue
            if len(buf) < total:
                break
            frame = bytes(buf[:total])
            if self._end and not frame.endswith(self._end):
                self._bad("bad_end_marker", result)
                continue
            payload_end = total - len(self._end) - self._csize
            if payload_end - self._body != self._psize:
                self._bad("bad_length", result)
                continue
            if self._checksum is not None and not self._check(frame, payload_end):
                self._bad("checksum_error", result)
                continue
            try:
                values = self._struct.unpack(frame[self._body : payload_end])
            except struct.error:
                self._bad("bad_payload", result)
                continue
            record: Record = {n: v for n, v in zip(self._fields, values, strict=True) if n}
            result.records.append(_apply_scale(record, self._scale))
            del buf[:total]
            self._after_error = False
        return result

    def _check(self, frame: bytes, payload_end: int) -> bool:
        assert self._checksum is not None and self._o.checksum is not None
        cs = self._o.checksum
        want = int.from_bytes(frame[payload_end : payload_end + self._csize], cs.endian)
        return self._checksum(frame[cs.covers_from : payload_end]) == want


def make_decoder(opts: SerialOptions) -> FrameDecoder:
    if opts.binary is not None:
        return BinaryDecoder(opts.binary, opts.scale)
    assert opts.line is not None
    return LineDecoder(opts.line, opts.scale)
