"""The cloud store's columnar fast path stores exactly what the per-sample path stores.

The ingest hands decoded series (columns) to the store; tests elsewhere and old callers hand it
Samples. Both must give identical rows for every value type: floats, ints beyond SQLite's
64-bit INTEGER, bools, strings, bytes (blobs), None with bad qualities, and mixed series.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.model import Quality, Sample
from edgegw.protocol.codec import decode_batch, encode_batch
from edgegw_cloud.store import BatchRecord, CloudStore

values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.text(max_size=5),
    st.binary(max_size=8),
    st.none(),
)


@st.composite
def batches(draw: st.DrawFn) -> list[Sample]:
    out = []
    for i in range(draw(st.integers(1, 40))):
        v = draw(values)
        q = Quality.COMM_ERROR if v is None else draw(st.sampled_from(list(Quality)))
        dev = draw(st.sampled_from(["d1", "d2"]))
        met = draw(st.sampled_from(["a", "b", "c"]))
        out.append(Sample(dev, met, 1_700_000_000_000 + i, v, q))
    return out


def _rows(store: CloudStore) -> list[tuple[object, ...]]:
    return [
        (r.device, r.metric, r.ts_ms, repr(r.value), r.quality, r.seq)
        for r in store.readings(gateway="gw")
    ]


def test_points_of_any_count_are_all_stored_in_order(tmp_path: Path) -> None:
    """The store inserts points in multi-row INSERTs (128 rows, the rest in power-of-two
    chunks): every count around those edges stores every reading once, as given."""
    store = CloudStore(tmp_path / "store.db")
    try:
        for seq, n in enumerate((1, 2, 3, 127, 128, 129, 255, 256, 257, 1000, 1037), start=1):
            samples = [Sample(f"d{i % 7}", f"m{i}", 1_700_000_000_000 + seq * 10_000 + i,
                              [i, i / 4, f"s{i}", i % 2 == 0, None][i % 5],
                              Quality.COMM_ERROR if i % 5 == 4 else Quality.GOOD)
                       for i in range(n)]
            decoded = decode_batch(encode_batch(samples))
            assert store.commit_many([BatchRecord("gw", seq, 1, 0, series=decoded.series)])
            got = sorted(((r.device, r.metric, r.ts_ms, repr(r.value), r.quality)
                          for r in store.readings(gateway="gw") if r.seq == seq),
                         key=lambda r: r[2])
            assert got == [(s.device, s.metric, s.ts_ms, repr(s.value), int(s.quality))
                           for s in samples]
    finally:
        store.close()


@settings(max_examples=60, deadline=None)
@given(batches())
def test_series_path_equals_sample_path(samples: list[Sample]) -> None:
    decoded = decode_batch(encode_batch(samples))
    with tempfile.TemporaryDirectory() as d:
        fast, slow = CloudStore(Path(d) / "fast.db"), CloudStore(Path(d) / "slow.db")
        try:
            fast.commit_many([BatchRecord("gw", 7, 1, 0, series=decoded.series)])
            slow.commit_many([BatchRecord("gw", 7, 1, 0, samples=decoded.samples)])
            assert _rows(fast) == _rows(slow)
            assert len(_rows(fast)) == len(samples)
        finally:
            fast.close()
            slow.close()
