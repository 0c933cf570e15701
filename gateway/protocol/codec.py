"""Batch codec: samples, alerts and gap records <-> compact columnar bytes (the envelope plaintext).

Layout (version 1)::

    byte 0        format version (1), outside the compression so it can be checked first
    bytes 1..     snappy (raw block format) of the body:
      strings     uvarint n, then n x (uvarint len, utf-8)   device/metric/rule/... names
      series      uvarint n, then per series (device, metric):
                    uvarint device idx, uvarint metric idx, uvarint count, u8 flags
                    timestamps  (unless FLAG_TS_SAME) first as zig-zag delta from the previous
                                series' first timestamp, then count-1 zig-zag deltas
                    quality     (unless FLAG_ALL_GOOD) uvarint runs, then (u8 quality, uvarint len)
                    presence    (if FLAG_HAS_NONE) uvarint runs, run lengths alternating
                                present/None, starting with present
                    values      u8 column type, then the present values typed per column
      alerts      uvarint n, then per alert (see _write_alerts)
      gaps        uvarint n, then per gap (see _write_gaps)

Value columns: float (zig-zag varint deltas of integers n when every value is an exact short
decimal n / 10**e, or n * 0.1 / 0.01 / 0.001 as a driver scaling a raw register computes it;
else XOR with the previous value as float32 or float64, byte-aligned; else plain f64),
int (zig-zag varint deltas, first absolute), bool (bitmap), str/bytes (length-prefixed), and a
tagged column for series whose values mix types.

Invariants:
- ``decode_batch(encode_batch(s, a, g))`` returns the same samples, alerts and gaps, exactly: floats
  bit for bit (NaN payloads, inf, -0.0), ints of [-2**63, 2**64), value types preserved.
  Samples come back grouped per series (order of first appearance), each series in input order.
- Any malformed, truncated or oversized input makes ``decode_batch`` raise ``CodecError`` and
  nothing else. Decoding is bounded: at most ``MAX_BODY_BYTES`` of plaintext and
  ``MAX_SAMPLES`` samples per batch.
- Gap sequence numbers and counters are in [0, 2**63): they are stored as signed 64-bit
  INTEGERs, and a larger one refused here cannot fail (and roll back) a store transaction.
- Bad input to ``encode_batch`` (unsupported value type, int out of range...) raises
  ``CodecError`` naming the device and metric.
"""

from __future__ import annotations

import math
import operator
import struct
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, repeat
from typing import Any, NamedTuple, TypeVar

import snappy

from edgegw.protocol.model import Alert, Lane, Quality, Sample, Severity

VERSION = 1
MAX_BODY_BYTES = 12 * 1024 * 1024  # fits the broker's max_packet_size (16 MiB) once sealed
MAX_SAMPLES = 100_000  # 20x the default batch.max_readings; the config caps it here

FLAG_TS_SAME = 0x01  # timestamps identical to the previous series' (same count)
FLAG_ALL_GOOD = 0x02  # every sample has Quality.GOOD
FLAG_HAS_NONE = 0x04  # some values are None: presence runs follow
_KNOWN_FLAGS = FLAG_TS_SAME | FLAG_ALL_GOOD | FLAG_HAS_NONE

# value column types
COL_NONE = 0
COL_FLOAT = 1
COL_INT = 2
COL_BOOL = 3
COL_STR = 4
COL_BYTES = 5
COL_MIXED = 6

# float column modes
F_PLAIN = 0
F_DECIMAL = 1
F_XOR64 = 2
F_XOR32 = 3
F_SCALED = 4
_SCALES = tuple(float(f"1e-{e}") for e in range(4))  # the literals 0.1, 0.01, 0.001

# tags of the mixed column
T_FLOAT = 1
T_INT = 2
T_FALSE = 3
T_TRUE = 4
T_STR = 5
T_BYTES = 6

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1  # unsigned 64-bit counters are allowed too
#: sequence numbers and gap counters: stored as SQLite's signed 64-bit INTEGER by the cloud
COUNTER_MAX = 2**63 - 1
_MAX_DECIMALS = 9
_MAX_EXACT = 2**53
_MAX_VARINT_BYTES = 10

_QUALITIES = {int(q): q for q in Quality}
_LANES = {int(x): x for x in Lane}
_SEVERITIES = {int(s): s for s in Severity}
_F64 = struct.Struct(">d")
_Decoded = TypeVar("_Decoded", bound="DecodedBatch")  # what a body decoder returns


class CodecError(ValueError):
    """The bytes are not a valid batch (or the input cannot be encoded). Message says why."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Readings the gateway dropped on purpose (outbox full): the cloud learns what is missing."""

    lane: Lane
    seqs: tuple[int, ...]
    from_ts_ms: int
    to_ts_ms: int
    batches: int
    readings: int
    reason: str = "outbox_full"


class Series(NamedTuple):
    """One series of a decoded batch, as columns (what the wire carries; no Sample objects).

    A NamedTuple: one is built per series of every decoded batch (3x cheaper than a frozen
    dataclass)."""

    device: str
    metric: str
    ts: list[int]
    values: list[Any]
    qualities: list[Quality]

    def samples(self) -> Iterable[Sample]:
        n = len(self.ts)
        return map(
            Sample,
            repeat(self.device, n),
            repeat(self.metric, n),
            self.ts,
            self.values,
            self.qualities,
        )


@dataclass(frozen=True)
class DecodedBatch:
    """A decoded batch. ``series`` is the columnar form (fast for bulk storage); ``samples``
    builds the per-reading view on first use."""

    series: list[Series]
    alerts: list[Alert]
    gaps: list[Gap]

    @cached_property
    def samples(self) -> list[Sample]:
        return [sample for s in self.series for sample in s.samples()]

    @cached_property
    def readings(self) -> int:
        """Readings in the batch (counted once: the ingest asks for it several times)."""
        return sum(map(len, map(_SERIES_TS, self.series)))


_SERIES_TS = operator.itemgetter(2)  # Series.ts, at C speed


# =========================================================================== primitives
def _zz(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _unzz(z: int) -> int:
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def _put_uvarints(out: bytearray, values: Iterable[int]) -> None:
    append = out.append
    for v in values:
        while v > 0x7F:
            append((v & 0x7F) | 0x80)
            v >>= 7
        append(v)


def _put_uvarint(out: bytearray, v: int) -> None:
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_zz_deltas(out: bytearray, values: Sequence[int], start: int = 0) -> None:
    # the deltas by one C-level map (values[i] - values[i - 1]), then zig-zag
    zs = [d << 1 if d >= 0 else ((-d) << 1) - 1
          for d in map(operator.sub, values, chain((start,), values))]
    if zs and max(zs) < 0x80:
        out += bytes(zs)
    else:
        _put_uvarints(out, zs)


def _put_blob(out: bytearray, b: bytes) -> None:
    _put_uvarint(out, len(b))
    out += b


def _runs(items: Sequence[Any]) -> list[tuple[Any, int]]:
    runs: list[tuple[Any, int]] = []
    prev = object()
    n = 0
    for it in items:
        if it is prev or it == prev:
            n += 1
        else:
            if n:
                runs.append((prev, n))
            prev, n = it, 1
    if n:
        runs.append((prev, n))
    return runs


class _Strings:
    """The batch's string table: each distinct name stored once."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, s: str) -> int:
        try:
            i = self.index.get(s)
        except TypeError:
            raise CodecError(f"expected a string, got {type(s).__name__} {s!r}") from None
        if i is None:
            if not isinstance(s, str):
                raise CodecError(f"expected a string, got {type(s).__name__} {s!r}")
            i = self.index[s] = len(self.index)
        return i

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, len(self.index))
        for s in self.index:
            try:
                _put_blob(out, s.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise CodecError(f"name {s!r} is not valid unicode: {exc}") from None


# =========================================================================== encoding
def encode_batch(
    samples: Iterable[Sample] = (), alerts: Iterable[Alert] = (), gaps: Iterable[Gap] = ()
) -> bytes:
    """Encode samples, alerts and gap records as one versioned, snappy-compressed batch."""
    strings = _Strings()
    series: dict[tuple[str, str], list[Sample]] = {}
    total = 0
    for s in samples:
        key = (s.device, s.metric)
        lst = series.get(key)
        if lst is None:
            series[key] = [s]
        else:
            lst.append(s)
        total += 1
    if total > MAX_SAMPLES:
        raise CodecError(f"batch of {total} samples exceeds the limit of {MAX_SAMPLES}")
    body = bytearray()
    series_out = bytearray()
    _put_uvarint(series_out, len(series))
    prev_first_ts = 0
    prev_ts: list[int] | None = None
    for (device, metric), lst in series.items():
        _put_uvarint(series_out, strings(device))
        _put_uvarint(series_out, strings(metric))
        prev_first_ts, prev_ts = _write_series(series_out, lst, prev_first_ts, prev_ts)
    alerts_out = bytearray()
    _write_alerts(alerts_out, list(alerts), strings)
    gaps_out = bytearray()
    _write_gaps(gaps_out, list(gaps), strings)
    strings.write(body)
    body += series_out
    body += alerts_out
    body += gaps_out
    if len(body) > MAX_BODY_BYTES:
        raise CodecError(f"batch body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    return bytes((VERSION,)) + snappy.compress(bytes(body))


def _check_int(v: int, what: object) -> int:
    if not INT_MIN <= v <= INT_MAX:
        raise CodecError(f"{what}: int {v} outside the 64-bit range [-2**63, 2**64)")
    return v


def _write_series(
    out: bytearray, lst: list[Sample], prev_first_ts: int, prev_ts: list[int] | None
) -> tuple[int, list[int]]:
    where, ts, qualities, values = _columns(lst)
    n = len(lst)
    flags = 0
    if ts == prev_ts:
        flags |= FLAG_TS_SAME
    if qualities.count(Quality.GOOD) == n:
        flags |= FLAG_ALL_GOOD
    present = values
    if None in values:
        present = [v for v in values if v is not None]
        flags |= FLAG_HAS_NONE
    _put_uvarint(out, n)
    out.append(flags)
    if not flags & FLAG_TS_SAME:
        _put_uvarint(out, _zz(ts[0] - prev_first_ts))
        _put_zz_deltas(out, ts[1:], ts[0])
    if not flags & FLAG_ALL_GOOD:
        _put_quality_runs(out, qualities, where)
    if flags & FLAG_HAS_NONE:
        _put_presence_runs(out, values)
    _write_values(out, present, where)
    return ts[0], ts


def _columns(lst: list[Sample]) -> tuple[_Where, list[int], list[Quality], list[Any]]:
    """One series' (where, timestamps, qualities, values); the timestamps are checked to be
    ints in the signed 64-bit range."""
    s0 = lst[0]
    where = _Where(s0.device, s0.metric)
    ts = [s.ts_ms for s in lst]
    if set(map(type, ts)) != {int}:
        for t in ts:
            if not isinstance(t, int) or isinstance(t, bool):
                raise CodecError(f"{where}: ts_ms must be int, got {type(t).__name__}")
    if min(ts) < INT_MIN or max(ts) >= 2**63:
        raise CodecError(f"{where}: ts_ms outside the signed 64-bit range")
    return where, ts, [s.quality for s in lst], [s.value for s in lst]


def _put_quality_runs(out: bytearray, qualities: list[Quality], where: _Where) -> None:
    qruns = _runs(qualities)
    _put_uvarint(out, len(qruns))
    for q, k in qruns:
        try:
            qv = int(q)
        except (TypeError, ValueError):
            raise CodecError(f"{where}: quality {q!r} is not a Quality") from None
        if qv not in _QUALITIES:
            raise CodecError(f"{where}: unknown quality {q!r}")
        out.append(qv)
        _put_uvarint(out, k)


def _put_presence_runs(out: bytearray, values: list[Any]) -> None:
    """Run lengths alternating present / None, starting with present."""
    pruns: list[int] = []
    want_present = True
    k = 0
    for v in values:
        if (v is not None) == want_present:
            k += 1
        else:
            pruns.append(k)
            want_present = not want_present
            k = 1
    pruns.append(k)
    _put_uvarint(out, len(pruns))
    _put_uvarints(out, pruns)


class _Where:
    """Names a series in error messages (formatted only when an error is raised)."""

    __slots__ = ("device", "metric")

    def __init__(self, device: str, metric: str) -> None:
        self.device, self.metric = device, metric

    def __str__(self) -> str:
        return f"device {self.device!r} metric {self.metric!r}"


def _column_type(values: list[Any]) -> int:
    if not values:
        return COL_NONE
    types = set(map(type, values))
    if len(types) != 1:
        return COL_MIXED
    t = types.pop()
    if t is float:
        return COL_FLOAT
    if t is bool:
        return COL_BOOL
    if t is int:
        return COL_INT
    if t is str:
        return COL_STR
    if t is bytes:
        return COL_BYTES
    return COL_MIXED  # subclasses (IntEnum, numpy scalars): validated per value below


def _write_values(out: bytearray, values: list[Any], where: _Where) -> None:
    col = _column_type(values)
    out.append(col)
    if col == COL_NONE:
        return
    if col == COL_FLOAT:
        _write_floats(out, values)
    elif col == COL_INT:
        for v in values:
            _check_int(v, where)
        _put_zz_deltas(out, values)
    elif col == COL_BOOL:
        bits = bytearray((len(values) + 7) // 8)
        for i, v in enumerate(values):
            if v:
                bits[i >> 3] |= 1 << (i & 7)
        out += bits
    elif col == COL_STR:
        for v in values:
            try:
                _put_blob(out, v.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise CodecError(f"{where}: string value is not valid unicode: {exc}") from None
    elif col == COL_BYTES:
        for v in values:
            _put_blob(out, v)
    else:
        _write_mixed(out, values, where)


def _write_mixed(out: bytearray, values: list[Any], where: _Where) -> None:
    for v in values:
        if isinstance(v, bool):
            out.append(T_TRUE if v else T_FALSE)
        elif isinstance(v, int):
            out.append(T_INT)
            _put_uvarint(out, _zz(_check_int(int(v), where)))
        elif isinstance(v, float):
            out.append(T_FLOAT)
            out += _F64.pack(v)
        elif isinstance(v, str):
            out.append(T_STR)
            try:
                _put_blob(out, str(v).encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise CodecError(f"{where}: string value is not valid unicode: {exc}") from None
        elif isinstance(v, bytes | bytearray | memoryview):
            out.append(T_BYTES)
            _put_blob(out, bytes(v))
        else:
            raise CodecError(
                f"{where}: unsupported value type {type(v).__name__} "
                "(use float, int, bool, str, bytes or None)"
            )


def _decimal_exponent(values: list[float]) -> int | None:
    """Smallest e such that every value is exactly n / 10**e with |n| < 2**53, else None."""
    e = 0
    for v in values:
        r = repr(v)
        if "e" in r or "n" in r:  # exponent notation, nan, inf
            return None
        dot = r.find(".")
        digits = len(r) - dot - 1
        if digits == 1 and r[-1] == "0":
            digits = 0
        if digits > e:
            e = digits
            if e > _MAX_DECIMALS:
                return None
    return e


def _decimal_ints(values: list[float], e: int) -> list[int] | None:
    scale = 10**e
    ints = []
    for v in values:
        n = round(v * scale)
        if abs(n) >= _MAX_EXACT or n / scale != v or (n == 0 and math.copysign(1.0, v) < 0):
            return None
        ints.append(n)
    return ints


def _scaled_ints(values: list[float]) -> tuple[int, list[int]] | None:
    """(e, n) with every value == n * 10**-e as computed by a driver scaling a raw register
    (``raw * 0.1`` is not the decimal 21.4 but 21.400000000000002), else None."""
    for e in (1, 2, 3):
        c = _SCALES[e]
        ints = []
        try:
            for v in values:
                n = round(v / c)
                if n * c != v or abs(n) >= _MAX_EXACT or (n == 0 and math.copysign(1.0, v) < 0):
                    break
                ints.append(n)
            else:
                return e, ints
        except (OverflowError, ValueError):  # inf, nan
            return None
    return None


def _xor_encode(words: Iterable[int], width: int) -> bytes:
    out = bytearray()
    prev = 0
    zero = b"\0"
    for w in words:
        x = w ^ prev
        prev = w
        if not x:
            out.append(width << 4)
            continue
        b = x.to_bytes(width, "big").lstrip(zero)
        mid = b.rstrip(zero)
        out.append(((width - len(b)) << 4) | (len(b) - len(mid)))
        out += mid
    return bytes(out)


def _write_floats(out: bytearray, values: list[float]) -> None:
    e = _decimal_exponent(values)
    ints = _decimal_ints(values, e) if e is not None else None
    if e is not None and ints is not None:
        out.append(F_DECIMAL)
        out.append(e)
        _put_zz_deltas(out, ints)
        return
    scaled = _scaled_ints(values)
    if scaled is not None:
        out.append(F_SCALED)
        out.append(scaled[0])
        _put_zz_deltas(out, scaled[1])
        return
    d = array("d", values)
    f32_exact = False
    if not any(v != v for v in values):  # NaN payloads may not survive f32 conversion
        try:
            f = array("f", values)
            f32_exact = array("d", f).tobytes() == d.tobytes()
        except OverflowError:
            pass
    if f32_exact:
        words = array("I")
        words.frombytes(f.tobytes())
        xor = _xor_encode(words, 4)
        mode = F_XOR32
    else:
        words = array("Q")
        words.frombytes(d.tobytes())
        xor = _xor_encode(words, 8)
        mode = F_XOR64
    if len(xor) < 8 * len(values):
        out.append(mode)
        out += xor
    else:
        out.append(F_PLAIN)
        if struct.pack("=H", 1) != b"\x00\x01":
            d.byteswap()
        out += d.tobytes()


def _write_alerts(out: bytearray, alerts: list[Alert], strings: _Strings) -> None:
    _put_uvarint(out, len(alerts))
    prev_ts = 0
    for a in alerts:
        where = f"alert {a.rule!r} device {a.device!r}"
        if not isinstance(a.ts_ms, int) or not INT_MIN <= a.ts_ms < 2**63:
            raise CodecError(f"{where}: ts_ms must be a signed 64-bit int")
        _put_uvarint(out, strings(a.rule))
        _put_uvarint(out, strings(a.device))
        _put_uvarint(out, strings(a.metric))
        _put_uvarint(out, strings(a.message))
        _put_uvarint(out, _zz(a.ts_ms - prev_ts))
        prev_ts = a.ts_ms
        flags = (1 if a.active else 0) | (2 if a.value is not None else 0)
        out.append(flags)
        try:
            sev = int(a.severity)
        except (TypeError, ValueError):
            raise CodecError(f"{where}: severity {a.severity!r} is not a Severity") from None
        if sev not in _SEVERITIES:
            raise CodecError(f"{where}: unknown severity {a.severity!r}")
        out.append(sev)
        if a.value is not None:
            try:
                out += _F64.pack(float(a.value))
            except (TypeError, ValueError):
                raise CodecError(f"{where}: value {a.value!r} is not a number") from None
        _put_uvarint(out, len(a.labels))
        for k, v in a.labels.items():
            _put_uvarint(out, strings(k))
            _put_uvarint(out, strings(v))


def _write_gaps(out: bytearray, gaps: list[Gap], strings: _Strings) -> None:
    _put_uvarint(out, len(gaps))
    for g in gaps:
        try:
            lane = int(g.lane)
        except (TypeError, ValueError):
            raise CodecError(f"gap: lane {g.lane!r} is not a Lane") from None
        if lane not in _LANES:
            raise CodecError(f"gap: unknown lane {g.lane!r}")
        for v in (*g.seqs, g.batches, g.readings):
            if not isinstance(v, int) or not 0 <= v <= COUNTER_MAX:
                raise CodecError(f"gap: {v!r} is not an int in [0, 2**63)")
        for v in (g.from_ts_ms, g.to_ts_ms):
            if not isinstance(v, int) or not INT_MIN <= v < 2**63:
                raise CodecError(f"gap: timestamp {v!r} is not a signed 64-bit int")
        out.append(lane)
        _put_uvarint(out, strings(g.reason))
        _put_uvarint(out, len(g.seqs))
        _put_zz_deltas(out, g.seqs)
        _put_uvarint(out, _zz(g.from_ts_ms))
        _put_uvarint(out, _zz(g.to_ts_ms - g.from_ts_ms))
        _put_uvarint(out, g.batches)
        _put_uvarint(out, g.readings)


# =========================================================================== decoding
class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def fail(self, what: str) -> CodecError:
        return CodecError(f"malformed batch at byte {self.pos} of {self.end}: {what}")

    def uvarint(self) -> int:
        data, pos = self.data, self.pos
        if pos < self.end and data[pos] < 0x80:  # fast path: a one-byte varint (most of them)
            self.pos = pos + 1
            return data[pos]
        result = 0
        shift = 0
        while True:
            if pos >= self.end:
                raise self.fail("truncated varint")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift >= 7 * _MAX_VARINT_BYTES:
                raise self.fail("varint longer than 10 bytes")
        self.pos = pos
        return result

    def uvarints(self, n: int) -> list[int]:
        if n > self.end - self.pos:
            raise self.fail(f"{n} varints announced, only {self.end - self.pos} bytes left")
        data, pos = self.data, self.pos
        chunk = data[pos : pos + n]
        if n and max(chunk) < 0x80:  # fast path: every varint is one byte
            self.pos = pos + n
            return list(chunk)
        return [self.uvarint() for _ in range(n)]

    def count(self, what: str, min_bytes_each: float = 1.0) -> int:
        n = self.uvarint()
        if n * min_bytes_each > self.end - self.pos:
            raise self.fail(f"{what} count {n} larger than the remaining data")
        return n

    def u8(self) -> int:
        if self.pos >= self.end:
            raise self.fail("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise self.fail(f"{n} bytes announced, only {self.end - self.pos} left")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def blob(self) -> bytes:
        return self.take(self.uvarint())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"invalid utf-8: {exc}") from None

    def zz_deltas(self, n: int, start: int = 0) -> list[int]:
        if n == 1:  # fast path: one reading per series is the common gateway batch
            z = self.uvarint()
            return [start + (z >> 1 if not z & 1 else -((z + 1) >> 1))]
        out = []
        prev = start
        for z in self.uvarints(n):
            prev += z >> 1 if not z & 1 else -((z + 1) >> 1)
            out.append(prev)
        return out


def _uncompressed_length(data: bytes) -> int:
    r = _Reader(data)
    r.pos = 1
    return r.uvarint()


def decode_batch(data: bytes) -> DecodedBatch:
    """Decode a batch made by ``encode_batch``. Raises ``CodecError`` on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise CodecError("empty batch")
    if data[0] != VERSION:
        raise CodecError(f"unsupported batch format version {data[0]} (this build reads {VERSION})")
    return _decode_snappy(data, _decode_body)


def _decode_snappy(data: bytes, decode_body: Callable[[_Reader], _Decoded]) -> _Decoded:
    """Run ``decode_body`` on the snappy body after byte 0, bounded by ``MAX_BODY_BYTES``;
    anything malformed becomes a ``CodecError``."""
    size = _uncompressed_length(data)
    if size > MAX_BODY_BYTES:
        raise CodecError(f"batch body of {size} bytes exceeds the limit of {MAX_BODY_BYTES}")
    try:
        body = snappy.decompress(data[1:])
    except Exception as exc:  # the snappy binding raises several unrelated types
        raise CodecError(f"batch is not valid snappy data: {type(exc).__name__}: {exc}") from None
    try:
        return decode_body(_Reader(bytes(body)))
    except CodecError:
        raise
    except (ValueError, OverflowError, IndexError, KeyError, TypeError, MemoryError) as exc:
        raise CodecError(f"malformed batch: {type(exc).__name__}: {exc}") from None


#: the single-reading fast path of ``_decode_body`` (tests turn it off to compare results)
_FAST_DECODE = True
_GOOD = Quality.GOOD
_TS_END = 2**63
_POW10 = tuple(10**e for e in range(_MAX_DECIMALS + 1))
_FAST_SINGLE_FLAGS = (FLAG_ALL_GOOD, FLAG_ALL_GOOD | FLAG_TS_SAME)
#: ``Series(...)`` without the NamedTuple's Python-level ``__new__`` (what ``_make`` does)
_new_tuple = tuple.__new__


def _uvarint_at(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the uvarint at ``data[pos]``, for the decoders' fast paths:
    raises IndexError or ValueError on a truncated or overlong one (the fast path then leaves
    the series to the general path, which reports it as a ``CodecError``)."""
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise ValueError("overlong varint")


def _decode_body(r: _Reader) -> DecodedBatch:
    strings = [r.text() for _ in range(r.count("string"))]
    n_strings = len(strings)

    def name(i: int) -> str:
        if i >= len(strings):
            raise r.fail(f"string index {i} out of range ({len(strings)} strings)")
        return strings[i]

    series: list[Series] = []
    append = series.append
    total = 0
    n_series = r.count("series", 4)
    prev_first_ts = 0
    prev_ts: list[int] | None = None
    data = r.data
    fast = _FAST_DECODE
    for _ in range(n_series):
        if fast and total < MAX_SAMPLES:
            # One GOOD reading of an int, exact-decimal or scaled-register series (a round
            # seal's batch is all of them): read inline, the same values as the general path
            # below. Anything else, or anything malformed, is left to the general path from
            # the series' first byte (so errors are reported exactly as before). The one-
            # and two-byte varints are unrolled here on purpose, the same lines each time: a
            # helper call per varint is the per-reading cost this path exists to remove.
            try:
                p = r.pos
                di = data[p]
                if di < 0x80:
                    p += 1
                elif data[p + 1] < 0x80:
                    di = (di & 0x7F) | data[p + 1] << 7
                    p += 2
                else:
                    di, p = _uvarint_at(data, p)
                mi = data[p]
                if mi < 0x80:
                    p += 1
                elif data[p + 1] < 0x80:
                    mi = (mi & 0x7F) | data[p + 1] << 7
                    p += 2
                else:
                    mi, p = _uvarint_at(data, p)
                flags = data[p + 1]
                if (data[p] == 1 and flags in _FAST_SINGLE_FLAGS and di < n_strings
                        and mi < n_strings):
                    p += 2
                    ts: list[int] | None = None
                    if flags == FLAG_ALL_GOOD:
                        z = data[p]
                        if z < 0x80:
                            p += 1
                        elif data[p + 1] < 0x80:
                            z = (z & 0x7F) | data[p + 1] << 7
                            p += 2
                        else:
                            z, p = _uvarint_at(data, p)
                        t = prev_first_ts + (z >> 1 if not z & 1 else -((z + 1) >> 1))
                        if INT_MIN <= t < _TS_END:
                            ts = [t]
                    elif prev_ts is not None and len(prev_ts) == 1:
                        ts = prev_ts
                    col = data[p]
                    if col == COL_FLOAT:
                        mode, e = data[p + 1], data[p + 2]
                        p += 3
                    else:
                        mode = e = -1
                        p += 1
                    z = data[p]
                    if z < 0x80:
                        p += 1
                    elif data[p + 1] < 0x80:
                        z = (z & 0x7F) | data[p + 1] << 7
                        p += 2
                    else:
                        z, p = _uvarint_at(data, p)
                    i = z >> 1 if not z & 1 else -((z + 1) >> 1)
                    value: Any = None
                    if col == COL_INT:
                        if INT_MIN <= i <= INT_MAX:
                            value = i
                    elif -_MAX_EXACT < i < _MAX_EXACT:
                        if mode == F_DECIMAL and e <= _MAX_DECIMALS:
                            value = i / _POW10[e]
                        elif mode == F_SCALED and 1 <= e < len(_SCALES):
                            value = i * _SCALES[e]
                    if value is not None and ts is not None:
                        append(_new_tuple(Series, (strings[di], strings[mi], ts, [value],
                                                   [_GOOD])))
                        prev_first_ts = ts[0]
                        prev_ts = ts
                        total += 1
                        r.pos = p
                        continue
            except (IndexError, ValueError):
                pass
        device = name(r.uvarint())
        metric = name(r.uvarint())
        n = r.uvarint()
        if n == 0:
            raise r.fail("empty series")
        total += n
        if total > MAX_SAMPLES:
            raise r.fail(f"more than {MAX_SAMPLES} samples")
        flags = r.u8()
        if flags & ~_KNOWN_FLAGS:
            raise r.fail(f"unknown series flags {flags:#x}")
        if flags & FLAG_TS_SAME:
            if prev_ts is None or len(prev_ts) != n:
                raise r.fail("series reuses timestamps of a previous series of another length")
            ts = prev_ts
        else:
            first = prev_first_ts + _unzz(r.uvarint())
            ts = [first, *r.zz_deltas(n - 1, first)] if n > 1 else [first]
            for t in (min(ts), max(ts)):
                if not INT_MIN <= t < 2**63:
                    raise r.fail("timestamp outside the signed 64-bit range")
        prev_first_ts, prev_ts = ts[0], ts
        qualities = [Quality.GOOD] * n if flags & FLAG_ALL_GOOD else _read_quality_runs(r, n)
        if flags & FLAG_HAS_NONE:
            mask = _read_presence_mask(r, n)
            n_present = sum(mask)
        else:
            mask = []
            n_present = n
        values = _read_values(r, n_present)
        if flags & FLAG_HAS_NONE:
            it = iter(values)
            values = [next(it) if m else None for m in mask]
        append(Series(device, metric, ts, values, qualities))
    alerts = _read_alerts(r, name)
    gaps = _read_gaps(r, name)
    if r.pos != r.end:
        raise r.fail(f"{r.end - r.pos} trailing bytes")
    return DecodedBatch(series, alerts, gaps)


def _read_quality_runs(r: _Reader, n: int) -> list[Quality]:
    qualities: list[Quality] = []
    for _ in range(r.count("quality run", 2)):
        q = _QUALITIES.get(r.u8())
        if q is None:
            raise r.fail("unknown quality")
        qualities += [q] * min(r.uvarint(), n + 1 - len(qualities))
    if len(qualities) != n:
        raise r.fail("quality runs do not add up to the series length")
    return qualities


def _read_presence_mask(r: _Reader, n: int) -> list[bool]:
    """The presence runs as one bool per reading (True: a value follows in the column)."""
    pruns = r.uvarints(r.count("presence run"))
    if sum(pruns) != n:
        raise r.fail("presence runs do not add up to the series length")
    mask: list[bool] = []
    for i, k in enumerate(pruns):
        mask += [not i & 1] * k
    return mask


def _read_values(r: _Reader, n: int) -> list[Any]:
    col = r.u8()
    if col == COL_NONE:
        if n:
            raise r.fail("values missing for present samples")
        return []
    if n == 0:
        raise r.fail("value column without present samples")
    if col == COL_FLOAT:
        return _read_floats(r, n)
    if col == COL_INT:
        values = r.zz_deltas(n)
        if min(values) < INT_MIN or max(values) > INT_MAX:
            raise r.fail("int value outside the 64-bit range")
        return values
    if col == COL_BOOL:
        bits = r.take((n + 7) // 8)
        return [bool(bits[i >> 3] >> (i & 7) & 1) for i in range(n)]
    if col == COL_STR:
        return [r.text() for _ in range(n)]
    if col == COL_BYTES:
        return [r.blob() for _ in range(n)]
    if col == COL_MIXED:
        return [_read_tagged(r) for _ in range(n)]
    raise r.fail(f"unknown value column type {col}")


def _read_tagged(r: _Reader) -> Any:
    tag = r.u8()
    if tag == T_FLOAT:
        return _F64.unpack(r.take(8))[0]
    if tag == T_INT:
        v = _unzz(r.uvarint())
        if not INT_MIN <= v <= INT_MAX:
            raise r.fail("int value outside the 64-bit range")
        return v
    if tag == T_FALSE:
        return False
    if tag == T_TRUE:
        return True
    if tag == T_STR:
        return r.text()
    if tag == T_BYTES:
        return r.blob()
    raise r.fail(f"unknown value tag {tag}")


def _xor_decode(r: _Reader, n: int, width: int) -> list[int]:
    if n > r.end - r.pos:
        raise r.fail("float column shorter than its count")
    words = []
    prev = 0
    data = r.data
    for _ in range(n):
        h = r.u8()
        lead, trail = h >> 4, h & 0x0F
        k = width - lead - trail
        if k < 0 or (k == 0 and trail):
            raise r.fail("bad xor header")
        if k:
            pos = r.pos
            if pos + k > r.end:
                raise r.fail("truncated float column")
            r.pos = pos + k
            prev ^= int.from_bytes(data[pos : pos + k], "big") << (8 * trail)
        words.append(prev)
    return words


def _read_floats(r: _Reader, n: int) -> list[float]:
    mode = r.u8()
    if mode == F_DECIMAL:
        e = r.u8()
        if e > _MAX_DECIMALS:
            raise r.fail(f"decimal exponent {e} too large")
        scale = 10**e
        ints = r.zz_deltas(n)
        if max(map(abs, ints)) >= _MAX_EXACT:
            raise r.fail("decimal value out of range")
        return [i / scale for i in ints]
    if mode == F_SCALED:
        e = r.u8()
        if not 1 <= e < len(_SCALES):
            raise r.fail(f"scale exponent {e} out of range")
        c = _SCALES[e]
        ints = r.zz_deltas(n)
        if max(map(abs, ints)) >= _MAX_EXACT:
            raise r.fail("scaled value out of range")
        return [i * c for i in ints]
    if mode == F_PLAIN:
        d = array("d")
        d.frombytes(r.take(8 * n))
        if struct.pack("=H", 1) != b"\x00\x01":
            d.byteswap()
        return d.tolist()
    if mode in (F_XOR32, F_XOR64):
        width = 4 if mode == F_XOR32 else 8
        words = array("I" if width == 4 else "Q", _xor_decode(r, n, width))
        floats = array("f" if width == 4 else "d")
        floats.frombytes(words.tobytes())
        return [float(x) for x in floats]
    raise r.fail(f"unknown float mode {mode}")


def _read_alerts(r: _Reader, name: Any) -> list[Alert]:
    alerts = []
    prev_ts = 0
    for _ in range(r.count("alert", 7)):
        rule, device, metric, message = (name(r.uvarint()) for _ in range(4))
        ts = prev_ts + _unzz(r.uvarint())
        if not INT_MIN <= ts < 2**63:
            raise r.fail("alert timestamp outside the signed 64-bit range")
        prev_ts = ts
        flags = r.u8()
        if flags & ~3:
            raise r.fail(f"unknown alert flags {flags:#x}")
        sev = _SEVERITIES.get(r.u8())
        if sev is None:
            raise r.fail("unknown severity")
        value = _F64.unpack(r.take(8))[0] if flags & 2 else None
        labels = {}
        for _ in range(r.count("label", 2)):
            k = name(r.uvarint())
            labels[k] = name(r.uvarint())
        alerts.append(Alert(rule, device, ts, bool(flags & 1), sev, message, metric, value, labels))
    return alerts


def _read_gaps(r: _Reader, name: Any) -> list[Gap]:
    gaps = []
    for _ in range(r.count("gap", 7)):
        lane = _LANES.get(r.u8())
        if lane is None:
            raise r.fail("unknown lane")
        reason = name(r.uvarint())
        seqs = tuple(r.zz_deltas(r.count("gap seq")))
        if seqs and (min(seqs) < 0 or max(seqs) > COUNTER_MAX):
            raise r.fail("gap seq outside [0, 2**63)")
        from_ts = _unzz(r.uvarint())
        to_ts = from_ts + _unzz(r.uvarint())
        batches = r.uvarint()
        readings = r.uvarint()
        for v in (from_ts, to_ts):
            if not INT_MIN <= v < 2**63:
                raise r.fail("gap timestamp outside the signed 64-bit range")
        if batches > COUNTER_MAX or readings > COUNTER_MAX:
            raise r.fail("gap counter outside [0, 2**63)")
        gaps.append(Gap(lane, seqs, from_ts, to_ts, batches, readings, reason))
    return gaps
