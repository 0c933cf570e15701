"""Issue 9 #9: hostile CoAP input. Block-wise uploads are refused before reassembly unless the
sender is authenticated for the device and the upload stays under ``max_payload``; absurdly
nested JSON is a 4.00, not a 5.00 with a traceback. Real aiocoap clients (OSCORE and plain)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiocoap
from coap_harness import (
    AiocoapClient,
    Recorder,
    free_udp_port,
    oscore_device,
    running_driver,
    write_client_context,
)

from edgegw.drivers.coap.driver import pending_uploads


async def _raw_block(client: AiocoapClient, path: str, num: int, more: bool,
                     payload: bytes) -> aiocoap.Message:
    msg = aiocoap.Message(code=aiocoap.POST, uri=f"{client.base}{path}", payload=payload)
    msg.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(num, more, 6)  # 1024 B
    msg.opt.content_format = 50
    req = client.ctx.request(msg, handle_blockwise=False)
    return await asyncio.wait_for(req.response, 15)


async def test_unauthenticated_blockwise_upload_is_not_buffered(tmp_path: Path) -> None:
    dev = oscore_device("therm-a", 1)
    port = free_udp_port()
    opts = {"listen": f"127.0.0.1:{port}", "devices": [dev], "max_payload": 1024 * 1024}
    rec = Recorder()
    async with running_driver(opts, tmp_path / "state", rec) as driver, \
            AiocoapClient.connect(port) as anon:
        spool = driver.endpoint._block1
        codes = []
        for num in range(40):  # 40 KiB of an "upload" that would be 16 MiB
            resp = await _raw_block(anon, "/d/therm-a", num, True, b"[" * 1024)
            codes.append(resp.code.dotted)
        assert set(codes) == {"4.01"}, codes  # was 2.31 Continue, every block kept
        assert pending_uploads(spool) == 0
        assert rec.samples == []


async def test_authenticated_blockwise_is_capped_and_deep_json_is_a_4_00(tmp_path: Path) -> None:
    dev = oscore_device("therm-a", 1)
    port = free_udp_port()
    opts = {"listen": f"127.0.0.1:{port}", "devices": [dev], "max_payload": 20_000}
    rec = Recorder()
    async with running_driver(opts, tmp_path / "state", rec) as driver:
        cdir = write_client_context(tmp_path / "client", dev)
        async with AiocoapClient.connect(port, cdir) as ca:
            spool = driver.endpoint._block1
            # under the cap, block-wise works (aiocoap splits this into 1 KiB blocks)
            doc = {f"m{i:04d}": float(i) for i in range(800)}
            body = json.dumps(doc).encode()
            assert 1024 < len(body) < 20_000
            assert (await ca.post("/d/therm-a", body)).code.dotted == "2.04"
            assert len(rec.samples) == 800
            # over the cap: refused with 4.13 at the block that passes it
            big = json.dumps({"s": "x" * 30_000}).encode()
            reply = await ca.post("/d/therm-a", big)
            assert reply.code.dotted == "4.13"
            # nested 8000 deep (16 KB, under the cap): a clean 4.00, the server keeps serving
            reply = await ca.post("/d/therm-a", b"[" * 8000 + b"]" * 8000)
            assert reply.code.dotted == "4.00", reply
            assert b"nested too deeply" in reply.payload
            assert (await ca.post("/d/therm-a", b'{"t": 1.5}')).code.dotted == "2.04"
            assert pending_uploads(spool) <= 1  # finished or refused uploads: nothing growing
