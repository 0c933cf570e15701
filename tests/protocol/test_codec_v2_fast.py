"""Codec v2's encoder fast paths (issue 13, goal 1) write exactly the bytes of the general path.

A round seal makes batches of one poll round: hundreds of series with ONE reading each. The
encoder writes such int series inline (``codec_v2._FAST_SINGLE``) and assigns a batch's ids in
one call (``SeriesDictionary.assign_many``). Neither may change a byte on the wire: the cloud
and the outbox's stored batches depend on the format, and a re-sent batch must stay identical.
So every case is encoded with the fast path on and off (and with per-key ``assign`` against
``assign_many``) and the bytes compared, then decoded back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.model import Quality, Sample
from edgegw.protocol import codec_v2
from edgegw.protocol.codec import CodecError
from edgegw.protocol.codec_v2 import decode_batch_v2, encode_batch_v2
from edgegw.protocol.model import SampleBlock
from edgegw.store.series_dict import SeriesDictionary
from protocol.test_codec import canon, samples_mixed, samples_typed

VALUE = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-300, 70000),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.sampled_from([0.1 * 3, 21.4, -0.0, 1e300]),
)


@st.composite
def poll_rounds(draw: st.DrawFn) -> list[Sample]:
    """Poll rounds as a round seal sees them: devices answering at one instant each, mostly
    one reading per series, some series polled twice, odd values and qualities mixed in."""
    out: list[Sample] = []
    t = draw(st.integers(-(2**62), 2**62))
    for d in range(draw(st.integers(1, 5))):
        t += draw(st.sampled_from([0, 0, 1, 7, -5, 100]))
        for r in range(draw(st.integers(1, 30))):
            for k in range(draw(st.sampled_from([1, 1, 1, 2]))):
                v: Any = draw(st.integers(0, 65535)) if draw(st.booleans()) else draw(VALUE)
                q = draw(st.sampled_from([Quality.GOOD] * 6 + [Quality.STALE, 0]))
                out.append(Sample(f"u{d}", f"r{r}", t + 100 * k, v, q))
    return out


def _both(samples: list[Sample], monkeypatch: pytest.MonkeyPatch, **kw: Any
          ) -> tuple[bytes, bytes]:
    fast = encode_batch_v2(samples, **kw)[0]
    with monkeypatch.context() as m:
        m.setattr(codec_v2, "_FAST_SINGLE", False)
        slow = encode_batch_v2(samples, **kw)[0]
    return fast, slow


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=st.one_of(poll_rounds(), samples_mixed(), samples_typed()))
def test_fast_path_writes_the_same_bytes(samples: list[Sample],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        fast, slow = _both(samples, monkeypatch)
    except CodecError:
        with monkeypatch.context() as m, pytest.raises(CodecError):
            m.setattr(codec_v2, "_FAST_SINGLE", False)
            encode_batch_v2(samples)
        return
    assert fast == slow
    assert canon(decode_batch_v2(fast).samples) == canon(samples)


def test_fast_path_is_taken_for_single_int_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case it exists for (one poll round of uint16 registers) really takes it."""
    calls = {"n": 0}
    general = codec_v2._write_series

    def counting(*a: Any) -> Any:
        calls["n"] += 1
        return general(*a)

    monkeypatch.setattr(codec_v2, "_write_series", counting)
    rnd = [Sample("u1", f"r{i}", 1_790_000_000_000, i * 7) for i in range(100)]
    rnd += [Sample("u2", "temp", 1_790_000_000_003, 21.5)]  # a float: the general path
    data, _ = encode_batch_v2(rnd)
    assert calls["n"] == 1
    assert canon(decode_batch_v2(data).samples) == canon(rnd)


def test_out_of_range_int_still_refused() -> None:
    with pytest.raises(CodecError, match="64-bit"):
        encode_batch_v2([Sample("u", "r", 1, 2**64)])
    with pytest.raises(CodecError, match="signed 64-bit"):
        encode_batch_v2([Sample("u", "r", 2**63, 1)])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(poll_rounds(), min_size=1, max_size=4))
def test_assign_many_matches_assign(tmp_path_factory: pytest.TempPathFactory,
                                    rounds: list[list[Sample]]) -> None:
    """Per-key ``assign`` and one ``assign_many`` per batch give the same ids, definitions
    and bytes, batch after batch, with confirmations in between."""
    tmp: Path = tmp_path_factory.mktemp("sd")
    one, many = SeriesDictionary(tmp / "a.db"), SeriesDictionary(tmp / "b.db")
    many.epoch = one.epoch
    try:
        for seq, samples in enumerate(rounds):
            a = encode_batch_v2(samples, ids=one.assign, epoch=one.epoch)
            b = encode_batch_v2(samples, ids_many=many.assign_many, epoch=many.epoch)
            assert a == b
            for d in (one, many):
                d.sealed(seq, a[1])
                if seq % 2 == 0:
                    d.delivered([seq])
        assert one._ids == many._ids and one._new == many._new
    finally:
        one.close()
        many.close()


def test_assign_many_gives_a_repeated_key_one_id(tmp_path: Path) -> None:
    sd = SeriesDictionary(tmp_path / "sd.db")
    ids, define = sd.assign_many([("d", "a"), ("d", "b"), ("d", "a")])
    assert ids == [0, 1, 0] and define == [True, True, True]
    sd.close()


def _blocks(samples: list[Sample]) -> list[SampleBlock]:
    """Runs of GOOD samples of one device and one instant as SampleBlocks (what a poll of
    plain values emits), everything else as it is: the same readings in the same order."""
    out: list[Any] = []
    for s in samples:
        last = out[-1] if out else None
        if (isinstance(last, list) and last[0].device == s.device and last[0].ts_ms == s.ts_ms
                and s.quality == Quality.GOOD and s.metric not in {x.metric for x in last}):
            last.append(s)
        elif s.quality == Quality.GOOD:
            out.append([s])
        else:
            out.append(s)
    return [SampleBlock(x[0].device, tuple(y.metric for y in x), x[0].ts_ms,
                        [y.value for y in x]) for x in out if isinstance(x, list)]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=poll_rounds())
def test_blocks_write_the_bytes_of_the_same_samples(samples: list[Sample],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll's SampleBlock (columns) encodes to exactly the bytes of its Samples: column-wise
    when every block is another device's, made into samples otherwise (fast path on and off)."""
    blocks = _blocks([s for s in samples if s.quality == Quality.GOOD])
    readings = [s for b in blocks for s in b]
    try:
        want, slow = _both(readings, monkeypatch)
    except CodecError:
        with pytest.raises(CodecError):
            encode_batch_v2((), blocks=blocks)
        return
    assert encode_batch_v2((), blocks=blocks)[0] == want == slow
    with monkeypatch.context() as m:
        m.setattr(codec_v2, "_FAST_SINGLE", False)
        assert encode_batch_v2((), blocks=blocks)[0] == want
    # samples first, then blocks: the order the batcher never mixes, still the same readings
    if len(blocks) > 1:
        assert encode_batch_v2(list(blocks[0]), blocks=blocks[1:])[0] == want
    assert canon(decode_batch_v2(want).samples) == canon(readings)


def test_block_path_is_taken_for_a_poll_round(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """W2's batch (several devices' polls of uint16 registers, as blocks) is written column-wise
    (no Sample is made, no general series path), through the series dictionary too."""
    monkeypatch.setattr(codec_v2, "_write_series", None)  # any use of it fails
    names = tuple(f"r{i}" for i in range(100))
    blocks = [SampleBlock(f"u{d}", names, 1_790_000_000_000 + d, [(d * 997 + i * 31) % 65536
                                                                  for i in range(100)])
              for d in range(5)]
    monkeypatch.setattr(SampleBlock, "__iter__", None)  # materialising would fail too
    d = SeriesDictionary(tmp_path / "sd.db")
    data, defined = d.encode(blocks=blocks)
    assert len(defined) == 500
    monkeypatch.undo()
    want = [s for b in blocks for s in b]
    assert canon(decode_batch_v2(data, d.resolve).samples) == canon(want)
    # the same readings as Samples, same dictionary state (ids assigned, none confirmed yet)
    assert d.encode(want)[0] == data
