"""Gateway core benchmarks (issue: gateway core, acceptance 7). Prints one JSON document.

- ``pipeline``: readings/s from driver emit (``Pipeline.submit`` in bursts like a push driver) to
  durable, sealed outbox at the daemon's defaults (codec v2 with the series dictionary, snappy,
  AES-GCM, one SQLite transaction per batch of ``max_readings`` 5000; no edge stages are
  configured by default), on one core (one event loop + the outbox thread, sharing the GIL).
- ``sqlite_ceiling`` (like for like, issue 13): raw SQLite, WAL + synchronous=FULL, ONE blob per
  transaction of the SAME size as the pipeline's average sealed batch, as many transactions as
  the pipeline committed: transactions/s, and readings/s at the pipeline's readings per batch.
  Ratio = pipeline / that ceiling (1.0 = the pipeline costs nothing but its commits).
- ``sqlite_rows_1000_per_txn``: the old figure (1000 uncompressed rows per transaction), kept
  for reference only: it is NOT the same work as the pipeline's.
- ``rss``: resident memory of a real `edgegw run` polling 100 Modbus TCP devices x 20 points at
  1 s (10 simulated sites x 10 unit ids), after warm-up; plus how many polls succeeded.

    python bench/bench_gateway.py [--readings 500000] [--rss-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgegw.model import Sample
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox
from edgegw.store.series_dict import FILE_NAME, SeriesDictionary

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_blob_ceiling(tmp: Path, blob_size: int, txns: int,
                        readings_per_batch: float) -> dict[str, Any]:
    con = sqlite3.connect(tmp / "raw-blob.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE b (seq INTEGER PRIMARY KEY, lane INTEGER, count INTEGER,"
                " envelope BLOB)")
    blob = os.urandom(blob_size)  # sealed data is incompressible: random bytes are like it
    t0 = time.perf_counter()
    for i in range(txns):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO b VALUES (?, 1, ?, ?)", (i, int(readings_per_batch), blob))
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return {"blob_bytes": blob_size, "transactions": txns, "seconds": round(dt, 3),
            "transactions_per_s": round(txns / dt, 1),
            "readings_per_s_at_pipeline_batch_size": round(txns / dt * readings_per_batch)}


def sqlite_ceiling(tmp: Path, rows: int) -> dict[str, Any]:
    con = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE r (ts INTEGER, device TEXT, metric TEXT, value REAL)")
    batch = [(1_700_000_000_000 + i, f"dev{i % 100}", f"m{i % 20}", i * 0.5) for i in range(1000)]
    t0 = time.perf_counter()
    for _ in range(rows // 1000):
        con.execute("BEGIN")
        con.executemany("INSERT INTO r VALUES (?,?,?,?)", batch)
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return {"rows": rows, "seconds": round(dt, 3), "rows_per_s": round(rows / dt)}


async def pipeline_rate(tmp: Path, readings: int) -> dict[str, Any]:
    thread = OutboxThread()
    sealer = make_sealer("bench-gw", tmp, None)
    outbox = await thread.call(lambda: Outbox(tmp / "outbox.db", max_bytes=2 << 30, sealer=sealer))
    sdict = await thread.call(SeriesDictionary, tmp / FILE_NAME)  # codec v2: the default
    batcher = Batcher(outbox, thread, max_readings=5000, max_age=0.25, encode=sdict.encode)
    batcher.on_appended = sdict.sealed
    pipe = Pipeline(batcher)
    # 200 slowly drifting registers, emitted in bursts of 1000 like a busy push driver.
    # Creating the Sample objects is the driver's side of "emit" and is timed too.
    base = 1_700_000_000_000
    names = [(f"dev{i % 10}", f"reg{i % 200}") for i in range(1000)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for b in range(readings // 1000):
        ts = base + b * 100
        burst = [
            Sample(d, m, ts + i // 200, 20.0 + ((b + i) % 7) * 0.01)
            for i, (d, m) in enumerate(names)
        ]
        await pipe.submit(burst)
    await batcher.drain()
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = await thread.call(outbox.stats)
    await thread.call(outbox.close)
    await thread.call(sdict.close)
    thread.shutdown()
    return {
        "readings": readings,
        "seconds": round(dt, 3),
        "cpu_seconds": round(cpu, 3),
        "readings_per_s": round(readings / dt),
        # wall time includes waiting for the other sessions' CPU (loaded 2-core machine)
        "readings_per_cpu_s": round(readings / cpu) if cpu else None,
        "batches": batcher.batches_sealed,
        "mean_batch_envelope_bytes": round(batcher.bytes_sealed / max(1, batcher.batches_sealed)),
        "outbox_file_bytes": stats.get("file_bytes"),
    }


def rss_run(tmp: Path, seconds: float) -> dict[str, Any]:
    import psutil
    import yaml

    ports_file = tmp / "plant.json"
    plant = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.demo.plant",
            "--sites",
            "10",
            "--units",
            "10",
            "--ports-file",
            str(ports_file),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ports_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())["ports"]
        devices = [
            {
                "id": f"s{si}-u{uid}",
                "driver": "modbus",
                "poll": "1s",
                "options": {
                    "transport": "tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit_id": uid,
                    "points": [
                        {"name": f"r{a}", "kind": "holding", "address": a, "type": "uint16"}
                        for a in range(20)
                    ],
                },
            }
            for si, port in enumerate(ports)
            for uid in range(1, 11)
        ]
        state = tmp / "rss-state"
        cfg = tmp / "rss.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "gateway": {"id": "rss-gw", "state_dir": str(state), "log_level": "warning"},
                    "metrics": {"enabled": False},
                    "devices": devices,
                }
            )
        )
        gw = subprocess.Popen(
            [sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc = psutil.Process(gw.pid)
            time.sleep(seconds)  # a benchmark's measurement window, not synchronisation
            mem = proc.memory_full_info()  # rss, and uss/pss (shared library pages excluded)
            cpu = proc.cpu_times()
            st = json.loads((state / "status.json").read_text())["stats"]
        finally:
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
        polls = failures = 0
        for bus in st.get("scheduler", {}).get("buses", {}).values():
            for d in bus.get("devices", {}).values():
                polls += int(d.get("polls", 0))
                failures += int(d.get("failures", 0))
        return {
            "devices": len(devices),
            "points_per_device": 20,
            "poll_s": 1.0,
            "seconds": seconds,
            "rss_mb": round(mem.rss / 2**20, 1),
            "pss_mb": round(mem.pss / 2**20, 1),
            "uss_mb": round(mem.uss / 2**20, 1),
            "cpu_percent": round(100 * (cpu.user + cpu.system) / seconds, 1),
            "polls": polls,
            "poll_failures": failures,
            "goal_rss_mb": 45,
        }
    finally:
        plant.send_signal(signal.SIGTERM)
        plant.wait(10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--readings", type=int, default=500_000)
    p.add_argument("--rss-seconds", type=float, default=20.0)
    a = p.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pipe = asyncio.run(pipeline_rate(tmp, a.readings))
        per_batch = a.readings / max(1, pipe["batches"])
        ceiling = sqlite_blob_ceiling(tmp, pipe["mean_batch_envelope_bytes"],
                                      max(200, pipe["batches"]), per_batch)
        rows = sqlite_ceiling(tmp, a.readings)
        rss = rss_run(tmp, a.rss_seconds) if a.rss_seconds > 0 else None
    print(
        json.dumps(
            {
                "sqlite_ceiling": ceiling,
                "sqlite_rows_1000_per_txn": rows,
                "pipeline": pipe
                | {
                    "ratio_to_sqlite_ceiling": round(
                        pipe["readings_per_s"]
                        / ceiling["readings_per_s_at_pipeline_batch_size"], 3),
                    "goal_readings_per_s": 100_000,
                },
                "rss": rss,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
