"""Codec v2: exact round trips (hypothesis), the dictionary rule, step coding, re-pack parts,
and hostile input (every malformed blob is a CodecError, never another exception)."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.model import Alert, Quality, Sample
from edgegw.protocol import codec_v2
from edgegw.protocol.codec import CodecError, Gap, decode_batch, encode_batch
from edgegw.protocol.codec_v2 import (
    UnknownSeries,
    decode_any,
    decode_batch_v2,
    encode_batch_v2,
)
from edgegw.store.series_dict import SeriesDictionary
from protocol.test_codec import (
    ALERTS,
    GAPS,
    alert_key,
    canon,
    samples_mixed,
    samples_typed,
)


@st.composite
def samples_stepping(draw: st.DrawFn) -> list[Sample]:
    """Polled registers: constant steps, ramps with jitter, counters that wrap, floats."""
    out: list[Sample] = []
    n = draw(st.integers(1, 12))
    t0 = draw(st.integers(0, 2**42))
    period = draw(st.sampled_from([100, 1000, 5000]))
    times = [t0 + period * i + draw(st.integers(-3, 3)) for i in range(n)]
    for d in range(draw(st.integers(1, 3))):
        for r in range(draw(st.integers(1, 5))):
            base = draw(st.integers(-(2**40), 2**40))
            step = draw(st.integers(-1000, 1000))
            kind = draw(st.sampled_from(["int", "wrap", "dec", "scaled", "jitter"]))
            for i, t in enumerate(times):
                if kind == "int":
                    v: Any = base + step * i
                elif kind == "wrap":
                    v = (base + step * i) % 65536
                elif kind == "dec":
                    v = round((base % 10**6 + step * i) / 100, 2)
                elif kind == "scaled":
                    v = ((base % 60000) + step * i) * 0.1
                else:
                    v = base + step * i + draw(st.integers(-2, 2))
                out.append(Sample(f"plc{d}", f"hr{r}", t, v))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=samples_mixed() | samples_typed() | samples_stepping(), alerts=ALERTS, gaps=GAPS)
def test_round_trip_is_exact(samples: list[Sample], alerts: list[Alert], gaps: list[Gap]) -> None:
    blob, defined = encode_batch_v2(samples, alerts, gaps)
    assert blob[0] == codec_v2.VERSION
    out = decode_any(blob)
    assert canon(out.samples) == canon(samples)
    assert [alert_key(a) for a in out.alerts] == [alert_key(a) for a in alerts]
    assert out.gaps == gaps
    assert len(defined) == len({(s.device, s.metric) for s in samples})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=samples_stepping(), second=samples_stepping())
def test_dictionary_ids_round_trip_once_confirmed(first: list[Sample],
                                                  second: list[Sample]) -> None:
    d = SeriesDictionary(None)
    _b1, defined1 = d.encode(first)
    d.sealed(7, defined1)
    # not confirmed yet: the next batch defines again what it uses (decodable on its own)
    b2, defined2 = d.encode(first)
    assert sorted(defined2) == sorted(defined1)
    assert canon(decode_batch_v2(b2).samples) == canon(first)
    d.delivered([7])
    b3, defined3 = d.encode(first + second)
    assert set(defined3).isdisjoint(defined1)  # confirmed ids travel alone
    with pytest.raises(UnknownSeries) if defined1 else _nothing():
        decode_batch_v2(b3)  # the cloud without its dictionary cannot resolve them...
    out = decode_batch_v2(b3, d.resolve)  # ...with it, exactly
    assert canon(out.samples) == canon(first + second)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_dictionary_survives_restart_and_rejects_unknown_epochs(tmp_path: Any) -> None:
    path = tmp_path / "series-dict.db"
    d = SeriesDictionary(path)
    s = [Sample("a", f"m{i}", 1000, i) for i in range(5)]
    _blob, defined = d.encode(s)
    d.sealed(1, defined)
    d.delivered([1])
    later, _ = d.encode(s)
    epoch = d.epoch
    d.close()
    again = SeriesDictionary(path)
    assert again.epoch == epoch  # the same epoch: ids stay valid for stored batches
    assert canon(decode_batch_v2(later, again.resolve).samples) == canon(s)
    assert again.assign(("a", "m3")) == (3, True)  # confirmations are not persisted: re-define
    with pytest.raises(UnknownSeries):
        decode_batch_v2(later, lambda e, ids: {})


def test_constant_steps_cost_two_varints_per_series() -> None:
    """W1-like data: 1000 registers x 4 polls with constant steps -> about a byte a reading."""
    rng = random.Random(1)
    base = [rng.randrange(65536) for _ in range(1000)]
    samples = [
        Sample(f"plc{d}", f"hr{r:03d}", 1_700_000_000_000 + 1000 * k + d * 97,
               (base[100 * d + r] + (r % 7 + 1) * k) % 65536)
        for k in range(4) for d in range(10) for r in range(100)
    ]
    samples.sort(key=lambda s: s.ts_ms)
    d = SeriesDictionary(None)
    _, defined = d.encode(samples)
    d.sealed(1, defined)
    d.delivered([1])
    blob, _ = d.encode(samples)
    v1 = encode_batch(samples)
    assert len(blob) / len(samples) < 1.3
    assert len(blob) < len(v1) / 1.8
    assert canon(decode_batch_v2(blob, d.resolve).samples) == canon(samples)


def test_repacked_batch_splits_back_per_original_seq() -> None:
    parts = [101, 102, 105]
    samples, part_of = [], []
    for p, seq in enumerate(parts):
        for r in range(3):
            for k in range(p + 1):
                samples.append(Sample("plc", f"r{r}", 1000 * seq + k, seq * 10 + k))
                part_of.append(p)
    samples.append(Sample("plc", "late", 999_999, 1.5))
    part_of.append(2)
    blob, _ = encode_batch_v2(samples, parts=parts, part_of=part_of)
    out = decode_batch_v2(blob)
    assert out.parts == parts
    split = out.split_parts()
    assert [seq for seq, _ in split] == parts
    for p, (seq, series) in enumerate(split):
        got = [x for s in series for x in s.samples()]
        want = [s for s, q in zip(samples, part_of, strict=True) if q == p]
        assert canon(got) == canon(want), seq
    with pytest.raises(CodecError, match="telemetry, or"):
        encode_batch_v2(samples, [Alert("r", "plc", 1, True)], parts=parts, part_of=part_of)
    with pytest.raises(CodecError, match="part order"):
        encode_batch_v2(samples[::-1], parts=parts, part_of=part_of[::-1])


def test_version_3_carries_part_digests_and_alert_parts() -> None:
    """Version 3 (re-packed batches): the digest prefix of each original batch rides with its
    part, telemetry or alerts; ordinary batches stay version 2; malformed uses are refused."""
    parts = [7, 8, 12]
    digests = [bytes([p]) * codec_v2.DIGEST_BYTES for p in parts]
    samples = [Sample("plc", "r", 1000 * p + k, p + k) for p in parts for k in range(2)]
    part_of = [i // 2 for i in range(6)]
    blob, _ = encode_batch_v2(samples, parts=parts, part_of=part_of, part_digests=digests)
    assert blob[0] == codec_v2.VERSION_REPACKED
    out = decode_any(blob)
    assert isinstance(out, codec_v2.DecodedV2)
    assert out.parts == parts and out.part_digests == digests
    assert [len(series[0].ts) for _, series in out.split_parts()] == [2, 2, 2]
    assert [out.part_digest(i) for i in range(3)] == digests

    alerts = [Alert("hot", f"plc{i}", 100 + i, i % 2 == 0, message=f"m{i}") for i in range(5)]
    a_of = [0, 0, 1, 2, 2]
    blob, _ = encode_batch_v2(alerts=alerts, parts=parts, part_digests=digests,
                              alert_part_of=a_of)
    out = decode_any(blob)
    assert isinstance(out, codec_v2.DecodedV2)
    assert out.alert_part_counts == [2, 1, 2] and out.part_digests == digests
    assert out.split_alert_parts() == [(7, alerts[:2]), (8, alerts[2:3]), (12, alerts[3:])]
    assert [series for _, series in out.split_parts()] == [[], [], []]

    assert encode_batch_v2(samples)[0][0] == codec_v2.VERSION  # ordinary: still version 2
    with pytest.raises(CodecError, match="one 8-byte prefix per part"):
        encode_batch_v2(samples, parts=parts, part_of=part_of, part_digests=digests[:2])
    with pytest.raises(CodecError, match="one 8-byte prefix per part"):
        encode_batch_v2(samples, parts=parts, part_of=part_of,
                        part_digests=[b"short"] * 3)
    with pytest.raises(CodecError, match="telemetry, or"):  # alert parts need version 3
        encode_batch_v2(alerts=alerts, parts=parts, alert_part_of=a_of)
    with pytest.raises(CodecError, match="no samples"):
        encode_batch_v2(samples, alerts, parts=parts, part_of=part_of, part_digests=digests,
                        alert_part_of=a_of)
    with pytest.raises(CodecError, match="part order"):
        encode_batch_v2(alerts=alerts, parts=parts, part_digests=digests,
                        alert_part_of=a_of[::-1])
    # a version 3 batch without parts, or a v2 body relabelled version 3, is refused
    plain, _ = encode_batch_v2(samples)
    with pytest.raises(CodecError):
        decode_batch_v2(bytes((codec_v2.VERSION_REPACKED,)) + plain[1:])


def test_v1_batches_still_decode() -> None:
    s = [Sample("d", "m", 1, 2.5), Sample("d", "m", 2, None, Quality.COMM_ERROR)]
    assert canon(decode_any(encode_batch(s)).samples) == canon(s)
    with pytest.raises(CodecError, match="version"):
        decode_batch(encode_batch_v2(s)[0])  # an old reader refuses v2 with a clear error


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_bodies_raise_codec_error_only(data: st.DataObject) -> None:
    """Mutated and truncated bodies (inside valid snappy) never raise anything but CodecError,
    and never allocate beyond the limits."""
    samples = data.draw(samples_stepping())
    parts = [5, 9] if data.draw(st.booleans()) else []
    part_of = [i % 2 for i in range(len(samples))] if parts else []
    if parts:
        samples = [s for _, s in sorted(zip(part_of, samples, strict=True),
                                        key=lambda x: x[0])]
        part_of = sorted(part_of)
    digests = [b"\x01" * 8, b"\x02" * 8] if parts and data.draw(st.booleans()) else []
    blob, _ = encode_batch_v2(samples, parts=parts, part_of=part_of, part_digests=digests)
    body = bytearray(snappy.decompress(blob[1:]))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[i:]
        else:
            body[i:i] = data.draw(st.binary(min_size=1, max_size=10))
    hostile = bytes((blob[0],)) + snappy.compress(bytes(body))
    with contextlib.suppress(CodecError):
        decode_batch_v2(hostile, lambda e, ids: {i: ("x", "y") for i in ids})


def test_decode_limits_on_hostile_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    huge = bytearray()
    codec_v2._put_uvarint(huge, 1)  # epoch
    codec_v2._put_uvarint(huge, 0)  # strings
    codec_v2._put_uvarint(huge, 2**40)  # definitions announced
    with pytest.raises(CodecError, match="definition"):
        decode_batch_v2(bytes((2,)) + snappy.compress(bytes(huge)))
    blob, _ = encode_batch_v2([Sample("d", "m", i, i) for i in range(50)])
    monkeypatch.setattr(codec_v2, "MAX_SAMPLES", 40)
    with pytest.raises(CodecError, match="samples"):
        decode_batch_v2(blob)
    with pytest.raises(CodecError, match="not a version 2"):
        decode_batch_v2(b"\x01abc")
    with pytest.raises(CodecError, match="snappy"):
        decode_batch_v2(b"\x02\x05garbage")
