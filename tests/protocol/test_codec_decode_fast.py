"""The decoders' single-reading fast paths (issue 13, goal 6) return exactly what the general
path returns, and fail exactly as it fails.

A round seal (and the drain of its backlog) makes batches of hundreds of series holding ONE
reading each; the cloud ingest's CPU went to decoding them series by series. Codec v1's and
v2's decoders now read such a series (one GOOD int, exact-decimal or scaled-register value)
inline (``codec._FAST_DECODE``, ``codec_v2._FAST_DECODE``) and leave everything else, and
anything malformed, to the general path from the series' first byte. So every case here is
decoded with the fast paths on and off and the results compared exactly (value types, float
bits, qualities, shared timestamps), including damaged bodies: the same ``CodecError`` message
or the same result.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.model import Quality, Sample
from edgegw.protocol import codec, codec_v2
from edgegw.protocol.codec import CodecError, DecodedBatch, decode_batch, encode_batch
from edgegw.protocol.codec_v2 import decode_batch_v2, encode_batch_v2
from protocol.test_codec import canon, key, samples_mixed, samples_typed
from protocol.test_codec_v2_fast import poll_rounds


@st.composite
def drain_rounds(draw: st.DrawFn) -> list[Sample]:
    """The shapes the fast path is for: devices x registers, one reading each, the value an
    int, a short decimal or a scaled register (``raw * 0.1``), timestamps shared or not."""
    out: list[Sample] = []
    t = draw(st.integers(-(2**62), 2**62))
    kind = draw(st.sampled_from(["int", "dec", "scaled", "mix"]))
    for d in range(draw(st.integers(1, 4))):
        t += draw(st.sampled_from([0, 0, 10, -3, 2**40]))
        for r in range(draw(st.integers(1, 40))):
            k = kind if kind != "mix" else draw(st.sampled_from(["int", "dec", "scaled"]))
            v: Any
            if k == "int":
                v = draw(st.one_of(st.integers(0, 65535), st.integers(-(2**63), 2**64 - 1)))
            elif k == "dec":
                v = round(draw(st.floats(-1e6, 1e6)), draw(st.integers(0, 4)))
            else:
                v = draw(st.integers(-40000, 40000)) * draw(st.sampled_from([0.1, 0.01, 0.001]))
            out.append(Sample(f"plc{d}", f"hr{r}", t, v, Quality.GOOD))
    return out


def _canon_decoded(d: DecodedBatch) -> tuple[Any, ...]:
    """Everything a decoded batch holds, exactly (value types and float bits included), and
    which series share their timestamp list with the previous one (FLAG_TS_SAME)."""
    series = []
    prev: list[int] | None = None
    for s in d.series:
        series.append((s.device, s.metric, list(s.ts), [key(v) for v in s.values],
                       [(type(q).__name__, int(q)) for q in s.qualities], s.ts is prev))
        prev = s.ts
    extra: tuple[Any, ...] = ()
    if isinstance(d, codec_v2.DecodedV2):
        extra = (d.epoch, d.definitions, d.parts, d.part_counts, d.part_digests)
    return (series, d.alerts, d.gaps, extra)


def _decode_both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """(fast, general) results of ``decode_any``: a canonical decode or the error message."""
    out = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            m.setattr(codec, "_FAST_DECODE", fast)
            m.setattr(codec_v2, "_FAST_DECODE", fast)
            try:
                out.append(_canon_decoded(codec_v2.decode_any(data)))
            except CodecError as exc:
                out.append(("error", type(exc).__name__, str(exc)))
    return out[0], out[1]


def _encodings(samples: list[Sample]) -> list[bytes]:
    return [encode_batch(samples), encode_batch_v2(samples)[0]]


SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(samples=st.one_of(drain_rounds(), poll_rounds(), samples_mixed(), samples_typed()))
def test_fast_decode_returns_what_the_general_path_returns(
        samples: list[Sample], monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        encoded = _encodings(samples)
    except CodecError:
        return  # not encodable (the encoder's own tests cover that)
    for data in encoded:
        fast, general = _decode_both(data, monkeypatch)
        assert fast == general
        assert fast[0] != "error"
        assert canon(codec_v2.decode_any(data).samples) == canon(samples)


def _damaged(data: bytes, rnd: random.Random) -> bytes:
    """The batch with its (uncompressed) body damaged: bytes changed, cut or inserted."""
    body = bytearray(snappy.decompress(data[1:]))
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(3)
        i = rnd.randrange(len(body) + 1)
        if op == 0 and body:
            body[min(i, len(body) - 1)] = rnd.choice([0, 1, 2, 3, 0x7F, 0x80, 0xFF,
                                                      rnd.randrange(256)])
        elif op == 1:
            del body[i:i + rnd.randint(1, 4)]
        else:
            body[i:i] = bytes([rnd.choice([0x80, 0xFF, 1, 2])]) * rnd.randint(1, 3)
    return data[:1] + snappy.compress(bytes(body))


@SETTINGS
@given(samples=st.one_of(drain_rounds(), poll_rounds()), seed=st.integers(0, 2**32))
def test_fast_decode_fails_like_the_general_path(
        samples: list[Sample], seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    try:
        encoded = _encodings(samples)
    except CodecError:
        return
    for data in encoded:
        for _ in range(5):
            fast, general = _decode_both(_damaged(data, rnd), monkeypatch)
            assert fast == general


def test_fast_decode_is_taken_for_a_drain_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case it exists for (the drain bench's backlog: one reading per series, short
    decimals in v1; a round seal's ints in v2) never reaches the general value readers."""
    calls = {"v1": 0, "v2": 0}
    v1_general, v2_general = codec._read_values, codec_v2._read_values

    def v1_counting(*a: Any) -> Any:
        calls["v1"] += 1
        return v1_general(*a)

    def v2_counting(*a: Any) -> Any:
        calls["v2"] += 1
        return v2_general(*a)

    monkeypatch.setattr(codec, "_read_values", v1_counting)
    monkeypatch.setattr(codec_v2, "_read_values", v2_counting)
    ts = 1_790_000_000_000
    floats = [Sample(f"dev{i // 20}", f"r{i % 20}", ts + (i // 20) * 10,
                     round(20.0 + (i % 400) * 0.01, 2)) for i in range(1000)]
    ints = [Sample(f"u{i // 100}", f"r{i % 100}", ts + (i // 100), i * 7) for i in range(500)]
    scaled = [Sample("u9", f"s{i}", ts, (i - 200) * 0.1) for i in range(300)]
    assert canon(decode_batch(encode_batch(floats)).samples) == canon(floats)
    assert canon(decode_batch_v2(encode_batch_v2(ints + scaled)[0]).samples) == canon(
        ints + scaled)
    assert calls == {"v1": 0, "v2": 0}
    odd = [*ints, Sample("u9", "f32", ts, 1.2345678901234567)]  # xor-coded float: general
    assert canon(decode_batch_v2(encode_batch_v2(odd)[0]).samples) == canon(odd)
    assert calls["v2"] == 1
