"""CoAP driver requests/s against a raw aiocoap server ceiling (same run, same client).

The server runs in this process: (1) a bare aiocoap resource answering 2.04 (no storage: the
protocol ceiling), (2) the CoAP driver with an unauthenticated test device, (3) the driver with
OSCORE. In (2) and (3) the driver's emit only counts (the driver's own cost).
The real path (issue 13): the 2.04 of the driver means "durably stored", so
(4) ``real_path``: the driver (unauthenticated) emitting into the daemon's real pipeline at
defaults (``Pipeline.submit(durable=True)``: batcher, codec v2, AES-GCM, SQLite outbox with
synchronous=FULL; group commit of whatever arrived meanwhile), beside
(5) ``raw_durable``: a bare aiocoap resource that commits each reading in its own SQLite
transaction (WAL, synchronous=FULL, in a thread) before answering - the like-for-like ceiling
of "answer only once stored" without our batching.
The client is a separate process (aiocoap, ``--concurrency`` requests in flight) sending
``--requests`` POSTs of a small JSON reading. Prints JSON with req/s of each and the ratios.
Usage: python bench/bench_coap.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import resource

from edgegw.config import BatchConfig
from edgegw.drivers.coap import CoapDriver, CoapOptions
from edgegw.model import Lane, Sample
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.sdk import DeviceContext
from edgegw.store.outbox import Outbox
from edgegw.store.series_dict import FILE_NAME, SeriesDictionary

CLIENT = r"""
import asyncio, json, sys, time, aiocoap
port, n, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
path, ctxdir = sys.argv[4], sys.argv[5]
async def main():
    ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    base = f"coap://127.0.0.1:{port}"
    if ctxdir != "-":
        ctx.client_credentials.load_from_dict({base + "/*": {"oscore": {"contextfile": ctxdir}}})
    payload = json.dumps({"temp": 21.5, "hum": 40}).encode()
    sent = ok = 0
    async def worker():
        nonlocal sent, ok
        while sent < n:
            sent += 1
            m = aiocoap.Message(code=aiocoap.POST, uri=base + path, payload=payload)
            m.opt.content_format = 50
            r = await ctx.request(m).response
            ok += r.code == aiocoap.CHANGED
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    dt = time.perf_counter() - t0
    print(json.dumps({"ok": ok, "sent": sent, "seconds": dt}))
    await ctx.shutdown()
asyncio.run(main())
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_client(port: int, n: int, conc: int, path: str, ctxdir: str = "-") -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(n), str(conc), path, ctxdir,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out)
    if result["ok"] != n:
        raise RuntimeError(f"only {result['ok']} of {n} requests answered 2.04")
    return result


class Changed(resource.Resource):
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        json.loads(request.payload)  # parse like the driver would, then acknowledge
        return aiocoap.Message(code=aiocoap.CHANGED)


async def raw_server(n: int, conc: int) -> float:
    port = free_udp_port()
    site = resource.Site()
    site.add_resource(("d", "dev"), Changed())
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port),
                                                      transports=["udp6"])
    try:
        r = await run_client(port, n, conc, "/d/dev")
    finally:
        await ctx.shutdown()
    return n / float(r["seconds"])


class DurableChanged(resource.Resource):
    """Answers 2.04 once the reading is committed in its own SQLite transaction (FULL)."""

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("CREATE TABLE r (ts INTEGER, device TEXT, body TEXT)")

    def _store(self, body: str) -> None:
        self.con.execute("BEGIN IMMEDIATE")
        self.con.execute("INSERT INTO r VALUES (?, 'dev', ?)", (time.time_ns(), body))
        self.con.execute("COMMIT")

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        body = json.dumps(json.loads(request.payload))
        await asyncio.get_running_loop().run_in_executor(self.pool, self._store, body)
        return aiocoap.Message(code=aiocoap.CHANGED)


async def raw_durable_server(n: int, conc: int, tmp: Path) -> float:
    port = free_udp_port()
    res = DurableChanged(tmp / "raw-durable.db")
    site = resource.Site()
    site.add_resource(("d", "dev"), res)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port),
                                                      transports=["udp6"])
    try:
        r = await run_client(port, n, conc, "/d/dev")
    finally:
        await ctx.shutdown()
        res.pool.shutdown()
        res.con.close()
    return n / float(r["seconds"])


async def real_pipeline(tmp: Path) -> tuple[Pipeline, Outbox, OutboxThread, SeriesDictionary]:
    state = tmp / "real-state"
    state.mkdir(exist_ok=True)
    thread = OutboxThread()
    sealer = make_sealer("bench-gw", state, None)
    outbox = await thread.call(lambda: Outbox(state / "outbox.db", max_bytes=1 << 30,
                                              sealer=sealer))
    sdict = await thread.call(SeriesDictionary, state / FILE_NAME)
    d = BatchConfig()  # the defaults
    batcher = Batcher(outbox, thread, max_readings=d.max_readings, max_age=float(d.max_age),
                      quiet=float(d.quiet), min_interval=float(d.min_interval),
                      encode=sdict.encode)
    batcher.on_appended = sdict.sealed
    return Pipeline(batcher), outbox, thread, sdict


async def driver_server(n: int, conc: int, tmp: Path, oscore: bool,
                        real: bool = False) -> float:
    port = free_udp_port()
    counted = 0
    pipe = None
    if real:
        pipe, outbox, thread, sdict = await real_pipeline(tmp)

    async def emit(samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY,
                   durable: bool = False) -> None:
        nonlocal counted
        if pipe is not None:
            await pipe.submit(samples, lane=lane, durable=durable)
        counted += len(samples)

    key = {"sender_id": "00", "recipient_id": "01", "master_secret": os.urandom(16).hex()}
    dev: dict[str, Any] = {"id": "dev", "rate": 1e9, "burst": 10**9}
    dev |= {"oscore": key} if oscore else {"insecure_no_auth": True}
    driver = CoapDriver(CoapOptions.model_validate(
        {"listen": f"127.0.0.1:{port}", "devices": [dev]}))
    state = tmp / ("oscore" if oscore else "plain")
    ctx = DeviceContext("bench", "coap", state, logging.getLogger("bench"))
    await driver.open(ctx)
    task = asyncio.create_task(driver.run(emit))
    ctxdir = "-"
    if oscore:
        cdir = tmp / "client"
        cdir.mkdir(exist_ok=True)
        (cdir / "settings.json").write_text(json.dumps(
            {"sender-id_hex": "01", "recipient-id_hex": "00"}))
        (cdir / "secret.json").write_text(json.dumps({"secret_hex": key["master_secret"]}))
        ctxdir = str(cdir)
    try:
        await asyncio.wait_for(driver.ready.wait(), 10)
        r = await run_client(port, n, conc, "/d/dev", ctxdir)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()
        if pipe is not None:
            await pipe.flush()
            sealed = pipe.batcher.readings_sealed
            await thread.call(outbox.close)
            await thread.call(sdict.close)
            thread.shutdown()
            assert sealed == 2 * n, sealed
    assert counted == 2 * n, counted
    return n / float(r["seconds"])


async def amain(n: int, conc: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = await raw_server(n, conc)
        plain = await driver_server(n, conc, Path(tmp), oscore=False)
        osc = await driver_server(n, conc, Path(tmp), oscore=True)
        real = await driver_server(n, conc, Path(tmp), oscore=False, real=True)
        raw_durable = await raw_durable_server(n, conc, Path(tmp))
    return {
        "bench": "coap_post",
        "requests": n,
        "concurrency": conc,
        "raw_aiocoap_req_per_s": round(raw),
        "driver_unauthenticated_req_per_s": round(plain),
        "driver_oscore_req_per_s": round(osc),
        "driver_vs_raw": round(plain / raw, 3),
        "driver_oscore_vs_raw": round(osc / raw, 3),
        "real_path_durable_pipeline_req_per_s": round(real),
        "raw_durable_commit_per_request_req_per_s": round(raw_durable),
        "real_path_vs_raw": round(real / raw, 3),
        "real_path_vs_raw_durable": round(real / raw_durable, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = asyncio.run(amain(args.requests, args.concurrency))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
