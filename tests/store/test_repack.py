"""Re-packing the backlog: one transaction, fewer bytes, exactly once at the cloud.

Real Outbox (SQLite on disk), real series dictionary, real cloud store; the cloud side is
driven through the ingest's own record builder (no broker needed for this property)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgegw.model import Lane, Sample
from edgegw.protocol.codec_v2 import DecodedV2, decode_any
from edgegw.protocol.keys import Sealer
from edgegw.store import Outbox
from edgegw.store.repack import Repacker
from edgegw.store.series_dict import SeriesDictionary
from edgegw_cloud.ingest import _Opened, _records
from edgegw_cloud.store import CloudStore

from .conftest import GW


def w1(k: int) -> list[Sample]:
    """One poll of 2 devices x 20 registers stepping by a constant, at 1 s."""
    return [Sample(f"plc{d}", f"hr{r}", 1_700_000_000_000 + 1000 * k + 7 * d,
                   1000 + 37 * r + d + (r % 5 + 1) * k) for d in range(2) for r in range(20)]


def test_repack_replaces_in_one_transaction_and_dedups_per_original_seq(
        open_outbox: Callable[..., Outbox], sealer: Sealer, tmp_path: Path) -> None:
    outbox = open_outbox()
    d = SeriesDictionary(tmp_path / "series-dict.db")
    seqs = []
    for k in range(12):
        plaintext, defined = d.encode(w1(k))
        seq = outbox.append(Lane.TELEMETRY, plaintext, count=40, first_ts_ms=k, last_ts_ms=k)
        d.sealed(seq, defined)
        seqs.append(seq)
    d.delivered(seqs[:1])  # the cloud confirmed the first batch's definitions
    before = {b.seq: len(b.envelope) for b in outbox.next_batches(100)}
    held = {seqs[0]}  # in flight: never re-packed

    new = Repacker(outbox, d).repack(held, target_bytes=64 * 1024)

    assert new is not None and new > max(seqs)
    left = {b.seq: b for b in outbox.next_batches(100)}
    assert set(left) == {seqs[0], new}  # the originals are gone, in the same transaction
    env = left[new].envelope
    assert left[new].count == 11 * 40
    assert len(env) < sum(before[s] for s in seqs[1:]) / 3
    decoded = decode_any(sealer.open(env)[1], d.resolve)
    assert isinstance(decoded, DecodedV2)
    assert decoded.parts == seqs[1:]

    # the cloud: seqs[3] had reached it before (ack lost); the re-packed batch must not store
    # those readings twice, and must store all the others under their original seqs
    store = CloudStore(tmp_path / "cloud.db")
    try:
        early = _records(_Opened(None, GW, seqs[3], 0,  # type: ignore[arg-type]
                                 decode_any(sealer.open(_reseal(sealer, seqs[3], w1(3), d))[1],
                                            d.resolve)))
        assert store.commit_many(early) == [True]
        records = _records(_Opened(None, GW, new, 0, decoded))  # type: ignore[arg-type]
        fresh = store.commit_many(records)
        assert [r.seq for r in records] == seqs[1:]
        assert fresh == [s != seqs[3] for s in seqs[1:]]
        assert store.count_readings(GW) == 11 * 40
        assert sorted(store.batch_seqs(GW)) == seqs[1:]
        assert store.commit_many(records) == [False] * 11  # a re-sent re-pack: all duplicates
        assert store.count_readings(GW) == 11 * 40
    finally:
        store.close()


def _reseal(sealer: Sealer, seq: int, samples: list[Sample], d: SeriesDictionary) -> bytes:
    plaintext, _ = d.encode(samples)
    return sealer.seal(seq, plaintext)


def test_repack_leaves_small_backlogs_and_held_batches_alone(
        open_outbox: Callable[..., Outbox], tmp_path: Path) -> None:
    outbox = open_outbox()
    d = SeriesDictionary(None)
    seqs = []
    for k in range(5):
        plaintext, _ = d.encode(w1(k))
        seqs.append(outbox.append(Lane.TELEMETRY, plaintext, count=40, first_ts_ms=k,
                                  last_ts_ms=k))
    r = Repacker(outbox, d)
    assert r.repack(set(seqs[:2]), 64 * 1024) is None  # 3 waiting: fewer than MIN_BATCHES
    assert {b.seq for b in outbox.next_batches(100)} == set(seqs)
