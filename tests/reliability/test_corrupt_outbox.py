"""Finding 7: a corrupt outbox is salvaged row by row, and the cloud hears of the hole.

35 batches (about 3 KB each) are stored, the gateway is stopped, and the file is damaged: (a)
truncated to 60% of its size, (b) 8 KiB of random bytes written in its middle. The next start
salvages every row still readable and intact, and a gap record (reason ``outbox_corrupt``)
whose interval covers every batch that was lost reaches the cloud store, with the salvaged
batches, through the real uplink, Mosquitto (mTLS) and ingest.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from uplink.conftest import Cloud, GatewaySide, cloud, cloud_dir

from edgegw.model import Lane, Sample
from edgegw.protocol.codec import encode_batch

__all__ = ["cloud", "cloud_dir"]

N = 35


def _fill(gw: GatewaySide) -> dict[int, tuple[int, int]]:
    """35 batches of noisy readings (about 3 KB sealed each); seq -> (first ts, last ts)."""
    rng = random.Random(5)
    out = {}
    for k in range(N):
        t0 = 1_700_000_000_000 + k * 10_000
        samples = [Sample("dev", "m", t0 + i, rng.random()) for i in range(300)]
        seq = gw.outbox.append(Lane.TELEMETRY, encode_batch(samples), count=300,
                               first_ts_ms=t0, last_ts_ms=t0 + 299)
        out[seq] = (t0, t0 + 299)
    return out


@pytest.mark.parametrize("damage", ["truncate", "random-8k"])
async def test_corrupt_outbox_salvaged_and_the_cloud_told(
    cloud: Cloud, tmp_path: Path, damage: str
) -> None:
    ident = cloud.gateway(f"gw-corrupt-{damage}", tmp_path / "id")
    state = tmp_path / "state"
    gw = GatewaySide(ident, state, cloud.url)
    made = _fill(gw)
    await gw.close()
    db = state / "outbox.db"
    size = db.stat().st_size
    assert not (state / "outbox.db-wal").exists() or (state / "outbox.db-wal").stat().st_size == 0
    if damage == "truncate":
        os.truncate(db, int(size * 0.6) // 4096 * 4096)
    else:
        fd = os.open(db, os.O_RDWR)
        try:
            os.pwrite(fd, random.Random(9).randbytes(8192), size // 2)
        finally:
            os.close(fd)

    ingest = cloud.ingest()
    gw2 = GatewaySide(ident, state, cloud.url)
    try:
        st = gw2.outbox.stats()
        assert st["corrupt_files"] == 1
        salvaged = st["salvaged_rows"]
        # row by row: only the rows on damaged pages are lost (one SELECT would stop early)
        assert salvaged >= (N * 0.5 if damage == "truncate" else N - 8), salvaged
        gw2.start()
        await gw2.drained(60)
        store = cloud.store()
        try:
            seqs = set(store.batch_seqs(ident.gateway_id))
            gaps = [g for g in store.gaps(ident.gateway_id) if g["reason"] == "outbox_corrupt"]
        finally:
            store.close()
        delivered = seqs & set(made)
        assert len(delivered) == salvaged
        lost = set(made) - delivered
        assert len(gaps) == 1
        g = gaps[0]
        for s in lost:  # the gap interval covers every lost batch
            assert g["from_ts_ms"] <= made[s][0] and made[s][1] <= g["to_ts_ms"]
        named = set(json.loads(g["seqs"]))
        assert named <= lost  # rows read back damaged are named; the others are in the interval
    finally:
        await gw2.close()
        ingest.stop()
