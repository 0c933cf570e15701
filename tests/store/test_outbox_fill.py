"""Small-bound fill/drain cycles: exact drop accounting, exact gap records, bounded file size."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing

import pytest

from edgegw.model import Lane
from edgegw.protocol import Gap, decode_batch, open_sealed
from edgegw.protocol.ack import AckStatus
from edgegw.protocol.envelope import FLAG_GAP
from edgegw.store import Outbox, OutboxFull

from .conftest import GW, KEY, make_batch

MAX_BYTES = 256 * 1024
APPENDS = 3000


@pytest.mark.parametrize("policy", ["drop_oldest_telemetry", "drop_oldest"])
def test_fill_drain_cycle(open_outbox: Callable[..., Outbox], policy: str) -> None:
    rng = random.Random(policy)
    ob = open_outbox(max_bytes=MAX_BYTES, when_full=policy)
    bound = MAX_BYTES + ob.slack_bytes
    data: dict[int, tuple[Lane, int, int, int, int]] = {}  # seq -> lane, count, first, last, size
    delivered: set[int] = set()
    gaps: dict[int, list[Gap]] = {}  # delivered gap record seq -> its gap entries
    worst_file = 0
    refused = 0

    def recount() -> int:
        """The accounted bytes computed from scratch from the database (no drift allowed)."""
        with closing(sqlite3.connect(ob.path)) as db:
            sizes = db.execute("SELECT length(envelope) FROM batches").fetchall()
        return sum(ob.row_cost(n) for (n,) in sizes)

    def drain(limit: int, fraction: float) -> None:
        for b in ob.next_batches(limit):
            r = rng.random()
            if r < fraction:
                ob.settle(b.seq, AckStatus.DELIVERED)
                delivered.add(b.seq)
                header, pt = open_sealed(KEY, GW, b.envelope)
                if header.flags & FLAG_GAP:  # what the cloud learns: delivered gap records
                    assert b.lane is Lane.ALERT and b.seq not in data
                    gaps[b.seq] = decode_batch(pt).gaps
            elif r < fraction + 0.05:
                ob.settle(b.seq, AckStatus.RETRY)

    for i in range(APPENDS):
        lane = rng.choices([Lane.TELEMETRY, Lane.BULK, Lane.ALERT], [85, 12, 3])[0]
        n = rng.randint(5, 40) if lane is not Lane.BULK else rng.randint(200, 900)
        ts0 = 1_700_000_000_000 + 10 * i
        pt, count = make_batch(rng, n, ts0, noisy=lane is Lane.BULK or rng.random() < 0.5)
        try:
            seq = ob.append(lane, pt, count=count, first_ts_ms=ts0, last_ts_ms=ts0 + n - 1)
        except OutboxFull:
            # by policy a bulk batch may not push out telemetry or alerts: it is refused
            assert lane is Lane.BULK and policy == "drop_oldest_telemetry"
            refused += 1
            continue
        data[seq] = (lane, count, ts0, ts0 + n - 1, len(pt) + 44)
        if i % 50 == 49:
            st = ob.stats()
            assert st["used_bytes"] <= MAX_BYTES
            worst_file = max(worst_file, ob.file_bytes())
            assert ob.file_bytes() <= bound, (ob.file_bytes(), bound)
        if i % 400 == 399:
            drain(rng.randint(5, 60), 0.7)
            assert ob.stats()["used_bytes"] == recount()
    ob.maintain()
    while batches := ob.next_batches(200):
        drain(200, 1.0)
        assert len(batches) <= 200
    st = ob.stats()
    assert sum(st["batches"].values()) == 0 and st["used_bytes"] == 0

    # every batch that vanished without being delivered is named by exactly one gap record
    named = [s for gl in gaps.values() for g in gl for s in g.seqs]
    assert len(named) == len(set(named))
    vanished_data = set(data) - delivered
    vanished_gaps = {s for s in named if s not in data}
    assert set(named) == vanished_data | vanished_gaps
    assert vanished_data, "the bound was never reached: the test does not test eviction"
    for s in vanished_gaps:  # a dropped gap record: seq right after the append that made it
        assert s - 1 in data
    # each gap entry states exactly its lane, batches, readings and interval
    refused_named = 0
    for gl in gaps.values():
        for g in gl:
            if not g.seqs:  # refused batches never got a seq: named by count and interval
                assert g.lane is Lane.BULK and g.batches >= 1 and g.readings > 0
                refused_named += g.batches
                continue
            mine = [data[s] for s in g.seqs if s in data]
            assert all(x[0] is g.lane for x in mine)
            assert g.batches == len(g.seqs)
            assert g.readings == sum(x[1] for x in mine)
            if len(mine) == len(g.seqs):
                assert g.from_ts_ms == min(x[2] for x in mine)
                assert g.to_ts_ms == max(x[3] for x in mine)
    # every refused batch is named by a later gap record (the last ones, if no append followed,
    # are still pending in the outbox's memory)
    assert refused_named + (1 if ob.stats()["refused_pending"] else 0) >= refused - 1
    assert refused_named <= refused
    # the counters agree exactly with what the gap records name
    per_lane = Counter(data[s][0].name.lower() for s in vanished_data)
    per_lane["alert"] += len(vanished_gaps)
    assert st["dropped_batches"] == {lane.name.lower(): per_lane[lane.name.lower()]
                                     for lane in Lane}
    readings: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    for s in vanished_data:
        readings[data[s][0].name.lower()] += data[s][1]
        nbytes[data[s][0].name.lower()] += data[s][4]
    assert st["dropped_readings"] == {lane.name.lower(): readings[lane.name.lower()]
                                      for lane in Lane}
    for name in ("telemetry", "bulk"):
        assert st["dropped_bytes"][name] == nbytes[name]
    assert st["gaps"] == len(gaps) + len(vanished_gaps)
    assert st["rejected_new"] == {"alert": 0, "telemetry": 0, "bulk": refused}
    assert st["appended"] == APPENDS - refused and st["delivered"] == len(delivered)
    if policy == "drop_oldest_telemetry":
        assert st["dropped_batches"]["alert"] == 0  # alerts only as a last resort
    assert st["vacuums"] > 0
    peak = ob.file_bytes()
    ob.maintain()
    # everything delivered: free pages go back to the file system and the WAL is truncated
    assert ob.file_bytes() <= 64 * 1024 < peak
    print(f"\n{policy}: worst file {worst_file} B = max_bytes + {worst_file - MAX_BYTES} "
          f"(slack {ob.slack_bytes}); dropped {st['dropped_batches']}")
