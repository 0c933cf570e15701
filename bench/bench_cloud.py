"""Cloud benchmark: prints one JSON document.

1. ingest: a backlog of BATCHES x READINGS readings, sealed by a real gateway outbox, drained
   over mTLS MQTT by the real uplink into the cloud store by N ingest processes (the MQTT v5
   shared subscription), for each store (SQLite, PostgreSQL) and N in --ingest-processes; the
   SAME backlog and broker for every variant, so the figures are like for like. readings/s from
   uplink start until the outbox is empty, and every reading counted at the store.
2. fleet: GATEWAYS simulated gateways, each its OWN identity (certificate issued by the CA and
   registered, its own data key by ECDH), each holding a real mTLS MQTT v5 connection to one
   managed broker, each sending one sealed batch of --fleet-readings readings every
   --fleet-period seconds for --fleet-seconds, and checking the cloud's end-to-end acks. One
   ingest process stores them. Reported: connections held (connected at the end, disconnects
   seen), readings/s stored, broker and ingest CPU (% of one core, over the sending phase) and
   RSS, and the count check: batches sent == acked == stored, readings sent == stored.
   The simulated gateways run in --fleet-procs processes (paho threads; each client is what
   the gateway's uplink is on the wire: the protocol, not the whole runtime).

Usage: python bench/bench_cloud.py [--batches 300] [--readings 1000] [--ingest-processes 1,2]
       [--gateways 500] [--fleet-seconds 60] [--skip-ingest] [--skip-fleet]
PostgreSQL: --pg-admin URL (default postgresql://postgres@127.0.0.1:5432/postgres); a database
is created for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from edgegw import pki
from edgegw.model import Lane, Sample
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer, derive_data_key
from edgegw.store.outbox import Outbox
from edgegw.uplink.outbox_io import OutboxIO
from edgegw.uplink.session import Uplink
from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.ingest import IngestProcesses
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir
from edgegw_cloud.registry import Registry
from edgegw_cloud.stores import open_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _identity(paths: CloudPaths, reg: Registry, issuer: pki.Issuer, gw: str, d: Path) -> None:
    key = pki.generate_ec_key()
    cert = reg.provision(gw, key.public_key(), issuer)
    d.mkdir(parents=True)
    pki.save_private_key(d / "gateway.key", key)
    pki.write_public(d / "gateway.crt", pki.cert_pem(cert).encode())
    pki.write_public(d / "ca.crt", paths.ca_crt.read_bytes())


def _sealer(paths: CloudPaths, gw: str, d: Path) -> Sealer:
    kid = paths.current_key_id
    peer = pki.load_public_key(paths.ingest_ka_pub(kid))
    own = pki.load_private_key(d / "gateway.key")
    return Sealer(derive_data_key(own, peer, kid, gw), kid, gw)  # type: ignore[arg-type]


def _samples(k: int, n: int, ts: int) -> list[Sample]:
    return [
        Sample(f"dev{(k + i // 20) % 50}", f"r{i % 20}", ts + (i // 20) * 10,
               round(20.0 + ((k * 7 + i) % 400) * 0.01, 2))
        for i in range(n)
    ]


class _Cpu:
    """CPU seconds and peak RSS of some processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.rss_peak = 0

    def _cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
                self.rss_peak = max(self.rss_peak, p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        return total

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self._cpu()

    def sample(self) -> None:
        self._cpu()

    def stop(self) -> dict[str, float]:
        dt, dc = time.perf_counter() - self.t0, self._cpu() - self.c0
        return {"cpu_pct_of_one_core": round(100 * dc / dt, 1),
                "rss_peak_mb": round(self.rss_peak / 2**20, 1)}


# --------------------------------------------------------------------------- 1. ingest
async def ingest_drain(paths: CloudPaths, url: str, service_url: str, root: Path, backlog: Path,
                       gw: str, store: str | Path, processes: int, window: int
                       ) -> dict[str, Any]:
    work = root / f"outbox-{secrets.token_hex(3)}.db"
    shutil.copy(backlog, work)  # the same sealed backlog for every variant
    outbox = Outbox(work, max_bytes=2 * 1024**3, sealer=_sealer(paths, gw, root / f"id-{gw}"))
    total = sum(b.count for b in outbox.next_batches(10**6, ()))
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    io = OutboxIO(outbox, executor)
    procs = IngestProcesses(paths, service_url, processes, store=store)
    assert procs.wait_ready(60), "ingest processes did not subscribe"
    cpu = _Cpu([p.pid for p in procs._procs if p.pid is not None])
    uplink = Uplink(gw, root / f"id-{gw}", url, io, window=window)
    cpu.start()
    t0 = time.perf_counter()
    task = asyncio.ensure_future(uplink.run())
    while await io.next_batches(1, ()):
        cpu.sample()
        await asyncio.sleep(0.02)
    drain_s = time.perf_counter() - t0
    usage = cpu.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    procs.stop()
    executor.shutdown()
    outbox.close()
    s = open_store(store, readonly=True)
    try:
        stored = s.count_readings(gw)
        distinct = s.distinct_readings(gw)
    finally:
        s.close()
    return {"store": "postgresql" if str(store).startswith("postgresql") else "sqlite",
            "ingest_processes": processes, "readings": total, "readings_stored": stored,
            "duplicates": stored - distinct, "drain_s": round(drain_s, 3),
            "readings_per_s": round(total / drain_s), "ingest": usage}


def _clear(store: str | Path, gw: str) -> None:
    """Forget the gateway's batches so the next variant stores the backlog again."""
    s = open_store(store)
    try:
        q = ["DELETE FROM points WHERE series IN (SELECT id FROM series WHERE gateway = ?)",
             "DELETE FROM batches WHERE gateway = ?"]
        for sql in q:
            if hasattr(s, "url"):
                s._db.execute(sql.replace("?", "%s"), (gw,))
            else:
                s._db.execute(sql, (gw,))
    finally:
        s.close()


# --------------------------------------------------------------------------- 2. fleet
def _fleet_worker(data_dir: str, ids: list[str], port: int, readings: int, period: float,
                  seconds: float, go: Any, out: Any) -> None:
    """Runs in its own process: one paho client per gateway id, mTLS, its own identity."""
    import random

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgegw.protocol import topics
    from edgegw.protocol.ack import AckStatus, decode_acks

    paths = CloudPaths.for_dir(data_dir)
    root = Path(data_dir).parent
    lock = threading.Lock()
    state = {g: {"connected": False, "connects": 0, "disconnects": 0, "acked": set(),
                 "sent": 0, "readings": 0} for g in ids}
    clients = {}
    sealers = {}
    for g in ids:
        d = root / f"id-{g}"
        sealers[g] = _sealer(paths, g, d)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=pki.client_id(g),
                        protocol=mqtt.MQTTv5)
        c.tls_set_context(pki.make_tls_context(d / "ca.crt", d / "gateway.crt",
                                               d / "gateway.key"))

        def on_connect(cl: Any, u: Any, f: Any, rc: Any, p: Any, g: str = g) -> None:
            if not rc.is_failure:
                cl.subscribe(topics.down_ack(g), qos=1)
                with lock:
                    state[g]["connected"] = True
                    state[g]["connects"] += 1

        def on_disconnect(cl: Any, u: Any, f: Any, rc: Any, p: Any, g: str = g) -> None:
            with lock:
                state[g]["connected"] = False
                state[g]["disconnects"] += 1

        def on_message(cl: Any, u: Any, msg: Any, g: str = g) -> None:
            acks = decode_acks(msg.payload)
            with lock:
                state[g]["acked"].update(s for s, st in acks if st == AckStatus.DELIVERED)

        c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
        c.connect_async("127.0.0.1", port, keepalive=60)
        c.loop_start()
        clients[g] = c
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(s["connected"] for s in state.values()):
        time.sleep(0.1)
    out.put(("connected", sum(s["connected"] for s in state.values())))
    go.wait()
    rng = random.Random(7)
    next_at = {g: time.monotonic() + rng.uniform(0, period) for g in ids}  # staggered
    seq = dict.fromkeys(ids, 0)
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        g = min(next_at, key=next_at.__getitem__)
        if next_at[g] > now:
            time.sleep(min(next_at[g] - now, end - now))
            continue
        next_at[g] += period
        seq[g] += 1
        ts = time.time_ns() // 1_000_000
        samples = [Sample("meter", f"m{i}", ts, float(i)) for i in range(readings)]
        env = sealers[g].seal(seq[g], encode_batch(samples))
        clients[g].publish(topics.up_batch(g), env, qos=1)
        with lock:
            state[g]["sent"] += 1
            state[g]["readings"] += readings
    # wait for the acks of everything sent
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            if all(len(s["acked"]) >= s["sent"] for s in state.values()):
                break
        time.sleep(0.2)
    with lock:
        summary = {
            "connected_at_end": sum(s["connected"] for s in state.values()),
            "disconnects": sum(s["disconnects"] for s in state.values()),
            "batches_sent": sum(s["sent"] for s in state.values()),
            "batches_acked": sum(len(s["acked"]) for s in state.values()),
            "readings_sent": sum(s["readings"] for s in state.values()),
        }
    for c in clients.values():
        c.disconnect()
        c.loop_stop()
    out.put(("done", summary))


def fleet(paths: CloudPaths, broker: ManagedBroker, root: Path, args: argparse.Namespace,
          store: str | Path) -> dict[str, Any]:
    ids = [f"fleet-{i:04d}" for i in range(args.gateways)]
    t0 = time.perf_counter()
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    with Registry(paths.registry_db) as reg:
        for g in ids:
            _identity(paths, reg, issuer, g, root / f"id-{g}")
    provision_s = time.perf_counter() - t0
    procs = IngestProcesses(paths, broker.service_url, 1, store=store)
    assert procs.wait_ready(60)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    n = args.fleet_procs
    workers = [
        ctx.Process(target=_fleet_worker, args=(str(paths.data_dir), ids[i::n], broker.port,
                                                args.fleet_readings, args.fleet_period,
                                                args.fleet_seconds, go, out), daemon=True)
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    connected = sum(out.get(timeout=300)[1] for _ in workers)
    connect_s = time.perf_counter() - t0
    broker_cpu = _Cpu([broker.pid] if broker.pid else [])
    ingest_cpu = _Cpu([p.pid for p in procs._procs if p.pid is not None])
    conns_before = len(psutil.Process(broker.pid).net_connections()) if broker.pid else 0
    broker_cpu.start()
    ingest_cpu.start()
    t_send = time.perf_counter()
    go.set()
    results = []
    while len(results) < n:
        broker_cpu.sample()
        ingest_cpu.sample()
        try:
            kind, val = out.get(timeout=1)
        except Exception:
            continue
        if kind == "done":
            results.append(val)
        if len(results) == 0 and time.perf_counter() - t_send > args.fleet_seconds + 200:
            break
    elapsed = time.perf_counter() - t_send
    b, i = broker_cpu.stop(), ingest_cpu.stop()
    for w in workers:
        w.join(30)
    procs.stop()
    s = open_store(store, readonly=True)
    try:
        summary = s.fleet_summary()
    finally:
        s.close()
    fleet_rows = {g: summary.get(g, {}) for g in ids}
    tot = {k: sum(r[k] for r in results) for k in results[0]} if results else {}
    stored_batches = sum(r.get("batches", 0) for r in fleet_rows.values())
    stored_readings = sum(r.get("readings", 0) for r in fleet_rows.values())
    return {
        "gateways": args.gateways, "worker_processes": n,
        "provision_s": round(provision_s, 2), "connect_all_s": round(connect_s, 2),
        "connected_before_send": connected, "broker_tcp_connections": conns_before,
        "period_s": args.fleet_period, "readings_per_batch": args.fleet_readings,
        "send_phase_s": round(elapsed, 1),
        **tot,
        "batches_stored": stored_batches, "readings_stored": stored_readings,
        "lost_readings": tot.get("readings_sent", 0) - stored_readings,
        "readings_stored_per_s": round(stored_readings / elapsed),
        "offered_readings_per_s": round(args.gateways * args.fleet_readings
                                        / args.fleet_period),
        "broker": b, "ingest_1_process": i,
    }


# --------------------------------------------------------------------------- main
def _pg_database(admin: str) -> tuple[str, str]:
    import psycopg

    name = f"edgegw_bench_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _pg_drop(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--readings", type=int, default=1000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--ingest-processes", default="1,2")
    ap.add_argument("--gateways", type=int, default=500)
    ap.add_argument("--fleet-readings", type=int, default=10)
    ap.add_argument("--fleet-period", type=float, default=1.0)
    ap.add_argument("--fleet-seconds", type=float, default=60.0)
    ap.add_argument("--fleet-procs", type=int, default=2)
    ap.add_argument("--fleet-store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-fleet", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgegw-bench-cloud-"))
    os.chmod(root, 0o711)
    pg_name, pg_url = _pg_database(args.pg_admin)
    result: dict[str, Any] = {
        "bench": "cloud",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_at_start": os.getloadavg()},
    }
    try:
        paths = init_data_dir(root / "cloud")
        broker = ManagedBroker(paths, _free_port()).start()
        try:
            if not args.skip_ingest:
                gw = "bench-ingest"
                issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
                with Registry(paths.registry_db) as reg:
                    _identity(paths, reg, issuer, gw, root / f"id-{gw}")
                backlog = root / "backlog.db"
                ob = Outbox(backlog, max_bytes=2 * 1024**3,
                            sealer=_sealer(paths, gw, root / f"id-{gw}"))
                ts = time.time_ns() // 1_000_000
                for k in range(args.batches):
                    s = _samples(k, args.readings, ts + k * 1000)
                    ob.append(Lane.TELEMETRY, encode_batch(s), count=len(s),
                              first_ts_ms=s[0].ts_ms, last_ts_ms=s[-1].ts_ms)
                ob.close()
                runs = []
                for store in (paths.store_db, pg_url):
                    for n in (int(x) for x in args.ingest_processes.split(",")):
                        runs.append(await ingest_drain(paths, broker.url, broker.service_url,
                                                       root, backlog, gw, store, n,
                                                       args.window))
                        _clear(store, gw)
                result["ingest"] = runs
            if not args.skip_fleet:
                store = pg_url if args.fleet_store == "postgresql" else paths.store_db
                result["fleet"] = fleet(paths, broker, root, args, store)
        finally:
            broker.stop()
    finally:
        _pg_drop(args.pg_admin, pg_name)
        shutil.rmtree(root, ignore_errors=True)
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
