"""Batch codec version 2: series ids from a per-gateway dictionary, step-aware columns, re-packs.

Version 1 (``codec``) spells every series name in every batch and codes values as plain deltas:
fine for big batches, but a 250 ms batch at 1 s polling holds one reading per series and the
names dominate. Version 2 keeps v1's value columns and adds:

- a **series dictionary**: a batch names a series by a small id. The id's definition (device,
  metric) travels in-band in the batch (``defs``). Rule (``SeriesDictionary``): the gateway puts
  an id's definition in EVERY batch that uses it until the cloud has acked (durably stored) one
  batch carrying it; from then on the id goes alone. The cloud stores definitions in the same
  transaction as the batch, so it can always resolve an id: after reconnects, re-sends and its
  own restarts. Ids live in an ``epoch`` (a random 63-bit number the gateway keeps in its state
  dir); epoch 0 means "batch-local ids only" (no state needed on either side).
- **step-aware integer columns** (ints, and floats that are exact decimals or scaled registers):
  per series the smallest of constant step (first value + one step: a counter or a ramp costs
  two varints whatever its length), delta-of-delta, or plain deltas. Timestamps use
  delta-of-delta (a steady poll period costs one zero byte per reading, before snappy).
- **columnar series table** (ids, counts, flags as columns) so snappy finds the repeats.
- **re-packed batches** (``parts``): a batch that replaces several stored batches carries their
  sequence numbers and, per series, how many readings came from each; the cloud splits it back
  and deduplicates per ORIGINAL sequence (a part already stored is skipped), then acks the
  re-packed batch's own sequence.
- **version 3 = a re-packed batch with part digests**: the same layout, plus, after the part
  seqs, the first ``DIGEST_BYTES`` (8) bytes of the SHA-256 of each original batch's plaintext,
  so the cloud's sequence-conflict check (docs/delivery.md) covers re-packed parts as it covers
  ordinary batches: a part whose seq is stored with a different digest is a conflict, not a
  duplicate. A version 3 batch may carry the alerts of re-packed ALERT batches instead of
  series: then per part the number of its alerts follows the alerts (alerts in part order).
  A build that reads only version 2 refuses version 3 with "not a version 2 batch"; every
  ordinary batch stays version 2 (byte for byte as before).

Layout (after byte 0 = 2, snappy of)::

    epoch u-varint | strings (v1 table) | defs: n, ids (zig-zag deltas), device idx, metric idx
    parts: n, first seq, then n-1 seq deltas, [v3: n x DIGEST_BYTES digest prefixes]
    series: n, ids (zig-zag deltas), counts, flags (u8), [part counts per series unless
            FLAG_PARTS_SAME], value kinds, then per series: timestamps, qualities,
            presence, value payload
    alerts, [v3 with alerts: n part alert counts], gaps (as in v1, names in the string table)

Invariants: as v1 (exact round trip of every value type, ``CodecError`` and nothing else on
malformed input, bounded work: ``MAX_BODY_BYTES``, ``MAX_SAMPLES``, at most ``MAX_DEFS``
definitions and ``MAX_PARTS`` parts per batch). An id neither defined in the batch nor known to
the resolver raises ``UnknownSeries`` (a subclass of ``CodecError``): the cloud answers RETRY,
never REJECTED, because the batch itself is fine and only the cloud's dictionary is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise, repeat
from typing import Any, cast

import snappy

from edgegw.protocol import codec as v1
from edgegw.protocol.codec import (
    COL_FLOAT,
    COL_INT,
    MAX_BODY_BYTES,
    MAX_SAMPLES,
    CodecError,
    DecodedBatch,
    Gap,
    Series,
    _check_int,
    _column_type,
    _columns,
    _decimal_exponent,
    _decimal_ints,
    _decode_snappy,
    _put_presence_runs,
    _put_quality_runs,
    _put_uvarint,
    _put_uvarints,
    _put_zz_deltas,
    _read_presence_mask,
    _read_quality_runs,
    _Reader,
    _scaled_ints,
    _Strings,
    _Where,
    _zz,
)
from edgegw.protocol.model import Alert, Quality, Sample, SampleBlock

VERSION = 2
VERSION_REPACKED = 3  # v2 + part digests (+ alert parts): re-packed batches only
DIGEST_BYTES = 8  # per part: SHA-256 prefix of the original batch's plaintext
MAX_DEFS = 1_000_000
MAX_PARTS = 100_000
MAX_ID = 2**32 - 1

FLAG_TS_SAME = 0x01
FLAG_ALL_GOOD = 0x02
FLAG_HAS_NONE = 0x04
FLAG_PARTS_SAME = 0x08  # part counts equal to the previous series'
_KNOWN_FLAGS = 0x0F

# integer column modes (v2); also used under F_DECIMAL / F_SCALED floats
I_DELTA = 0
I_DOD = 1
I_STEP = 2

SeriesKey = tuple[str, str]
#: resolver: (epoch, ids) -> {id: (device, metric)} for the ids it knows
Resolver = Callable[[int, Sequence[int]], dict[int, SeriesKey]]


class UnknownSeries(CodecError):
    """A batch names series ids that are neither defined in it nor known to the resolver."""

    def __init__(self, epoch: int, ids: Sequence[int]) -> None:
        super().__init__(
            f"series ids {sorted(ids)[:5]} of dictionary epoch {epoch} are not defined "
            f"({len(ids)} unknown)")
        self.epoch = epoch
        self.ids = list(ids)


@dataclass(frozen=True)
class DecodedV2(DecodedBatch):
    """A v2 batch: ``definitions`` made in it, its ``epoch``, and for a re-packed batch the
    original ``parts`` (seqs) with ``part_counts`` per series (same order as ``series``)."""

    epoch: int = 0
    definitions: dict[int, SeriesKey] = field(default_factory=dict)
    parts: list[int] = field(default_factory=list)
    part_counts: list[list[int]] = field(default_factory=list)
    #: version 3: per part, the digest prefix of the original batch (empty in version 2)
    part_digests: list[bytes] = field(default_factory=list)
    #: version 3 alert batch: per part, how many of ``alerts`` (in part order) it had
    alert_part_counts: list[int] = field(default_factory=list)

    def split_parts(self) -> list[tuple[int, list[Series]]]:
        """(original seq, its series) for a re-packed batch; [] for an ordinary one."""
        out: list[tuple[int, list[Series]]] = []
        if self.alert_part_counts:
            return [(seq, []) for seq in self.parts]
        for p, seq in enumerate(self.parts):
            mine = []
            for s, counts in zip(self.series, self.part_counts, strict=True):
                start = sum(counts[:p])
                k = counts[p]
                if k:
                    mine.append(Series(s.device, s.metric, s.ts[start:start + k],
                                       s.values[start:start + k],
                                       s.qualities[start:start + k]))
            out.append((seq, mine))
        return out

    def split_alert_parts(self) -> list[tuple[int, list[Alert]]]:
        """(original seq, its alerts) for a re-packed alert batch; [] otherwise."""
        out: list[tuple[int, list[Alert]]] = []
        start = 0
        for seq, k in zip(self.parts, self.alert_part_counts, strict=True):
            out.append((seq, list(self.alerts[start:start + k])))
            start += k
        return out

    def part_digest(self, p: int) -> bytes | None:
        """The digest prefix of part ``p``'s original batch (None in a version 2 batch)."""
        return self.part_digests[p] if self.part_digests else None


# =========================================================================== encoding
#: the single-reading fast path of ``encode_batch_v2`` (tests turn it off to compare bytes)
_FAST_SINGLE = True
_GOOD = Quality.GOOD
_INT_MIN, _INT_MAX, _TS_END = v1.INT_MIN, v1.INT_MAX, 2**63
_INTS = {int}
_TS_SAME_GOOD = bytes((FLAG_TS_SAME | FLAG_ALL_GOOD,))


def _put_small_uvarints(out: bytearray, values: list[int]) -> None:
    """``_put_uvarints``; one ``bytes()`` when every value fits in one byte (the usual case
    for series counts and value kinds)."""
    if values and min(values) >= 0 and max(values) < 0x80:
        out += bytes(values)
    else:
        _put_uvarints(out, values)


def _put_zz(out: bytearray, values: Iterable[int]) -> None:
    _put_uvarints(out, (v << 1 if v >= 0 else ((-v) << 1) - 1 for v in values))


def _int_modes(ints: Sequence[int]) -> tuple[int, bytes]:
    """(mode, payload): the smallest of constant step, delta-of-delta or deltas."""
    n = len(ints)
    out = bytearray()
    if n == 1:
        _put_zz(out, ints)
        return I_DELTA, bytes(out)
    deltas = [b - a for a, b in pairwise(ints)]
    step = deltas[0]
    if deltas.count(step) == len(deltas):
        _put_zz(out, (ints[0], step))
        return I_STEP, bytes(out)
    dod = bytearray()
    _put_zz(dod, (ints[0], step))
    _put_zz(dod, (b - a for a, b in pairwise(deltas)))
    plain = bytearray()
    _put_zz(plain, (ints[0], *deltas))
    return (I_DOD, bytes(dod)) if len(dod) < len(plain) else (I_DELTA, bytes(plain))


def _read_ints(r: _Reader, n: int, mode: int) -> list[int]:
    if mode == I_STEP:
        if n < 2:
            raise r.fail("constant step with fewer than 2 values")
        first, step = (v1._unzz(z) for z in (r.uvarint(), r.uvarint()))
        if abs(first) > 2**65 or abs(step) > 2**65:
            raise r.fail("integer out of range")
        return [first + i * step for i in range(n)]
    if mode == I_DELTA:
        return r.zz_deltas(n)
    if mode == I_DOD:
        if n < 2:
            raise r.fail("delta-of-delta with fewer than 2 values")
        first = v1._unzz(r.uvarint())
        delta = v1._unzz(r.uvarint())
        out = [first, first + delta]
        cur = first + delta
        for z in r.uvarints(n - 2):
            delta += z >> 1 if not z & 1 else -((z + 1) >> 1)
            cur += delta
            out.append(cur)
        if max(map(abs, out)) > 2**65:
            raise r.fail("integer out of range")
        return out
    raise r.fail(f"unknown integer mode {mode}")


# A series' value "kind" (one varint in the series table, so that snappy sees a column of
# repeats): col + 8 * sub. sub for ints = integer mode; for floats 0 = v1 float coding in the
# payload, 1 + mode + 3 * e = exact decimals n / 10**e (e 0..9), 31 + mode + 3 * (e - 1) =
# scaled registers n * 10**-e (e 1..3).
_SUB_DECIMAL = 1
_SUB_SCALED = 31
_SUB_MAX = 39


def _encode_values(values: list[Any], where: _Where) -> tuple[int, bytes]:
    """(kind, payload) of a series' present values."""
    col = _column_type(values)
    if col == COL_INT:
        for v in values:
            _check_int(v, where)
        mode, payload = _int_modes(values)
        return COL_INT + 8 * mode, payload
    if col == COL_FLOAT:
        e = _decimal_exponent(values)
        ints = _decimal_ints(values, e) if e is not None else None
        if e is not None and ints is not None:
            mode, payload = _int_modes(ints)
            return COL_FLOAT + 8 * (_SUB_DECIMAL + mode + 3 * e), payload
        scaled = _scaled_ints(values)
        if scaled is not None:
            mode, payload = _int_modes(scaled[1])
            return COL_FLOAT + 8 * (_SUB_SCALED + mode + 3 * (scaled[0] - 1)), payload
        out = bytearray()
        v1._write_floats(out, values)
        return COL_FLOAT, bytes(out)
    out = bytearray()
    v1._write_values(out, values, where)  # its first byte is the column type again
    return col, bytes(out)


def _read_values(r: _Reader, n: int, kind: int) -> list[Any]:
    col, sub = kind & 7, kind >> 3
    if col == COL_INT and n:
        values = _read_ints(r, n, sub)
        if min(values) < v1.INT_MIN or max(values) > v1.INT_MAX:
            raise r.fail("int value outside the 64-bit range")
        return values
    if col == COL_FLOAT and n:
        if sub == 0:
            return v1._read_floats(r, n)
        if sub > _SUB_MAX:
            raise r.fail(f"unknown float kind {sub}")
        scaled = sub >= _SUB_SCALED
        mode, e = ((sub - _SUB_SCALED) % 3, (sub - _SUB_SCALED) // 3 + 1) if scaled else (
            (sub - _SUB_DECIMAL) % 3, (sub - _SUB_DECIMAL) // 3)
        ints = _read_ints(r, n, mode)
        if max(map(abs, ints)) >= v1._MAX_EXACT:
            raise r.fail("decimal value out of range")
        if not scaled:
            scale = 10**e
            return [i / scale for i in ints]
        c = v1._SCALES[e]
        return [i * c for i in ints]
    if sub:
        raise r.fail(f"unknown value kind {kind}")
    if r.pos >= r.end or r.data[r.pos] != col:
        raise r.fail("value column type does not match the series kind")
    return v1._read_values(r, n)


def encode_batch_v2(
    samples: Iterable[Sample] = (),
    alerts: Iterable[Alert] = (),
    gaps: Iterable[Gap] = (),
    *,
    ids: Callable[[SeriesKey], tuple[int, bool]] | None = None,
    ids_many: Callable[[Collection[SeriesKey]], tuple[list[int], list[bool]]] | None = None,
    epoch: int = 0,
    parts: Sequence[int] = (),
    part_of: Sequence[int] = (),
    part_digests: Sequence[bytes] = (),
    alert_part_of: Sequence[int] = (),
    blocks: Sequence[SampleBlock] = (),
) -> tuple[bytes, list[int]]:
    """Encode a v2 batch; returns (bytes, ids defined in it).

    ``blocks``: readings given as polls' ``SampleBlock`` columns, after those of ``samples``;
    the bytes are exactly those of the same readings given as samples. Read column-wise when
    they are the batch's only readings and no two come from one device (every series then
    holds one reading: a round seal's shape); otherwise made into samples first.

    ``ids(key) -> (id, must_define)`` assigns dictionary ids (``SeriesDictionary.assign``),
    or ``ids_many(keys) -> (ids, must_define)`` all of a batch's at once (one lock round
    trip); without either, ids
    are batch-local (epoch 0, all defined inline). For a re-packed batch,
    ``parts`` are the original seqs and ``part_of[i]`` the index in ``parts`` of sample i;
    samples must come in part order. With ``part_digests`` (one ``DIGEST_BYTES`` prefix per
    part) the batch is version 3, which may instead carry alerts, ``alert_part_of[i]`` being
    the part of alert i (alerts in part order).
    """
    if ids is None and ids_many is None:
        epoch = 0
        local: dict[SeriesKey, int] = {}

        def ids(key: SeriesKey) -> tuple[int, bool]:
            i = local.get(key)
            if i is None:
                i = local[key] = len(local)
                return i, True
            return i, False
    if not 0 <= epoch < 2**63:
        raise CodecError(f"dictionary epoch {epoch} outside [0, 2**63)")
    blocks_l = list(blocks)
    if blocks_l:
        samples = list(samples)
        if (samples or parts or not _FAST_SINGLE
                or len({b.device for b in blocks_l}) != len(blocks_l)):
            samples += [s for b in blocks_l for s in b]
            blocks_l = []
    strings = _Strings()
    series: dict[SeriesKey, list[Sample]] = {}
    sparts: dict[SeriesKey, list[int]] = {}
    n_parts = len(parts)
    if n_parts > MAX_PARTS:
        raise CodecError(f"{n_parts} parts exceed the limit of {MAX_PARTS}")
    if n_parts and len(part_of) == 0 and len(alert_part_of) == 0:
        raise CodecError("parts given without part_of")
    total = 0
    if not n_parts:
        # the hot path (every sealed batch): group by series, nothing else
        get = series.get
        for s in samples:
            key = (s.device, s.metric)
            lst = get(key)
            if lst is None:
                series[key] = [s]
            else:
                lst.append(s)
        total = sum(map(len, series.values()))
    for i, s in enumerate(samples if n_parts else ()):
        key = (s.device, s.metric)
        lst = series.get(key)
        if lst is None:
            series[key] = lst = []
            sparts[key] = [0] * n_parts
        lst.append(s)
        counts = sparts[key]
        p = part_of[i]
        if any(counts[p + 1:]):
            raise CodecError("re-packed samples must come in part order")
        counts[p] += 1
        total += 1
    keys: Collection[SeriesKey] = series
    if blocks_l:  # distinct devices, metrics distinct per block: one reading per series
        keys = list(chain.from_iterable(b.keys for b in blocks_l))
        total = len(keys)
    if total > MAX_SAMPLES:
        raise CodecError(f"batch of {total} samples exceeds the limit of {MAX_SAMPLES}")
    alerts_l, gaps_l = list(alerts), list(gaps)
    digests = list(part_digests)
    if digests and (len(digests) != n_parts or any(
            not isinstance(d, bytes) or len(d) != DIGEST_BYTES for d in digests)):
        raise CodecError(f"part digests must be one {DIGEST_BYTES}-byte prefix per part")
    alert_counts = [0] * n_parts
    if n_parts and (gaps_l or (alerts_l and not digests)):
        raise CodecError("a re-packed batch carries telemetry, or (version 3) alerts")
    if alerts_l and n_parts:
        if total or len(alert_part_of) != len(alerts_l):
            raise CodecError("a re-packed alert batch needs alert_part_of and no samples")
        for p in alert_part_of:
            if any(alert_counts[p + 1:]):
                raise CodecError("re-packed alerts must come in part order")
            alert_counts[p] += 1
    if ids_many is not None:
        sid, define = ids_many(keys)
    else:
        assert ids is not None  # set above when neither was given
        assigned = list(map(ids, keys))
        sid, define = [i for i, _ in assigned], [d for _, d in assigned]
    if not len(sid) == len(define) == len(keys):
        raise CodecError(f"{len(sid)} ids assigned for {len(keys)} series")
    if sid and not (min(sid) >= 0 and max(sid) <= MAX_ID):
        bad = next(i for i in sid if not 0 <= i <= MAX_ID)
        raise CodecError(f"series id {bad} outside u32")
    defined = [(i, strings(key[0]), strings(key[1]))
               for key, i, d in zip(keys, sid, define, strict=True) if d] if any(define) else []
    if len(defined) > MAX_DEFS:
        raise CodecError(f"{len(defined)} definitions exceed the limit of {MAX_DEFS}")

    tail = bytearray()
    _put_uvarint(tail, len(defined))
    _put_zz_deltas(tail, [d[0] for d in defined])
    _put_uvarints(tail, (d[1] for d in defined))
    _put_uvarints(tail, (d[2] for d in defined))
    _put_uvarint(tail, n_parts)
    if n_parts:
        for p in parts:
            if not isinstance(p, int) or not 0 <= p < 2**63:
                raise CodecError(f"part seq {p!r} outside [0, 2**63)")
        _put_uvarint(tail, parts[0])
        _put_zz_deltas(tail, list(parts[1:]), parts[0])
        for d in digests:
            tail += d
    _put_uvarint(tail, len(keys))
    _put_zz_deltas(tail, sid)
    _put_small_uvarints(tail, [1] * total if blocks_l else list(map(len, series.values())))
    flags_at = len(tail)
    tail += bytes(len(keys))
    prev_parts: list[int] | None = None
    for j, key in enumerate(series if n_parts else ()):
        if n_parts:
            counts = sparts[key]
            if counts == prev_parts:
                tail[flags_at + j] |= FLAG_PARTS_SAME
            else:
                _put_uvarints(tail, counts)
                prev_parts = counts
    prev_first_ts = 0
    prev_ts: list[int] | None = None
    data = bytearray()
    kinds: list[int] = []
    append = data.append
    for j, lst in enumerate(series.values()):
        if len(lst) == 1 and _FAST_SINGLE:
            # One reading of an int series (a round seal: one poll round per batch). Writes
            # exactly what _write_series would, without its per-series lists and checks.
            s = lst[0]
            t, v = s.ts_ms, s.value
            if (type(t) is int and type(v) is int and s.quality is _GOOD
                    and _INT_MIN <= t < _TS_END and _INT_MIN <= v <= _INT_MAX):
                if prev_ts is not None and len(prev_ts) == 1 and prev_ts[0] == t:
                    tail[flags_at + j] |= FLAG_TS_SAME | FLAG_ALL_GOOD
                else:
                    tail[flags_at + j] |= FLAG_ALL_GOOD
                    z = t - prev_first_ts
                    z = z << 1 if z >= 0 else ((-z) << 1) - 1
                    while z > 0x7F:
                        append((z & 0x7F) | 0x80)
                        z >>= 7
                    append(z)
                    prev_ts = [t]
                prev_first_ts = t
                z = v << 1 if v >= 0 else ((-v) << 1) - 1
                while z > 0x7F:
                    append((z & 0x7F) | 0x80)
                    z >>= 7
                append(z)
                kinds.append(COL_INT)  # + 8 * I_DELTA: one value
                continue
        flags, kind, prev_first_ts, prev_ts = _write_series(data, lst, prev_first_ts, prev_ts)
        tail[flags_at + j] |= flags
        kinds.append(kind)
    j = flags_at
    for b in blocks_l:
        # the single-reading path above, a block at a time: the block's readings share its
        # timestamp, so every series after its first one has FLAG_TS_SAME
        t, vals = b.ts_ms, cast(list[Any], b.values)  # ints, once the check below passed
        n = len(vals)
        if not (n and type(t) is int and _INT_MIN <= t < _TS_END and set(map(type, vals)) == _INTS
                and min(vals) >= _INT_MIN and max(vals) <= _INT_MAX):
            for s in b:  # floats, bools, strings...: the general path, reading by reading
                flags, kind, prev_first_ts, prev_ts = _write_series(data, [s], prev_first_ts,
                                                                    prev_ts)
                tail[j] |= flags
                kinds.append(kind)
                j += 1
            continue
        if prev_ts is not None and len(prev_ts) == 1 and prev_ts[0] == t:
            tail[j] |= FLAG_TS_SAME | FLAG_ALL_GOOD
        else:
            tail[j] |= FLAG_ALL_GOOD
            _put_zz(data, (t - prev_first_ts,))  # once per block: no need to inline it
            prev_ts = [t]
        prev_first_ts = t
        tail[j + 1:j + n] = _TS_SAME_GOOD * (n - 1)
        j += n
        for v in vals:
            z = v << 1 if v >= 0 else ((-v) << 1) - 1
            while z > 0x7F:
                append((z & 0x7F) | 0x80)
                z >>= 7
            append(z)
        kinds += repeat(COL_INT, n)  # + 8 * I_DELTA: one value
    _put_small_uvarints(tail, kinds)
    tail += data
    v1._write_alerts(tail, alerts_l, strings)
    if digests and alerts_l:
        _put_uvarints(tail, alert_counts)
    v1._write_gaps(tail, gaps_l, strings)
    body = bytearray()
    _put_uvarint(body, epoch)
    strings.write(body)
    body += tail
    if len(body) > MAX_BODY_BYTES:
        raise CodecError(f"batch body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    version = VERSION_REPACKED if digests else VERSION
    return bytes((version,)) + snappy.compress(bytes(body)), [d[0] for d in defined]


def _write_series(
    out: bytearray, lst: list[Sample], prev_first_ts: int, prev_ts: list[int] | None
) -> tuple[int, int, int, list[int]]:
    where, ts, qualities, values = _columns(lst)
    n = len(lst)
    flags = 0
    if ts == prev_ts:
        flags |= FLAG_TS_SAME
    else:
        _put_uvarint(out, _zz(ts[0] - prev_first_ts))
        if n > 1:
            d = ts[1] - ts[0]
            _put_uvarint(out, _zz(d))
            _put_zz(out, (
                (ts[i + 1] - ts[i]) - (ts[i] - ts[i - 1]) for i in range(1, n - 1)))
    if qualities.count(Quality.GOOD) == n:
        flags |= FLAG_ALL_GOOD
    else:
        _put_quality_runs(out, qualities, where)
    present = values
    if None in values:
        flags |= FLAG_HAS_NONE
        present = [v for v in values if v is not None]
        _put_presence_runs(out, values)
    kind, payload = _encode_values(present, where) if present else (0, b"\0")
    out += payload
    return flags, kind, ts[0], ts


# =========================================================================== decoding
#: the single-reading fast path of ``_decode_body`` (tests turn it off to compare results)
_FAST_DECODE = True
_FAST_SINGLE_FLAGS = (FLAG_ALL_GOOD, FLAG_ALL_GOOD | FLAG_TS_SAME)
#: value kinds the fast path reads (one zig-zag varint, ``I_DELTA``), and how: None = an int;
#: an int = exact decimal, ``n / 10**e``; a float = scaled register, ``n * 10**-e``
_FAST_KINDS: dict[int, int | float | None] = {
    COL_INT + 8 * I_DELTA: None,
    **{COL_FLOAT + 8 * (_SUB_DECIMAL + I_DELTA + 3 * e): 10**e
       for e in range(v1._MAX_DECIMALS + 1)},
    **{COL_FLOAT + 8 * (_SUB_SCALED + I_DELTA + 3 * (e - 1)): v1._SCALES[e]
       for e in range(1, len(v1._SCALES))},
}


def decode_batch_v2(data: bytes, resolve: Resolver | None = None) -> DecodedV2:
    """Decode a v2 batch (byte 0 == 2) or a version 3 re-packed one (byte 0 == 3). Raises
    ``CodecError`` (``UnknownSeries`` when an id is neither defined in the batch nor known to
    ``resolve``)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data or data[0] not in (VERSION, VERSION_REPACKED):
        raise CodecError("not a version 2 or 3 batch")
    v3 = data[0] == VERSION_REPACKED
    return _decode_snappy(data, lambda r: _decode_body(r, resolve, v3))


def _decode_body(r: _Reader, resolve: Resolver | None, v3: bool = False) -> DecodedV2:
    epoch = r.uvarint()
    if epoch >= 2**63:
        raise r.fail("epoch outside [0, 2**63)")
    strings = [r.text() for _ in range(r.count("string"))]

    def name(i: int) -> str:
        if i >= len(strings):
            raise r.fail(f"string index {i} out of range ({len(strings)} strings)")
        return strings[i]

    n_defs = r.count("definition", 3)
    if n_defs > MAX_DEFS:
        raise r.fail(f"{n_defs} definitions exceed {MAX_DEFS}")
    def_ids = r.zz_deltas(n_defs)
    def_dev = r.uvarints(n_defs)
    def_met = r.uvarints(n_defs)
    defs: dict[int, SeriesKey] = {}
    for i, d, m in zip(def_ids, def_dev, def_met, strict=True):
        if not 0 <= i <= MAX_ID:
            raise r.fail(f"series id {i} outside u32")
        key = (name(d), name(m))
        if defs.setdefault(i, key) != key:
            raise r.fail(f"series id {i} defined twice differently")
    n_parts = r.count("part")
    if n_parts > MAX_PARTS:
        raise r.fail(f"{n_parts} parts exceed {MAX_PARTS}")
    parts: list[int] = []
    if n_parts:
        first = r.uvarint()
        parts = [first, *r.zz_deltas(n_parts - 1, first)]
        if min(parts) < 0 or max(parts) >= 2**63 or len(set(parts)) != n_parts:
            raise r.fail("part seqs must be distinct and in [0, 2**63)")
    digests: list[bytes] = []
    if v3:
        if not n_parts:
            raise r.fail("a version 3 batch without parts")
        raw = r.take(n_parts * DIGEST_BYTES)
        digests = [bytes(raw[i:i + DIGEST_BYTES]) for i in range(0, len(raw), DIGEST_BYTES)]
    n_series = r.count("series", 3)
    sids = r.zz_deltas(n_series)
    counts = r.uvarints(n_series)
    flags_l = list(r.take(n_series))
    if sum(counts) > MAX_SAMPLES:
        raise r.fail(f"more than {MAX_SAMPLES} samples")
    names: dict[int, SeriesKey] = dict(defs)
    missing = [i for i in set(sids) if i not in names]
    if missing:
        found = resolve(epoch, missing) if (resolve is not None and epoch) else {}
        still = [i for i in missing if i not in found]
        if still:
            raise UnknownSeries(epoch, still)
        names.update({i: found[i] for i in missing})
    if len(set(sids)) != n_series:
        raise r.fail("a series id appears twice")
    part_counts: list[list[int]] = []
    prev_pc: list[int] | None = None
    for j in range(n_series):
        f = flags_l[j]
        if f & ~_KNOWN_FLAGS:
            raise r.fail(f"unknown series flags {f:#x}")
        if counts[j] == 0:
            raise r.fail("empty series")
        if not n_parts:
            if f & FLAG_PARTS_SAME:
                raise r.fail("part flag in a batch without parts")
            continue
        if f & FLAG_PARTS_SAME:
            if prev_pc is None:
                raise r.fail("first series reuses part counts")
            pc = prev_pc
        else:
            pc = r.uvarints(n_parts)
            prev_pc = pc
        if sum(pc) != counts[j]:
            raise r.fail("part counts do not add up to the series length")
        part_counts.append(pc)
    kinds = r.uvarints(n_series)
    series: list[Series] = []
    append = series.append
    prev_first_ts = 0
    prev_ts: list[int] | None = None
    data = r.data
    fast = _FAST_DECODE
    for j in range(n_series):
        n, f, kind = counts[j], flags_l[j], kinds[j]
        if fast and n == 1 and f in _FAST_SINGLE_FLAGS:
            # One GOOD reading of an int, exact-decimal or scaled-register series (a round
            # seal's batch is all of them): read inline, the same values as the general path
            # below; anything else or malformed is left to it from the series' first byte.
            # Varints unrolled on purpose, as in the v1 decoder's fast path (codec.py).
            scale = _FAST_KINDS.get(kind)
            try:
                p = r.pos
                ts: list[int] | None = None
                if f == FLAG_ALL_GOOD:
                    z = data[p]
                    if z < 0x80:
                        p += 1
                    elif data[p + 1] < 0x80:
                        z = (z & 0x7F) | data[p + 1] << 7
                        p += 2
                    else:
                        z, p = v1._uvarint_at(data, p)
                    t = prev_first_ts + (z >> 1 if not z & 1 else -((z + 1) >> 1))
                    if _INT_MIN <= t < _TS_END:
                        ts = [t]
                elif prev_ts is not None and len(prev_ts) == 1:
                    ts = prev_ts
                z = data[p]
                if z < 0x80:
                    p += 1
                elif data[p + 1] < 0x80:
                    z = (z & 0x7F) | data[p + 1] << 7
                    p += 2
                else:
                    z, p = v1._uvarint_at(data, p)
                i = z >> 1 if not z & 1 else -((z + 1) >> 1)
                value: Any = None
                if scale is None:
                    if _INT_MIN <= i <= _INT_MAX:
                        value = i
                elif -v1._MAX_EXACT < i < v1._MAX_EXACT:
                    value = i / scale if type(scale) is int else i * scale
                if kind in _FAST_KINDS and value is not None and ts is not None:
                    device, metric = names[sids[j]]
                    append(v1._new_tuple(Series, (device, metric, ts, [value], [_GOOD])))
                    prev_first_ts = ts[0]
                    prev_ts = ts
                    r.pos = p
                    continue
            except (IndexError, ValueError):
                pass
        if f & FLAG_TS_SAME:
            if prev_ts is None or len(prev_ts) != n:
                raise r.fail("series reuses timestamps of a previous series of another length")
            ts = prev_ts
        else:
            first = prev_first_ts + v1._unzz(r.uvarint())
            ts = [first]
            if n > 1:
                d = v1._unzz(r.uvarint())
                cur = first + d
                ts.append(cur)
                for z in r.uvarints(n - 2):
                    d += z >> 1 if not z & 1 else -((z + 1) >> 1)
                    cur += d
                    ts.append(cur)
            if min(ts) < v1.INT_MIN or max(ts) >= 2**63:
                raise r.fail("timestamp outside the signed 64-bit range")
        prev_first_ts, prev_ts = ts[0], ts
        qualities = [Quality.GOOD] * n if f & FLAG_ALL_GOOD else _read_quality_runs(r, n)
        if f & FLAG_HAS_NONE:
            mask = _read_presence_mask(r, n)
            values = _read_values(r, sum(mask), kind)
            it = iter(values)
            values = [next(it) if m else None for m in mask]
        else:
            values = _read_values(r, n, kind)
        device, metric = names[sids[j]]
        append(Series(device, metric, ts, values, qualities))
    alerts = v1._read_alerts(r, name)
    alert_counts: list[int] = []
    if v3 and alerts:
        if series:
            raise r.fail("a re-packed batch carries telemetry or alerts, not both")
        alert_counts = r.uvarints(n_parts)
        if sum(alert_counts) != len(alerts):
            raise r.fail("alert part counts do not add up to the alerts")
    gaps = v1._read_gaps(r, name)
    if r.pos != r.end:
        raise r.fail(f"{r.end - r.pos} trailing bytes")
    if n_parts and (gaps or (alerts and not v3)):
        raise r.fail("a re-packed batch carries telemetry, or (version 3) alerts")
    return DecodedV2(series, alerts, gaps, epoch, defs, parts, part_counts, digests,
                     alert_counts)


def decode_any(data: bytes, resolve: Resolver | None = None) -> DecodedBatch:
    """Decode a batch of any version (the version is byte 0)."""
    if isinstance(data, bytes | bytearray | memoryview) and len(data) and data[0] in (
            VERSION, VERSION_REPACKED):
        return decode_batch_v2(data, resolve)
    return v1.decode_batch(data)


def version_of(data: bytes) -> int:
    return data[0] if data else 0
