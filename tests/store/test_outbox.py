"""Outbox behaviour: lanes and order, settle outcomes, seq continuity, policies, corruption."""

from __future__ import annotations

import logging
import random
import sqlite3
import zlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from edgegw.model import Lane, Sample
from edgegw.protocol import Sealer, decode_batch, encode_batch, open_sealed
from edgegw.protocol.ack import AckStatus
from edgegw.store import Outbox, OutboxFull

from .conftest import GW, KEY, make_batch

Factory = Callable[..., Outbox]


def add(ob: Outbox, lane: Lane, n: int = 10, ts0: int = 1000, noisy: bool = False) -> int:
    pt, count = make_batch(random.Random(ts0), n, ts0, noisy)
    return ob.append(lane, pt, count=count, first_ts_ms=ts0, last_ts_ms=ts0 + n - 1)


def test_lane_priority_fifo_and_exclude(open_outbox: Factory) -> None:
    ob = open_outbox()
    lanes = [Lane.BULK, Lane.TELEMETRY, Lane.ALERT, Lane.TELEMETRY, Lane.BULK, Lane.ALERT,
             Lane.TELEMETRY]
    seqs = [add(ob, lane, ts0=1000 * i) for i, lane in enumerate(lanes)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    by_lane = {lane: [s for s, x in zip(seqs, lanes, strict=True) if x is lane] for lane in Lane}
    expected = by_lane[Lane.ALERT] + by_lane[Lane.TELEMETRY] + by_lane[Lane.BULK]
    got = ob.next_batches(100)
    assert [b.seq for b in got] == expected
    assert [b.seq for b in ob.next_batches(3)] == expected[:3]
    skip = {expected[0], expected[3]}
    assert [b.seq for b in ob.next_batches(3, skip)] == [s for s in expected if s not in skip][:3]
    for b in got:
        header, pt = open_sealed(KEY, GW, b.envelope, expected_key_id=3)
        assert header.seq == b.seq
        assert len(decode_batch(pt).samples) == b.count == 10
        assert b.last_ts_ms - b.first_ts_ms == 9 and b.attempts == 0


def test_settle_outcomes(open_outbox: Factory) -> None:
    ob = open_outbox()
    a, b, c = (add(ob, Lane.TELEMETRY, ts0=i) for i in range(3))
    ob.settle(a, AckStatus.DELIVERED)
    ob.settle(b, AckStatus.RETRY)
    ob.settle(b, AckStatus.RETRY)
    ob.settle(c, AckStatus.REJECTED)
    ob.settle(a, AckStatus.DELIVERED)  # a late duplicate ack: counted, harmless
    left = ob.next_batches(10)
    # the rejected batch is replaced by a gap record (alert lane) naming it
    gap = left[0]
    assert [(x.seq, x.attempts) for x in left[1:]] == [(b, 2)]
    g = decode_batch(open_sealed(KEY, GW, gap.envelope)[1]).gaps
    assert [(x.seqs, x.reason, x.readings) for x in g] == [((c,), "rejected", 10)]
    st = ob.stats()
    assert (st["delivered"], st["retried"], st["rejected"], st["quarantined"]) == (1, 2, 1, 1)
    assert st["settle_unknown"] == 1 and st["quarantine_rows"] == 1
    assert st["batches"] == {"alert": 1, "telemetry": 1, "bulk": 0}
    with closing(sqlite3.connect(ob.path)) as db:
        assert db.execute("SELECT seq, reason FROM quarantine").fetchall() == [
            (c, "rejected by the cloud")]
    ob.settle_many([(b, AckStatus.DELIVERED), (gap.seq, AckStatus.DELIVERED)])
    assert ob.next_batches(10) == [] and ob.stats()["used_bytes"] > 0  # quarantine still held


def test_seq_continues_across_restart_after_newest_deleted(open_outbox: Factory) -> None:
    ob = open_outbox()
    seqs = [add(ob, Lane.TELEMETRY, ts0=i) for i in range(5)]
    ob.settle_many([(s, AckStatus.DELIVERED) for s in seqs])  # the newest rows are gone too
    ob.close()
    ob2 = open_outbox(first_seq=1)  # first_seq only applies to a brand-new database
    nxt = add(ob2, Lane.ALERT)
    assert nxt == seqs[-1] + 1
    assert ob2.stats()["next_seq"] == nxt + 1


def test_fresh_database_starts_at_the_clock(tmp_path: Path, sealer: Sealer) -> None:
    import time

    before = time.time_ns() // 1000
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20, sealer=sealer) as ob:
        seq = add(ob, Lane.TELEMETRY)
    assert before <= seq <= time.time_ns() // 1000


def test_reject_new_policy(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024, when_full="reject_new")
    n = 0
    with pytest.raises(OutboxFull, match="reject_new"):
        while True:
            add(ob, Lane.TELEMETRY, n=200, ts0=n, noisy=True)
            n += 1
    st = ob.stats()
    assert st["rejected_new"]["telemetry"] == 1
    assert st["batches"]["telemetry"] == n and sum(st["dropped_batches"].values()) == 0
    assert st["used_bytes"] <= 64 * 1024 and st["gaps"] == 0


def test_default_policy_never_evicts_a_higher_priority_lane(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024)
    tele: list[int] = []
    while ob.stats()["used_bytes"] < 50 * 1024:
        tele.append(add(ob, Lane.TELEMETRY, n=200, ts0=len(tele), noisy=True))
    # bulk may evict only bulk: with no bulk stored, a big bulk batch is refused
    with pytest.raises(OutboxFull, match="bulk"):
        add(ob, Lane.BULK, n=3000, noisy=True)
    assert ob.stats()["rejected_new"]["bulk"] == 1
    assert [b.seq for b in ob.next_batches(1000)] == tele
    # an alert may evict telemetry (oldest first); alerts survive telemetry pressure
    alerts = [add(ob, Lane.ALERT, n=200, ts0=10_000 + i, noisy=True) for i in range(8)]
    left = {b.seq for b in ob.next_batches(1000)}
    assert set(alerts) <= left
    dropped = [s for s in tele if s not in left]
    assert dropped and dropped == tele[: len(dropped)]
    assert ob.stats()["dropped_batches"] == {"alert": 0, "telemetry": len(dropped), "bulk": 0}


def test_default_policy_drops_bulk_before_telemetry(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024)
    bulk = [add(ob, Lane.BULK, n=300, ts0=i, noisy=True) for i in range(3)]
    tele: list[int] = []
    while ob.stats()["dropped_batches"]["telemetry"] == 0:
        assert len(tele) < 500
        tele.append(add(ob, Lane.TELEMETRY, n=100, ts0=100 + len(tele), noisy=True))
    st = ob.stats()
    assert st["dropped_batches"]["bulk"] == 3 and st["batches"]["bulk"] == 0
    left = {b.seq for b in ob.next_batches(1000)}
    assert not set(bulk) & left
    # once bulk is gone, telemetry is dropped oldest first
    lost = [s for s in tele if s not in left]
    assert lost == tele[: len(lost)] and st["dropped_batches"]["telemetry"] == len(lost)


def test_drop_oldest_policy_takes_any_lane(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024, when_full="drop_oldest")
    first_alert = add(ob, Lane.ALERT, n=200, noisy=True)
    for i in range(40):
        add(ob, Lane.BULK, n=200, ts0=i, noisy=True)
    assert first_alert not in {b.seq for b in ob.next_batches(1000)}
    assert ob.stats()["dropped_batches"]["alert"] >= 1


def test_oversized_batch_is_refused_with_advice(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024)
    with pytest.raises(OutboxFull, match=r"raise outbox\.max_bytes or lower batch\.max_bytes"):
        add(ob, Lane.BULK, n=8000, noisy=True)
    assert ob.stats()["rejected_new"]["bulk"] == 1


def test_bad_arguments(open_outbox: Factory, tmp_path: Path, sealer: Sealer) -> None:
    with pytest.raises(ValueError, match="when_full"):
        Outbox(tmp_path / "x.db", max_bytes=1 << 20, when_full="drop_newest", sealer=sealer)
    with pytest.raises(ValueError, match="too small"):
        Outbox(tmp_path / "x.db", max_bytes=1000, sealer=sealer)
    ob = open_outbox()
    with pytest.raises(ValueError, match="lane"):
        ob.append(7, b"x", count=1, first_ts_ms=0, last_ts_ms=0)
    with pytest.raises(ValueError):
        ob.settle(1, 9)


def _rewrite(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()


def test_corrupt_rows_are_quarantined_never_returned(
    open_outbox: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    ob = open_outbox()
    s = [add(ob, Lane.TELEMETRY, ts0=i) for i in range(4)]
    env = {b.seq: b.envelope for b in ob.next_batches(10)}
    flipped = bytearray(env[s[1]])
    flipped[40] ^= 0x10
    _rewrite(ob.path, "UPDATE batches SET envelope=? WHERE seq=?", bytes(flipped), s[1])
    # a well-formed envelope of another seq with a matching CRC: caught by the header check
    _rewrite(ob.path, "UPDATE batches SET envelope=?, crc=? WHERE seq=?",
             env[s[0]], zlib.crc32(env[s[0]]), s[2])
    with caplog.at_level(logging.ERROR, logger="edgegw.store"):
        got = [b.seq for b in ob.next_batches(10)]
    assert got == [s[0], s[3]]
    assert "CRC32 mismatch" in caplog.text and f"header names seq {s[0]}" in caplog.text
    st = ob.stats()
    assert (st["corrupt_rows"], st["quarantine_rows"], st["batches"]["telemetry"]) == (2, 2, 2)
    assert [b.seq for b in ob.next_batches(10)] == [s[0], s[3]]
    assert ob.stats()["corrupt_rows"] == 2  # counted once, no loop
    ob.close()
    ob2 = open_outbox()
    assert [b.seq for b in ob2.next_batches(10)] == [s[0], s[3]]
    assert add(ob2, Lane.TELEMETRY) == s[3] + 1


def test_corrupt_file_is_moved_aside_and_a_fresh_one_started(
    open_outbox: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = open_outbox()
    old = [add(ob, Lane.TELEMETRY, ts0=i) for i in range(3)]
    ob.close()
    path = tmp_path / "outbox.db"
    with open(path, "r+b") as f:  # destroy the database header
        f.write(b"this is not a sqlite database...")
    with caplog.at_level(logging.ERROR, logger="edgegw.store"):
        ob2 = open_outbox()
    assert "is corrupt" in caplog.text
    aside = list(tmp_path.glob("outbox.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    st = ob2.stats()
    # nothing salvageable: only the gap record telling the cloud about the hole
    assert st["corrupt_files"] == 1 and st["batches"] == {"alert": 1, "telemetry": 0, "bulk": 0}
    (gap,) = ob2.next_batches(10)
    (g,) = decode_batch(open_sealed(KEY, GW, gap.envelope)[1]).gaps
    assert g.reason == "outbox_corrupt" and g.to_ts_ms >= g.from_ts_ms
    new = add(ob2, Lane.ALERT)
    assert new > max(old)  # the counter continues above anything handed out before
    assert [b.seq for b in ob2.next_batches(10)] == [gap.seq, new]


def test_damaged_page_salvages_intact_rows(open_outbox: Factory, tmp_path: Path) -> None:
    ob = open_outbox()
    seqs = [add(ob, Lane.TELEMETRY, n=50, ts0=i, noisy=True) for i in range(200)]
    ob.close()
    path = tmp_path / "outbox.db"
    page = 4096
    with open(path, "r+b") as f:  # smash a page in the middle of the table's data
        size = f.seek(0, 2)
        f.seek((size // page // 2) * page)
        f.write(b"\xa5" * page)
    ob2 = open_outbox()
    st = ob2.stats()
    assert st["corrupt_files"] == 1
    got = ob2.next_batches(1000)
    gaps = [b for b in got if b.lane is Lane.ALERT]
    got = [b for b in got if b.lane is not Lane.ALERT]
    assert 0 < len(got) < len(seqs) and st["salvaged_rows"] == len(got) and len(gaps) == 1
    (g,) = decode_batch(open_sealed(KEY, GW, gaps[0].envelope)[1]).gaps
    lost = sorted(set(seqs) - {b.seq for b in got})
    # the gap interval covers every lost batch (add(): batch i holds ts i .. i + 49)
    assert g.reason == "outbox_corrupt"
    assert g.from_ts_ms <= min(s - seqs[0] for s in lost)
    for b in got:
        assert b.seq in seqs
        assert open_sealed(KEY, GW, b.envelope)[0].seq == b.seq
    assert add(ob2, Lane.TELEMETRY) > max(seqs)


def test_io_errors_are_not_mistaken_for_corruption(tmp_path: Path, sealer: Sealer) -> None:
    with pytest.raises(sqlite3.OperationalError):
        Outbox(tmp_path / "missing-dir" / "o.db", max_bytes=1 << 20, sealer=sealer)
    assert not list(tmp_path.rglob("*.corrupt-*"))


def test_gap_record_names_evicted_batches(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024)
    seqs = [add(ob, Lane.TELEMETRY, n=200, ts0=1000 * i, noisy=True) for i in range(40)]
    st = ob.stats()
    assert st["gaps"] >= 1
    left = {b.seq: b for b in ob.next_batches(1000)}
    gaps = []
    for b in left.values():
        if b.lane is Lane.ALERT:
            gaps += decode_batch(open_sealed(KEY, GW, b.envelope)[1]).gaps
    named = [s for g in gaps for s in g.seqs]
    dropped = [s for s in seqs if s not in left]
    assert sorted(named) == dropped and len(gaps) == st["gaps"]
    for g in gaps:
        assert g.lane is Lane.TELEMETRY and g.reason == "outbox_full"
        assert g.readings == 200 * len(g.seqs) == 200 * g.batches
        assert g.from_ts_ms == 1000 * (g.seqs[0] - seqs[0])
        assert g.to_ts_ms == 1000 * (g.seqs[-1] - seqs[0]) + 199
    assert st["dropped_readings"]["telemetry"] == 200 * len(dropped)


def test_encode_of_empty_samples_batch_round_trips(open_outbox: Factory) -> None:
    ob = open_outbox()
    seq = ob.append(Lane.TELEMETRY, encode_batch([Sample("d", "m", 1, 1.0)]), count=1,
                    first_ts_ms=1, last_ts_ms=1)
    (b,) = ob.next_batches(1)
    assert b.seq == seq and decode_batch(open_sealed(KEY, GW, b.envelope)[1]).samples


def test_corruption_found_while_open_recovers_without_a_crash(
    open_outbox: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = open_outbox()
    seqs = [add(ob, Lane.TELEMETRY, n=50, ts0=i, noisy=True) for i in range(200)]
    ob.maintain()  # checkpoint: the rows now live in the main database file
    # SQLite would serve these pages from its cache; shrinking the cache (test-only access to
    # the private connection) makes it read the disk, as after memory pressure
    ob._conn.execute("PRAGMA cache_size=1")
    path = tmp_path / "outbox.db"
    with open(path, "r+b") as f:
        size = f.seek(0, 2)
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\xa5" * 4096)
    with caplog.at_level(logging.ERROR, logger="edgegw.store"):
        got = ob.next_batches(1000)
    assert "is corrupt" in caplog.text
    st = ob.stats()
    data = [b for b in got if b.lane is not Lane.ALERT]
    assert st["corrupt_files"] == 1 and 0 < st["salvaged_rows"] == len(data) < len(seqs)
    assert len(got) == len(data) + 1  # + the gap record
    assert all(open_sealed(KEY, GW, b.envelope)[0].seq == b.seq for b in got)
    assert add(ob, Lane.TELEMETRY) == seqs[-1] + 2  # after the gap record; no reuse


def test_quarantine_is_bounded(open_outbox: Factory) -> None:
    ob = open_outbox(max_bytes=64 * 1024)
    seqs = [add(ob, Lane.TELEMETRY, n=300, ts0=i, noisy=True) for i in range(8)]
    for s in seqs:
        ob.settle(s, AckStatus.REJECTED)
    st = ob.stats()
    assert st["rejected"] == st["quarantined"] == 8
    # ~2.5 KB each: only the newest fit in max_bytes / 8 = 8 KiB
    assert 1 <= st["quarantine_rows"] < 8
    with closing(sqlite3.connect(ob.path)) as db:
        kept = [r[0] for r in db.execute("SELECT seq FROM quarantine ORDER BY seq")]
        total = db.execute("SELECT sum(length(envelope)) FROM quarantine").fetchone()[0]
    assert kept == seqs[-len(kept):] and total <= 8 * 1024
    stored = _envelopes(ob.path, "quarantine") + _envelopes(ob.path, "batches")  # + gap records
    assert st["used_bytes"] == sum(ob.row_cost(len(b)) for b in stored)


def _envelopes(path: Path, table: str) -> list[bytes]:
    with closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute(f"SELECT envelope FROM {table}")]
