"""Finding 4 (the data-loss half): dedup poisoned by sequence.

- The cloud's dedup compares a per-batch digest: a DIFFERENT authentic batch under an already
  stored (gateway, seq) is a conflict, recorded and never acked "delivered"; the gateway moves
  its batch to a fresh sequence and it is stored exactly once.
- The outbox's sequence floor is max(persisted, wall clock in us) at every open: losing the WAL
  while stopped never rolls the sequence back into numbers the cloud already holds.

Real peers: Mosquitto with our mTLS config, the real ingest and store, SQLite files on disk.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from uplink.conftest import Cloud, GatewaySide, await_until, cloud, cloud_dir

from edgegw.model import Lane, Sample
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer
from edgegw.store.outbox import Outbox
from edgegw_cloud.store import BatchRecord, CloudStore

__all__ = ["cloud", "cloud_dir"]


async def test_reused_sequence_is_flagged_not_acked_and_resequenced(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = cloud.gateway("gw-conflict", tmp_path / "id")
    gw = GatewaySide(ident, tmp_path / "state", cloud.url, window=4, ack_timeout=0.5,
                     max_attempts=6)
    ingest = cloud.ingest()
    try:
        real = await gw.append(7)
        # The cloud already holds a DIFFERENT authentic batch under that seq (sent earlier with
        # a stolen key, or by this gateway before its sequence rolled back).
        forged = encode_batch([Sample("dev", "forged", 1, 99.0)])
        store_w = CloudStore(cloud.paths.store_db)
        assert store_w.commit_many([BatchRecord(
            ident.gateway_id, real, int(Lane.TELEMETRY), 1,
            samples=[Sample("dev", "forged", 1, 99.0)],
            digest=hashlib.sha256(forged).digest())]) == [True]
        store_w.close()
        with caplog.at_level(logging.WARNING):
            gw.start()
            store = cloud.store()
            try:
                # the gateway keeps producing (later batches acked is what counts attempts)
                for _ in range(200):
                    if gw.outbox.stats()["resequenced"]:
                        break
                    fresh = await gw.append(1)
                    await await_until(lambda f=fresh: f in store.batch_seqs(ident.gateway_id), 20,  # type: ignore[misc]
                                      "a fresh batch at the cloud")
                await gw.drained(30)
                readings = list(store.readings(gateway=ident.gateway_id))
            finally:
                store.close()
        assert ingest.stats()["seq_conflicts"] >= 1
        assert "differs from the batch already stored" in caplog.text
        # the forged batch is untouched; the real one is stored once, under a new seq
        forged_rows = [r for r in readings if r.metric == "forged"]
        assert len(forged_rows) == 1 and forged_rows[0].seq == real
        real_rows = [r for r in readings if r.metric != "forged" and r.ts_ms < 1_700_000_200_000]
        assert len(real_rows) == 7 and {r.seq for r in real_rows} != {real}
        assert gw.uplink.c.given_up == 0
        with closing(sqlite3.connect(cloud.paths.store_db)) as db:
            assert db.execute("SELECT count(*) FROM seq_conflicts WHERE seq = ?",
                              (real,)).fetchone()[0] >= 1
    finally:
        await gw.close()
        ingest.stop()


def test_lost_wal_never_rolls_the_sequence_back(tmp_path: Path) -> None:
    sealer = Sealer(b"\x02" * 32, 1, "gw-wal")
    path = tmp_path / "a" / "outbox.db"
    path.parent.mkdir()
    ob = Outbox(path, max_bytes=1 << 20, sealer=sealer)
    pt = encode_batch([Sample("d", "m", 1, 1.0)])
    first = ob.append(Lane.TELEMETRY, pt, count=1, first_ts_ms=1, last_ts_ms=1)
    ob.maintain()  # checkpoint: the database file knows `first` and next_seq = first + 1
    later = [ob.append(Lane.TELEMETRY, pt, count=1, first_ts_ms=1, last_ts_ms=1)
             for _ in range(5)]  # these live only in the WAL
    # the daemon is stopped hard and the WAL is lost (deleted by hand, a bad restore...)
    copy = tmp_path / "b" / "outbox.db"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    ob.close()
    ob2 = Outbox(copy, max_bytes=1 << 20, sealer=sealer)
    try:
        new = ob2.append(Lane.TELEMETRY, pt, count=1, first_ts_ms=1, last_ts_ms=1)
        assert new > max(later) > first  # never a sequence the cloud may already hold
    finally:
        ob2.close()
