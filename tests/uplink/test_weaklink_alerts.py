"""Alerts first on a saturated weak link (issue 15, goal 2, CI-sized).

Real peers: Mosquitto (mTLS + ACL), the cloud ingest and store, the real Outbox + Uplink, and
between the gateway and the broker the link emulator (tests/linkemu.py: 64 kbit/s each way,
150 ms one way, a 64 KB modem buffer). A telemetry backlog of incompressible batches fills the
link; alerts sealed while it drains must overtake it. Asserted as an ORDER (no timing
assertion): each alert is stored at the cloud before most of the telemetry that was already
waiting when it was raised - with a fixed window of 32 batches the whole backlog (80 KB, ten
seconds of link) would sit in the TLS stream ahead of it. Everything is delivered exactly once.
The bench (bench/bench_weaklink.py) measures the latency itself.
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from linkemu import LinkEmulator  # tests/ is on sys.path (rootdir)

from edgegw.model import Alert, Lane, Sample, Severity
from edgegw.protocol.codec import encode_batch
from edgegw.store.outbox import Outbox
from edgegw.uplink.outbox_io import OutboxIO
from edgegw.uplink.session import Uplink

from .conftest import Cloud, await_until

GW = "gw-weak-alerts"
BACKLOG = 20  # batches of ~4 KB of noise: 80 KB, 10 s at 64 kbit/s
ALERTS = 4


def noisy_batch(rng: random.Random, k: int) -> bytes:
    return encode_batch(Sample("meter", f"m{i % 50}", 1_700_000_000_000 + 1000 * k + i,
                               rng.random()) for i in range(420))


@pytest.mark.slow
def test_alert_overtakes_a_saturating_backlog(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway(GW, tmp_path / "identity")
    ingest = cloud.ingest()
    rng = random.Random(15)
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=16 << 20, sealer=ident.sealer())
    pool = ThreadPoolExecutor(max_workers=1)
    tele = [outbox.append(Lane.TELEMETRY, noisy_batch(rng, k), count=420, first_ts_ms=k,
                          last_ts_ms=k) for k in range(BACKLOG)]
    sizes = [len(b.envelope) for b in outbox.next_batches(100)]
    assert sum(sizes) > 70_000  # the backlog really is ~10 s of this link
    emu = LinkEmulator(cloud.broker.port, rate=8000, delay=0.15, buffer=64 * 1024).start()
    alert_seqs: list[int] = []
    stats: dict[str, object] = {}
    waiting_at_alert: list[set[int]] = []

    async def run() -> None:
        up = Uplink(GW, ident.dir, f"mqtts://127.0.0.1:{emu.port}", OutboxIO(outbox, pool),
                    window=32, ack_timeout=60)
        task = asyncio.create_task(up.run())
        try:
            store = cloud.store()
            try:
                # the backlog is flowing once the first telemetry batch is stored
                await await_until(lambda: bool(store.batch_seqs(GW)), 60, "first delivery")
                loop = asyncio.get_running_loop()
                for a in range(ALERTS):
                    stored = set(store.batch_seqs(GW))
                    waiting_at_alert.append(set(tele) - stored)
                    alert = Alert(f"rule{a}", "meter", 1_700_000_000_000 + a, True,
                                  Severity.CRITICAL, "level high")
                    seq = await loop.run_in_executor(pool, lambda al=alert: outbox.append(
                        Lane.ALERT, encode_batch(alerts=[al]), count=1, first_ts_ms=1,
                        last_ts_ms=1))
                    alert_seqs.append(seq)
                    up.notify()
                    await await_until(lambda s=seq: store.has_batch(GW, s), 60, f"alert {a}")
                await await_until(lambda: len(store.batch_seqs(GW)) == BACKLOG + ALERTS, 120,
                                  "the whole backlog")
                stats.update(up.stats())
            finally:
                store.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(run())
        store = cloud.store()
        try:
            order = {b["seq"]: i for i, b in enumerate(
                sorted(store.batches(GW), key=lambda b: (b["stored_ms"], b["seq"])))}
            assert sorted(store.batch_seqs(GW)) == sorted(tele + alert_seqs)  # exactly once
            assert store.count_readings(GW) == BACKLOG * 420
        finally:
            store.close()
    finally:
        emu.stop()
        ingest.stop()
        outbox.close()
        pool.shutdown()
    assert waiting_at_alert[0], "the backlog drained before the first alert: proves nothing"
    assert stats["topic_alias"] == 1  # Mosquitto 2.0 granted a topic alias and it was used
    assert 0 < int(stats["link_rate_bps"]) < 200_000  # type: ignore[call-overload]
    overtaken = []
    for seq, waiting in zip(alert_seqs, waiting_at_alert, strict=True):
        if waiting:  # telemetry that was waiting when the alert was raised but stored after it
            overtaken.append(sum(order[t] > order[seq] for t in waiting) / len(waiting))
    # flow control keeps ~2 round trips (<= a batch or two) ahead of an alert: it overtakes
    # most of what was waiting; a FIFO window would give 0 for every alert
    assert min(overtaken) >= 0.5, overtaken
