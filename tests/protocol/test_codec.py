"""Batch codec: exact round trips (property-based) and fuzzing (only CodecError may escape)."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.model import Alert, Lane, Quality, Sample, Severity
from edgegw.protocol import codec
from edgegw.protocol.codec import CodecError, Gap, decode_batch, encode_batch

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
VALUE_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
NAMES = st.sampled_from(["plc-1", "plc-2", "sensor/\u03b1", ""])
METRICS = st.sampled_from(["temp", "hr_40001", "coil_3", "✓"])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [-0.0, 0.0, math.nan, -math.nan, struct.unpack(">d", b"\x7f\xf0\x00\x00\x00\x00\x00\x01")[0]]
)
VALUES = st.one_of(
    st.none(), FLOATS, VALUE_INT, st.booleans(), st.text(max_size=20), st.binary(max_size=20)
)
QUALITIES = st.sampled_from(list(Quality))


def key(v: Any) -> tuple[str, Any]:
    """Exact identity of a value: type plus bits for floats (NaN payloads, -0.0)."""
    if isinstance(v, float):
        return ("float", struct.pack(">d", v))
    return (type(v).__name__, v)


def canon(samples: list[Sample]) -> list[tuple[Any, ...]]:
    """Samples grouped per series in order of first appearance (the codec's documented order)."""
    series: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for s in samples:
        series.setdefault((s.device, s.metric), []).append(
            (s.device, s.metric, s.ts_ms, key(s.value), int(s.quality))
        )
    return [x for lst in series.values() for x in lst]


@st.composite
def samples_mixed(draw: st.DrawFn) -> list[Sample]:
    """Arbitrary sample lists: any value type anywhere, interleaved series."""
    return draw(
        st.lists(st.builds(Sample, NAMES, METRICS, I64, VALUES, QUALITIES), max_size=60)
    )


@st.composite
def samples_typed(draw: st.DrawFn) -> list[Sample]:
    """Homogeneous series (the columnar fast paths), with shared timestamps and gaps."""
    out: list[Sample] = []
    ts0 = draw(st.integers(min_value=0, max_value=2**42))
    n = draw(st.integers(min_value=1, max_value=40))
    times = [ts0 + 1000 * i + draw(st.integers(0, 3)) for i in range(n)]
    for dev in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["dec", "scaled", "f32", "f64", "int", "bool", "str", "bytes"]))
        base = draw(st.floats(-1e6, 1e6, allow_nan=False))
        vals: list[Any] = []
        for i in range(n):
            if kind == "dec":
                vals.append(round(base + i * 0.37, draw(st.integers(0, 4))))
            elif kind == "scaled":
                vals.append(draw(st.integers(-40000, 40000)) * draw(st.sampled_from([0.1, 0.01])))
            elif kind == "f32":
                vals.append(struct.unpack("f", struct.pack("f", base + i / 7))[0])
            elif kind == "f64":
                vals.append(draw(FLOATS))
            elif kind == "int":
                vals.append(draw(VALUE_INT) if i % 5 == 0 else i * 3 - 50)
            elif kind == "bool":
                vals.append(draw(st.booleans()))
            elif kind == "str":
                vals.append(draw(st.sampled_from(["RUN", "STOP", "ééé", ""])))
            else:
                vals.append(draw(st.binary(max_size=8)))
        nones = draw(st.sets(st.integers(0, n - 1), max_size=n // 3))
        for i in range(n):
            bad = i in nones
            out.append(
                Sample(
                    f"dev{dev}",
                    kind,
                    times[i],
                    None if bad else vals[i],
                    Quality.COMM_ERROR if bad else Quality.GOOD,
                )
            )
    return out


ALERTS = st.lists(
    st.builds(
        Alert,
        rule=st.text(max_size=8),
        device=NAMES,
        ts_ms=I64,
        active=st.booleans(),
        severity=st.sampled_from(list(Severity)),
        message=st.text(max_size=30),
        metric=METRICS,
        value=st.none() | FLOATS,
        labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    ),
    max_size=5,
)
GAPS = st.lists(
    st.builds(
        Gap,
        lane=st.sampled_from(list(Lane)),
        seqs=st.lists(st.integers(0, 2**63 - 1), max_size=10).map(tuple),
        from_ts_ms=I64,
        to_ts_ms=I64,
        batches=st.integers(0, 2**63 - 1),
        readings=st.integers(0, 2**63 - 1),
        reason=st.text(max_size=12),
    ),
    max_size=3,
)


def alert_key(a: Alert) -> tuple[Any, ...]:
    return (a.rule, a.device, a.ts_ms, a.active, a.severity, a.message, a.metric,
            None if a.value is None else key(a.value), a.labels)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=samples_mixed() | samples_typed(), alerts=ALERTS, gaps=GAPS)
def test_round_trip_is_exact(samples: list[Sample], alerts: list[Alert], gaps: list[Gap]) -> None:
    blob = encode_batch(samples, alerts, gaps)
    assert blob[0] == codec.VERSION
    out = decode_batch(blob)
    assert canon(out.samples) == canon(samples)
    assert [alert_key(a) for a in out.alerts] == [alert_key(a) for a in alerts]
    assert out.gaps == gaps
    for s in out.samples:
        assert isinstance(s.quality, Quality)


def test_float_modes_are_used_and_exact() -> None:
    """Each float column mode is taken for the data it is meant for, and is bit-exact."""
    cases = {
        codec.F_DECIMAL: [round(20 + i * 0.013, 3) for i in range(50)],
        codec.F_SCALED: [(2140 + i * 7) * 0.1 for i in range(50)],
        codec.F_XOR32: [struct.unpack("f", struct.pack("f", 20 + i / 3))[0] for i in range(50)],
        codec.F_XOR64: [20 + i / 3 for i in range(50)],
        codec.F_PLAIN: [random.Random(i).uniform(-1e300, 1e300) * (-1) ** i for i in range(50)],
    }
    for mode, vals in cases.items():
        out = bytearray()
        codec._write_floats(out, vals)
        assert out[0] == mode
        samples = [Sample("d", "m", i, v) for i, v in enumerate(vals)]
        back = decode_batch(encode_batch(samples)).samples
        assert [key(s.value) for s in back] == [key(v) for v in vals]


def test_shared_timestamps_are_stored_once() -> None:
    """Registers read in one request share timestamps: later series reference them."""
    ts = [1_700_000_000_000 + 1000 * i for i in range(100)]
    one = encode_batch(Sample("d", "a", t, i) for i, t in enumerate(ts))
    many = encode_batch(Sample("d", m, t, i) for m in "abcdefghij" for i, t in enumerate(ts))
    body_one = len(snappy.decompress(one[1:]))
    body_many = len(snappy.decompress(many[1:]))
    # 9 extra series cost their values (~1 byte each) plus a few header bytes, not timestamps
    assert body_many - body_one < 9 * (100 + 10)


@pytest.mark.parametrize(
    ("sample", "needle"),
    [
        (Sample("d", "m", 1, [1, 2]), "unsupported value type list"),  # type: ignore[arg-type]
        (Sample("d", "m", 1, 2**64), "64-bit range"),
        (Sample("d", "m", 1, -(2**63) - 1), "64-bit range"),
        (Sample("d", "m", 2**63, 1.0), "ts_ms"),
        (Sample("d", "m", 1.5, 1.0), "ts_ms must be int"),  # type: ignore[arg-type]
        (Sample(5, "m", 1, 1.0), "expected a string"),  # type: ignore[arg-type]
        (Sample("d", "m", 1, "\ud800"), "unicode"),
    ],
)
def test_bad_input_to_encode_is_a_codec_error(sample: Sample, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        encode_batch([Sample("d", "m", 0, 1.0), sample])


def test_sample_limit_enforced_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = encode_batch(Sample("d", "m", i, None, Quality.COMM_ERROR) for i in range(50))
    monkeypatch.setattr(codec, "MAX_SAMPLES", 40)
    with pytest.raises(CodecError, match="samples"):
        decode_batch(blob)
    with pytest.raises(CodecError, match="samples"):
        encode_batch(Sample("d", "m", i, 1) for i in range(50))


def test_version_and_size_guards() -> None:
    blob = encode_batch([Sample("d", "m", 1, 1.0)])
    with pytest.raises(CodecError, match="version 2"):
        decode_batch(b"\x02" + blob[1:])
    with pytest.raises(CodecError, match="empty"):
        decode_batch(b"")
    # a snappy preamble announcing 2 GiB is refused before decompressing anything
    with pytest.raises(CodecError, match="exceeds"):
        decode_batch(b"\x01\x80\x80\x80\x80\x08" + b"\x00" * 10)


def _expect_codec_error_only(data: bytes) -> None:
    """Decoding garbage raises CodecError; anything it does accept is a re-encodable batch."""
    try:
        out = decode_batch(data)
    except CodecError:
        return
    again = decode_batch(encode_batch(out.samples, out.alerts, out.gaps))
    assert canon(again.samples) == canon(out.samples)
    assert again.gaps == out.gaps


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _expect_codec_error_only(data)
    _expect_codec_error_only(b"\x01" + data)


@settings(max_examples=600, deadline=None)
@given(body=st.binary(max_size=120))
def test_fuzz_random_bodies(body: bytes) -> None:
    """Valid snappy around a random body: the columnar parser itself must hold."""
    _expect_codec_error_only(b"\x01" + snappy.compress(body))


_VALID_BODIES = [
    snappy.decompress(
        encode_batch(
            [Sample("d", "a", 10 * i, i * 0.5) for i in range(6)]
            + [Sample("d", "b", 10 * i, i * 0.5) for i in range(6)]
            + [Sample("e", "c", i, v, q) for i, (v, q) in enumerate(
                [(None, Quality.COMM_ERROR), (True, Quality.GOOD), ("x", Quality.STALE),
                 (b"\x00", Quality.BAD_DATA), (2**64 - 1, Quality.GOOD), (math.nan, Quality.GOOD)])]
            + [Sample("e", "f", i, 1 / (i + 3)) for i in range(5)]
            + [Sample("e", "g", i, struct.unpack("f", struct.pack("f", i / 3))[0])
               for i in range(5)]
            + [Sample("e", "h", i, bool(i % 2)) for i in range(9)],
            [Alert("r", "d", 5, True, Severity.CRITICAL, "m", "a", 1.0, {"k": "v"})],
            [Gap(Lane.BULK, (1, 5, 3), 1, 9, 3, 40)],
        )[1:]
    )
]


@settings(max_examples=1500, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4),
    cut=st.integers(0, 10_000),
    mode=st.sampled_from(["flip", "cut", "both"]),
)
def test_fuzz_mutated_valid_batches(flips: list[tuple[int, int]], cut: int, mode: str) -> None:
    body = bytearray(_VALID_BODIES[0])
    if mode in ("flip", "both"):
        for pos, bit in flips:
            body[pos % len(body)] ^= 1 << bit
    if mode in ("cut", "both"):
        body = body[: cut % len(body)]
    _expect_codec_error_only(b"\x01" + snappy.compress(bytes(body)))
    # the same mutation applied to the compressed form exercises the snappy error paths
    blob = bytearray(b"\x01" + snappy.compress(_VALID_BODIES[0]))
    for pos, bit in flips:
        blob[1 + pos % (len(blob) - 1)] ^= 1 << bit
    _expect_codec_error_only(bytes(blob))


def test_truncation_at_every_byte_is_a_codec_error() -> None:
    body = _VALID_BODIES[0]
    assert decode_batch(b"\x01" + snappy.compress(body)).samples  # the intact body is valid
    for n in range(len(body)):
        with pytest.raises(CodecError):
            decode_batch(b"\x01" + snappy.compress(body[:n]))
    with pytest.raises(CodecError, match="trailing"):
        decode_batch(b"\x01" + snappy.compress(body + b"\x00"))


def test_gap_counters_at_or_beyond_2_63_are_refused_at_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9 #4: gap seqs and counters are stored as signed 64-bit INTEGERs by the cloud."""
    ok = Gap(Lane.TELEMETRY, (2**63 - 1,), 0, 1, 2**63 - 1, 2**63 - 1, "dropped")
    assert decode_batch(encode_batch(gaps=[ok])).gaps == [ok]
    with pytest.raises(CodecError, match="2\\*\\*63"):
        encode_batch(gaps=[Gap(Lane.TELEMETRY, (), 0, 1, 2**63, 0, "x")])
    monkeypatch.setattr(codec, "COUNTER_MAX", 2**64 - 1)  # an encoder that lets them through
    for gap in (Gap(Lane.TELEMETRY, (2**63,), 0, 1, 1, 1, "x"),
                Gap(Lane.TELEMETRY, (), 0, 1, 2**63, 1, "x"),
                Gap(Lane.TELEMETRY, (), 0, 1, 1, 2**64 - 1, "x")):
        data = encode_batch(gaps=[gap])
        monkeypatch.setattr(codec, "COUNTER_MAX", 2**63 - 1)
        with pytest.raises(CodecError, match="2\\*\\*63"):
            decode_batch(data)
        monkeypatch.setattr(codec, "COUNTER_MAX", 2**64 - 1)
