"""CoAP test harness: free ports, the driver under a recording emit, aiocoap and libcoap clients.

The harness stands in for the runtime: it opens the driver with a real ``DeviceContext``,
runs ``run(emit)`` as a task with a recording (optionally gated) ``emit`` and closes it.
Clients are real and independent: aiocoap (with OSCORE contexts mirrored from the driver's
config) and libcoap's ``coap-client-notls`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from edgegw.drivers.coap import CoapDriver, CoapOptions
from edgegw.model import Lane, Sample
from edgegw.sdk import DeviceContext

LIBCOAP_CLIENT = "coap-client-notls"  # Debian libcoap3-bin 4.3.1: no OSCORE in any variant


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def oscore_device(dev_id: str, kid: int, **extra: Any) -> dict[str, Any]:
    """A device entry with fresh per-device OSCORE keys (gateway side)."""
    return {
        "id": dev_id,
        "oscore": {
            "sender_id": "00",
            "recipient_id": f"{kid:02x}",
            "master_secret": os.urandom(16).hex(),
            "master_salt": os.urandom(8).hex(),
        },
        **extra,
    }


class Recorder:
    """Recording ``emit``; while ``gate`` is cleared, emit blocks (an outbox commit in flight)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.calls: list[tuple[Lane, bool]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail: Exception | None = None

    async def emit(
        self, samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> None:
        self.calls.append((lane, durable))
        self.entered.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.samples.extend(samples)


@asynccontextmanager
async def running_driver(
    options: dict[str, Any], state_dir: Path, rec: Recorder, device_id: str = "coap-gw"
) -> AsyncIterator[CoapDriver]:
    driver = CoapDriver(CoapOptions.model_validate(options))
    ctx = DeviceContext(device_id, "coap", state_dir, logging.getLogger(f"test.{device_id}"))
    await driver.open(ctx)
    task = asyncio.create_task(driver.run(rec.emit))
    try:
        await asyncio.wait_for(driver.ready.wait(), 10)
        yield driver
        assert not task.done(), task.exception() if task.done() else None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()


def write_client_context(directory: Path, device: dict[str, Any]) -> Path:
    """The device's side of its OSCORE context (ids swapped), in aiocoap's file format."""
    key = device["oscore"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "settings.json").write_text(json.dumps({
        "sender-id_hex": key["recipient_id"],
        "recipient-id_hex": key["sender_id"],
        "algorithm": key.get("algorithm", "AES-CCM-16-64-128"),
    }))
    (directory / "secret.json").write_text(json.dumps({
        "secret_hex": key["master_secret"], "salt_hex": key.get("master_salt", ""),
    }))
    return directory


@dataclass
class Reply:
    code: Code
    payload: bytes
    max_age: int | None = None


class AiocoapClient:
    """An aiocoap client context, optionally holding one device's OSCORE credentials."""

    def __init__(self, ctx: aiocoap.Context, base: str) -> None:
        self.ctx = ctx
        self.base = base

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, port: int, oscore_dir: Path | None = None
    ) -> AsyncIterator[AiocoapClient]:
        ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
        base = f"coap://127.0.0.1:{port}"
        if oscore_dir is not None:
            ctx.client_credentials.load_from_dict(
                {f"{base}/*": {"oscore": {"contextfile": str(oscore_dir)}}}
            )
        try:
            yield cls(ctx, base)
        finally:
            for item in list(ctx.client_credentials.values()):
                if getattr(item, "lockfile", None) is not None:
                    item._destroy()
            await ctx.shutdown()

    async def post(self, path: str, payload: bytes, content_format: int | None = 50) -> Reply:
        msg = aiocoap.Message(code=aiocoap.POST, uri=f"{self.base}{path}", payload=payload)
        if content_format is not None:
            msg.opt.content_format = content_format
        resp = await asyncio.wait_for(self.ctx.request(msg).response, 15)
        return Reply(resp.code, resp.payload, resp.opt.max_age)


#: coap-client -v 6 logs every PDU; responses look like "v:1 t:ACK c:2.04 i:..."
_CODE = re.compile(rb"t:(?:ACK|CON|NON) c:(\d)\.(\d\d) ")


async def libcoap_post(
    port: int, path: str, payload: bytes, content_format: int | None = 50
) -> Reply:
    """POST with libcoap's coap-client; returns the response code it reports."""
    args = [LIBCOAP_CLIENT, "-m", "post", "-B", "10", "-v", "6", "-f", "-"]
    if content_format is not None:
        args += ["-t", str(content_format)]
    args.append(f"coap://127.0.0.1:{port}{path}")
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(payload), 20)
    text = out + b"\n" + err
    codes = list(_CODE.finditer(text))
    if not codes:
        shown = text.decode(errors="replace")
        raise AssertionError(f"no response code in coap-client output:\n{shown}")
    return Reply(Code(int(codes[-1][1]) << 5 | int(codes[-1][2])), out)


async def wait_serving(
    port: int, proc: asyncio.subprocess.Process, within: float = 30
) -> None:
    """Poll with an unauthenticated GET until the server answers (any code)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with AiocoapClient.connect(port) as anon:
        while True:
            assert proc.returncode is None, "daemon exited during startup"
            msg = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/d/probe")
            try:
                await asyncio.wait_for(anon.ctx.request(msg).response, 2)
                return
            except (aiocoap.error.Error, TimeoutError, OSError):
                if loop.time() > deadline:
                    raise AssertionError("daemon's CoAP server did not come up") from None
                await asyncio.sleep(0.1)
