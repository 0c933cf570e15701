"""CoAP driver requests/s against a raw aiocoap server ceiling (same run, same client).

The server runs in this process: (1) a bare aiocoap resource answering 2.04 (ceiling),
(2) the CoAP driver with an unauthenticated test device, (3) the driver with OSCORE. Its emit
only counts. The client is a separate process (aiocoap, ``--concurrency`` requests in flight)
sending ``--requests`` POSTs of a small JSON reading. Prints JSON with req/s of each and the
driver/raw ratios. Usage: python bench/bench_coap.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import resource

from edgegw.drivers.coap import CoapDriver, CoapOptions
from edgegw.model import Lane, Sample
from edgegw.sdk import DeviceContext

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


async def driver_server(n: int, conc: int, tmp: Path, oscore: bool) -> float:
    port = free_udp_port()
    counted = 0

    async def emit(samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY,
                   durable: bool = False) -> None:
        nonlocal counted
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
    assert counted == 2 * n, counted
    return n / float(r["seconds"])


async def amain(n: int, conc: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = await raw_server(n, conc)
        plain = await driver_server(n, conc, Path(tmp), oscore=False)
        osc = await driver_server(n, conc, Path(tmp), oscore=True)
    return {
        "bench": "coap_post",
        "requests": n,
        "concurrency": conc,
        "raw_aiocoap_req_per_s": round(raw),
        "driver_unauthenticated_req_per_s": round(plain),
        "driver_oscore_req_per_s": round(osc),
        "driver_vs_raw": round(plain / raw, 3),
        "driver_oscore_vs_raw": round(osc / raw, 3),
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
