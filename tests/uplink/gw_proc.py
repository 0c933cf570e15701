"""A gateway process for the SIGKILL test: the real Outbox + OutboxIO + Uplink + a producer.

Usage: python -m tests.uplink.gw_proc STATE_DIR IDENTITY_DIR BROKER_URL GATEWAY_ID
       --batches N --readings R [--drain]

The producer appends N batches of R readings, printing
``appended <seq>`` (flushed) after each durable append. Readings are globally unique
(device = a random run nonce + batch number) so the cloud can detect any duplicate. With
``--drain`` it exits 0 once everything produced has been acked by the cloud, printing
``drained <last seq>``. Otherwise it runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgegw import pki
from edgegw.model import Lane, Sample
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer, derive_data_key
from edgegw.store.outbox import Outbox
from edgegw.uplink.outbox_io import OutboxIO
from edgegw.uplink.session import Uplink


def _sealer(identity: Path, gw: str, key_id: int) -> Sealer:
    own = pki.load_private_key(identity / "gateway.key")
    peer = pki.load_public_key(identity / "ingest-ka.pub")
    return Sealer(derive_data_key(own, peer, key_id, gw), key_id, gw)  # type: ignore[arg-type]


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("state", type=Path)
    ap.add_argument("identity", type=Path)
    ap.add_argument("broker")
    ap.add_argument("gateway")
    ap.add_argument("--key-id", type=int, default=1)
    ap.add_argument("--batches", type=int, required=True)
    ap.add_argument("--readings", type=int, default=100)
    ap.add_argument("--drain", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    args.state.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(args.state / "outbox.db", max_bytes=512 * 1024 * 1024,
                    sealer=_sealer(args.identity, args.gateway, args.key_id))
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    io = OutboxIO(outbox, executor)
    uplink = Uplink(args.gateway, args.identity, args.broker, io, window=8, ack_timeout=3.0,
                    backoff_min=0.05, backoff_max=0.5, stable_after=1.0, keepalive=5)
    up = asyncio.create_task(uplink.run())
    loop = asyncio.get_running_loop()
    nonce = os.urandom(4).hex()
    last = 0
    for k in range(1, args.batches + 1):
        dev = f"run{nonce}-{k}"
        samples = [Sample(dev, "m", 1_700_000_000_000 + i, float(i)) for i in range(args.readings)]
        plaintext = encode_batch(samples)
        last = await loop.run_in_executor(
            executor, lambda p=plaintext, s=samples: outbox.append(
                Lane.TELEMETRY, p, count=len(s), first_ts_ms=s[0].ts_ms, last_ts_ms=s[-1].ts_ms
            ),
        )
        print(f"appended {last}", flush=True)
        uplink.notify()
        await asyncio.sleep(0.002)  # pacing of the producer (a data rate), not synchronisation
    if not args.drain:
        await up  # until killed
        return 1
    while await io.next_batches(1, ()):  # noqa: ASYNC110 (polls the outbox, no event exists)
        await asyncio.sleep(0.05)
    print(f"drained {last}", flush=True)
    up.cancel()
    await asyncio.gather(up, return_exceptions=True)
    await loop.run_in_executor(executor, outbox.close)
    executor.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
