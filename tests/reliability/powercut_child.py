"""Child process of the power-cut harness: writes through the real Outbox or the real
CloudStore on the LazyFS mount and prints what each API reported durable, line by line:

- ``outbox DIR``: ``durable SEQ`` after each ``Outbox.append`` returned, ``delivered SEQ`` after
  each ``settle(DELIVERED)`` returned (the oldest batches, as acks would), ``maintain`` runs;
- ``store DIR``: ``acked SEQ`` after each ``CloudStore.commit_many`` returned (the ingest acks
  exactly then).
Killed by SIGKILL at a random moment; the harness then cuts the power.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from edgegw.model import Lane, Sample
from edgegw.protocol.ack import AckStatus
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer
from edgegw.store.outbox import Outbox
from edgegw_cloud.store import BatchRecord, CloudStore

GW = "gw-power"


def outbox(d: Path, seed: int) -> None:
    rng = random.Random(seed)
    ob = Outbox(d / "outbox.db", max_bytes=8 * 1024 * 1024, sealer=Sealer(b"\x05" * 32, 1, GW),
                report_unclean_stop=True)
    pending: list[int] = [b.seq for b in ob.next_batches(10_000)]
    k = 0
    while True:
        k += 1
        n = rng.randint(1, 60)
        samples = [Sample("dev", "m", 1_700_000_000_000 + k * 1000 + i, rng.random())
                   for i in range(n)]
        seq = ob.append(Lane.TELEMETRY, encode_batch(samples), count=n,
                        first_ts_ms=samples[0].ts_ms, last_ts_ms=samples[-1].ts_ms)
        print(f"durable {seq}", flush=True)
        pending.append(seq)
        if len(pending) > 20 and rng.random() < 0.5:
            done = pending[:rng.randint(1, 10)]
            del pending[:len(done)]
            # said BEFORE the settle: a kill right after its commit must not make the harness
            # count these as lost
            for s in done:
                print(f"delivered {s}", flush=True)
            ob.settle_many([(s, AckStatus.DELIVERED) for s in done])
        if k % 25 == 0:
            ob.maintain()


def store(d: Path, seed: int) -> None:
    rng = random.Random(seed)
    st = CloudStore(d / "store.db")
    base = rng.randrange(1 << 40)
    k = 0
    while True:
        group = []
        for _ in range(rng.randint(1, 8)):
            k += 1
            group.append(BatchRecord(GW, base + k, int(Lane.TELEMETRY), 0, samples=[
                Sample("dev", "m", base + k, float(k))]))
        st.commit_many(group)
        for r in group:
            print(f"acked {r.seq}", flush=True)


if __name__ == "__main__":
    {"outbox": outbox, "store": store}[sys.argv[1]](Path(sys.argv[2]), int(sys.argv[3]))
