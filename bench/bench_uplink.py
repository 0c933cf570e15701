"""Uplink benchmark: prints one JSON document.

1. drain: a backlog of BATCHES x READINGS readings already sealed in the outbox is drained over
   mTLS MQTT (Mosquitto managed by the cloud stub) into the cloud store by the real ingest;
   readings/s from uplink start until the outbox is empty, beside the raw ceiling of paho QoS1
   publishes of the SAME envelopes (same identity, same window, PUBACK only, no ingest) measured
   in the same run.
2. latency: a producer appends batches at RATE readings/s for SECONDS; per batch, latency =
   the wall clock just AFTER the cloud store's transaction holding it committed (fsync done;
   this bench wraps ``CloudStore.commit_statuses``, the ingest runs in this process) - the time
   the batch was appended to the outbox; p50/p99/max over batches. The reading -> durable cloud
   commit latency through the real daemon (seal trigger included) is bench_workloads.py's.
   The drain (1) ends when the outbox is empty, i.e. after the last ack, which the ingest sends
   only after its durable commit.

Usage: python bench/bench_uplink.py [--batches 1000] [--readings 1000] [--rate 10000]
       [--seconds 10] [--window 32] [--codec v1|v2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from benchlib import free_port, time_commits
from paho.mqtt.enums import CallbackAPIVersion

from edgegw import pki
from edgegw.model import Lane, Sample
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.codec_v2 import encode_batch_v2
from edgegw.protocol.keys import Sealer, derive_data_key
from edgegw.store.outbox import Outbox
from edgegw.uplink.outbox_io import OutboxIO
from edgegw.uplink.session import Uplink
from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.ingest import Ingest, IngestProcesses
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir
from edgegw_cloud.registry import Registry
from edgegw_cloud.store import CloudStore

COMMITTED = time_commits()
V2_EPOCH = 7  # the backlog's dictionary epoch with --codec v2


def _identity(paths: CloudPaths, gw: str, d: Path) -> Sealer:
    key = pki.generate_ec_key()
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    with Registry(paths.registry_db) as reg:
        cert = reg.provision(gw, key.public_key(), issuer)
    d.mkdir(parents=True)
    pki.save_private_key(d / "gateway.key", key)
    pki.write_public(d / "gateway.crt", pki.cert_pem(cert).encode())
    pki.write_public(d / "ca.crt", paths.ca_crt.read_bytes())
    kid = paths.current_key_id
    peer = pki.load_public_key(paths.ingest_ka_pub(kid))
    return Sealer(derive_data_key(key, peer, kid, gw), kid, gw)  # type: ignore[arg-type]


def _samples(k: int, n: int, ts: int) -> list[Sample]:
    # 20 registers per device, slowly drifting values: realistic compression
    return [
        Sample(
            f"dev{(k + i // 20) % 50}",
            f"r{i % 20}",
            ts + (i // 20) * 10,
            round(20.0 + ((k * 7 + i) % 400) * 0.01, 2),
        )
        for i in range(n)
    ]


def encoder(codec: str) -> Callable[[list[Sample]], bytes]:
    """The batch encoder of the backlog: codec v1 (the figures' history), or v2 (the
    daemon's default) as in steady state: one dictionary epoch, each series' id defined in
    the first batch that holds it only (the cloud learns it there; its ack came long ago)."""
    if codec == "v1":
        return encode_batch
    ids: dict[tuple[str, str], int] = {}

    def assign(key: tuple[str, str]) -> tuple[int, bool]:
        i = ids.get(key)
        if i is None:
            i = ids[key] = len(ids)
            return i, True
        return i, False

    return lambda samples: encode_batch_v2(samples, ids=assign, epoch=V2_EPOCH)[0]


async def _poll(pred: Any, step: float) -> None:
    """Poll an async/sync predicate until it is false (the outbox has no event to await)."""
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if not r:
            return
        await asyncio.sleep(step)


def raw_publish_ceiling(port: int, d: Path, gw: str, envelopes: list[bytes], window: int) -> float:
    """Seconds for paho to publish every envelope QoS1 and get every PUBACK (no ingest)."""
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=pki.client_id(gw),
        protocol=mqtt.MQTTv5,
    )
    c.tls_set_context(pki.make_tls_context(d / "ca.crt", d / "gateway.crt", d / "gateway.key"))
    c.max_inflight_messages_set(window)
    done = threading.Event()
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == len(envelopes):
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for env in envelopes:
        c.publish(f"gw/{gw}/up/bench", env, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"raw paho ceiling: {acked[0]} of {len(envelopes)} PUBACKs in 300 s")
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return dt


async def drain(
    paths: CloudPaths, url: str, port: int, root: Path, args: argparse.Namespace, processes: int,
    ingest_url: str, broker_pid: int | None = None,
) -> dict[str, Any]:
    gw = f"bench-drain-{processes}"
    sealer = _identity(paths, gw, root / f"id-{gw}")
    outbox = Outbox(root / f"{gw}-outbox.db", max_bytes=2 * 1024**3, sealer=sealer)
    t0 = time.perf_counter()
    ts = time.time_ns() // 1_000_000
    encode = encoder(args.codec)
    for k in range(args.batches):
        s = _samples(k, args.readings, ts + k * 1000)
        outbox.append(
            Lane.TELEMETRY,
            encode(s),
            count=len(s),
            first_ts_ms=s[0].ts_ms,
            last_ts_ms=s[-1].ts_ms,
        )
    fill_s = time.perf_counter() - t0
    envelopes = [b.envelope for b in outbox.next_batches(args.batches + 1, ())]
    env_bytes = sum(len(e) for e in envelopes)
    raw_s = raw_publish_ceiling(port, root / f"id-{gw}", gw, envelopes, args.window)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    io = OutboxIO(outbox, executor)
    # The cloud ingest runs in processes of its own, as it would on its own machine: in this
    # process it would share one GIL with the gateway's uplink.
    procs = IngestProcesses(paths, ingest_url, processes)
    assert procs.wait_ready(60), "ingest processes did not subscribe"
    uplink = Uplink(gw, root / f"id-{gw}", url, io, window=args.window)
    # who is busy during the drain: CPU seconds of the gateway side (this process: the uplink,
    # its outbox thread, paho), each ingest process and the broker
    who = {"gateway (uplink + outbox)": psutil.Process()} | {
        f"ingest {i}": psutil.Process(pid) for i, pid in enumerate(
            getattr(procs, "pids", None) or [p.pid for p in procs._procs])}  # older trees
    if broker_pid is not None:
        who["broker (mosquitto)"] = psutil.Process(broker_pid)
    cpu0 = {k: p.cpu_times() for k, p in who.items()}
    t0 = time.perf_counter()
    task = asyncio.ensure_future(uplink.run())
    await _poll(lambda: io.next_batches(1, ()), 0.02)
    drain_s = time.perf_counter() - t0
    cpu_pct = {k: round(100 * (sum(p.cpu_times()[:2]) - sum(cpu0[k][:2])) / drain_s, 1)
               for k, p in who.items()}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    procs.stop()
    executor.shutdown()
    store = CloudStore(paths.store_db, readonly=True)
    stored = store.count_readings(gw)
    store.close()
    outbox.close()
    total = args.batches * args.readings
    return {
        "batches": args.batches,
        "readings": total,
        "readings_stored": stored,
        "envelope_bytes_avg": round(env_bytes / max(len(envelopes), 1)),
        "outbox_fill_s": round(fill_s, 3),
        "drain_s": round(drain_s, 3),
        "drain_readings_per_s": round(total / drain_s),
        "raw_paho_qos1_s": round(raw_s, 3),
        "raw_paho_qos1_readings_per_s": round(total / raw_s),
        "raw_paho_qos1_msgs_per_s": round(len(envelopes) / raw_s),
        "drain_vs_raw_ratio": round(raw_s / drain_s, 3),
        "goal_readings_per_s": 200_000,
        "cpu_percent_of_one_core_during_drain": cpu_pct,
        "uplink": {k: v for k, v in uplink.stats().items() if isinstance(v, int)},
        "ingest_processes": processes,
        "codec": args.codec,
    }


async def latency(
    paths: CloudPaths, url: str, root: Path, args: argparse.Namespace, per_batch: int,
    ingest_url: str,
) -> dict[str, Any]:
    gw = f"bench-lat-{per_batch}"
    sealer = _identity(paths, gw, root / f"id-{gw}")
    outbox = Outbox(root / f"{gw}.db", max_bytes=1024**3, sealer=sealer)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    io = OutboxIO(outbox, executor)
    ingest = Ingest(paths, ingest_url).start()
    uplink = Uplink(gw, root / f"id-{gw}", url, io, window=args.window)
    task = asyncio.ensure_future(uplink.run())
    await _poll(lambda: not uplink.connected, 0.01)
    loop = asyncio.get_running_loop()
    interval = per_batch / args.rate
    appended: dict[int, int] = {}
    start = loop.time()
    k = 0
    while loop.time() - start < args.seconds:
        deadline = start + k * interval  # absolute schedule: no drift
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        now = time.time_ns() // 1_000_000
        s = _samples(k, per_batch, now)
        pt = encode_batch(s)

        def append(s: list[Sample] = s, pt: bytes = pt) -> int:
            return outbox.append(
                Lane.TELEMETRY, pt, count=len(s), first_ts_ms=s[0].ts_ms, last_ts_ms=s[-1].ts_ms
            )

        seq = await loop.run_in_executor(executor, append)
        appended[seq] = now
        uplink.notify()
        k += 1
    await _poll(lambda: io.next_batches(1, ()), 0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ingest.stop()
    executor.shutdown()
    outbox.close()
    lat = sorted(COMMITTED[(gw, seq)] - t for seq, t in appended.items()
                 if (gw, seq) in COMMITTED)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
    return {
        "rate_readings_per_s": args.rate,
        "readings_per_batch": per_batch,
        "batches": len(lat),
        "p50_ms": q[49],
        "p99_ms": q[98],
        "max_ms": lat[-1],
        "goal_p99_ms": 500,
        "batches_appended": len(appended),
        "note": "outbox append -> after the cloud's durable commit (fsync done); reading -> "
                "durable commit through the daemon: bench_workloads.py",
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--readings", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--codec", choices=("v1", "v2"), default="v1",
                    help="the drain backlog's codec (v2: steady state, see encoder())")
    ap.add_argument(
        "--ingest-processes", default="1,2", help="comma-separated process counts to drain with"
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgegw-bench-uplink-"))
    os.chmod(root, 0o711)  # mosquitto (dropped to its own user) must reach its files
    try:
        paths = init_data_dir(root / "cloud")
        broker = ManagedBroker(paths, free_port()).start()
        try:
            result = {
                "bench": "uplink",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "drain": [
                    await drain(paths, broker.url, broker.port, root, args, int(n),
                                      broker.service_url, broker.pid)
                    for n in args.ingest_processes.split(",")
                ],
                "latency": [await latency(paths, broker.url, root, args, n, broker.service_url)
                            for n in (100, 1000)],
            }
        finally:
            broker.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
