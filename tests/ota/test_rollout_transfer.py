"""OTA rollouts over the real transport: the cloud's device manager (as ``serve`` runs it: rollout
engine + chunk server) with a real ``Downlink``, Mosquitto with our mTLS + ACL config, the cloud
CLI in a subprocess (``ota rollout|status|halt|resume|cancel``), and at the gateway end a small
scripted responder built on the real gateway ``DownlinkService`` + ``Uplink`` session.

The responder stands in for the gateway's OTA agent (built separately; the full end-to-end tests
with real daemons are in the e2e suite): it verifies the offer's signature, pulls the chunks,
checks each against the signed manifest, and reports states the way the agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from uplink.conftest import Cloud, GatewaySide, await_until, cloud_dir, free_port  # noqa: F401

from edgegw import pki
from edgegw.device.downlink import DownlinkService
from edgegw.protocol import downlink as dl
from edgegw.protocol import ota_transfer as ot
from edgegw.protocol.release import Manifest, verify_signature
from edgegw_cloud.cli import main as cloud_main
from edgegw_cloud.devmgmt import DeviceManager
from edgegw_cloud.ota import ReleaseRow, ReleaseStore
from edgegw_cloud.rollout import RolloutStore


class Responder:
    """A gateway end on the real downlink service; ``script``: ok | refuse | hold."""

    def __init__(self, cloud: Cloud, tmp: Path, gw: str, script: str = "ok") -> None:
        self.cloud, self.gw, self.script = cloud, gw, script
        self.ident = cloud.gateway(gw, tmp / gw / "identity")
        self.state_dir = tmp / gw / "state"
        self.pub = pki.load_public_key(cloud.paths.ota_signing_pub)
        self.offers: list[tuple[float, ot.Offer]] = []
        self.cancels: list[ot.Cancel] = []
        self.chunks: dict[int, bytes] = {}
        self.payload: bytes | None = None
        self.committed_at: float | None = None
        self.side: GatewaySide | None = None
        self.svc: DownlinkService | None = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.side = GatewaySide(self.ident, self.state_dir, self.cloud.url)
        self.svc = DownlinkService(self.gw, self.ident.dir, self.state_dir)
        self.svc.register(dl.OTA, self.on_ota)
        self.svc.attach(self.side.uplink)
        await self.svc.start()
        self.side.start()
        side = self.side
        await await_until(lambda: side.uplink.connected, 15, f"{self.gw} connected")

    async def disconnect(self) -> None:
        assert self.svc is not None and self.side is not None
        await self.svc.stop()
        await self.side.close()
        self.svc = self.side = None

    def send(self, body: dict[str, Any]) -> None:
        assert self.svc is not None
        assert self.svc.reply(dl.OTA, None, body), f"{self.gw}: uplink not connected"

    def report(self, offer: ot.Offer, state: str, **kw: Any) -> None:
        self.send(ot.State(offer.rollout, offer.release, state, **kw).body())

    async def on_ota(self, msg: dl.Message) -> None:
        m = ot.parse_down(msg.body)
        if isinstance(m, ot.Offer):
            self.offers.append((time.monotonic(), m))
            manifest = verify_signature(m.manifest, m.sig, self.pub)  # type: ignore[arg-type]
            if self.script == "refuse":
                self.report(m, "refused", reason="bad_signature", detail="scripted refusal")
            elif self.task is None:
                self.task = asyncio.create_task(self.download(m, manifest))
        elif isinstance(m, ot.Chunk):
            self.chunks[m.index] = m.data
        else:
            self.cancels.append(m)
            if self.task is not None:
                self.task.cancel()
            self.report(ot.Offer(m.rollout, m.release, b"", b""), "cancelled")

    async def fetch(self, release: str, indexes: list[int], expect: list[int]) -> None:
        self.send(ot.Request(release, tuple(indexes)).body())
        await await_until(lambda: all(i in self.chunks for i in expect), 20,
                          f"{self.gw}: chunks {expect}")

    async def download(self, offer: ot.Offer, manifest: Manifest) -> None:
        n = manifest.chunk_count()
        self.report(offer, "downloading", total=n)
        if self.script == "hold":  # one chunk, then wait (for a cancel)
            await self.fetch(offer.release, [0], [0])
            self.report(offer, "downloading", received=1, total=n, bytes=len(self.chunks[0]))
            return
        for start in range(0, n, 8):
            want = list(range(start, min(start + 8, n)))
            # the first request also asks for an index past the end: counted, not answered
            await self.fetch(offer.release, want + ([n] if start == 0 else []), want)
        assert n not in self.chunks
        for i in range(n):
            assert hashlib.sha256(self.chunks[i]).hexdigest() == manifest.chunks[i], i
        payload = b"".join(self.chunks[i] for i in range(n))
        assert hashlib.sha256(payload).hexdigest() == manifest.payload_sha256
        self.payload = payload
        for state in ("verifying", "installing"):
            self.report(offer, state, received=n, total=n, bytes=len(payload))
        self.committed_at = time.monotonic()
        self.report(offer, "committed", received=n, total=n, bytes=len(payload), version="2")


async def cli(cloud: Cloud, *args: str, subprocess_: bool = False) -> str:
    """``edgegw-cloud ota ARGS`` -> stdout. In this process (the CLI's ``main``; a new
    interpreter costs seconds here), or with ``subprocess_`` as its own process beside the
    ``serve`` manager, the way operators run it (both share only the data dir)."""
    argv = ["ota", args[0], "--data-dir", str(cloud.paths.data_dir), *args[1:]]
    if subprocess_:
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "edgegw_cloud.cli", *argv],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = await asyncio.to_thread(cloud_main, argv)
    assert rc == 0, out.getvalue()
    return out.getvalue()


def publish(cloud: Cloud) -> ReleaseRow:
    with ReleaseStore(cloud.paths.data_dir) as store:
        files: dict[str, bytes | Path] = {"gateway.yaml": b"gateway: {id: x}\n",
                                          "model.bin": os.urandom(150_000)}
        return store.publish(files, kind="config", name="site", version="2",
                             chunk_size=16 * 1024)


async def start_manager(cloud: Cloud) -> DeviceManager:
    dm = DeviceManager(cloud.paths, cloud.broker.service_url, tag="serve", ota=True,
                       ota_tick_s=0.2)
    await asyncio.to_thread(dm.start)
    return dm


def rollout_state(cloud: Cloud, rid: int) -> tuple[str, dict[str, str]]:
    with RolloutStore(cloud.paths.data_dir) as rs:
        return rs.get(rid).state, {t.gateway: t.state for t in rs.targets(rid)}


async def test_waves_in_order_byte_exact_chunks_and_offer_on_reconnect(
    cloud: Cloud, tmp_path: Path
) -> None:
    rel = publish(cloud)
    gws = [Responder(cloud, tmp_path, gw) for gw in ("gw-a", "gw-b", "gw-c")]
    a, b, c = gws
    dm = await start_manager(cloud)
    try:
        for r in gws:
            await r.connect()
        await c.disconnect()  # the cloud now knows gw-c is offline
        await await_until(lambda: dm._online.get("gw-c") is False, 10, "gw-c offline")
        out = await cli(cloud, "rollout", rel.release_id, "--to", "all", "--waves", "1,2,3",
                        "--max-failures", "0", "--json", subprocess_=True)
        rid = json.loads(out)["id"]
        await await_until(lambda: rollout_state(cloud, rid)[1]["gw-b"] == "committed", 30,
                          "wave 2 committed")
        await await_until(lambda: dm.engine is not None and dm.engine.counts["ticks"] > 0, 5,
                          "a tick")
        state, per_gw = rollout_state(cloud, rid)
        assert state == "running" and per_gw["gw-c"] == "pending"
        text = (await cli(cloud, "status", str(rid)))
        assert "wave 3/3" in text and "pending" in text and "committed (2)" in text, text

        await c.connect()  # comes back: the offer follows at once
        await await_until(lambda: rollout_state(cloud, rid)[0] == "completed", 30,
                          "rollout completed")
        doc = json.loads(await cli(cloud, "status", str(rid), "--json"))
        assert doc["state"] == "completed"
        assert [t["display"] for t in doc["targets"]] == ["committed (2)"] * 3

        # each wave started only after the previous one committed, and each gateway got the
        # offer exactly once (gw-c: while offline nothing, then one offer on reconnect)
        assert [len(r.offers) for r in gws] == [1, 1, 1]
        assert a.committed_at is not None and b.committed_at is not None
        assert a.offers[0][0] < a.committed_at < b.offers[0][0] < b.committed_at < c.offers[0][0]
        payload = (rel.path / "payload.tar").read_bytes()
        assert all(r.payload == payload for r in gws)
        assert dm.chunks is not None
        assert dm.chunks.counts["refused_index_out_of_range"] == 3
        assert dm.chunks.bytes_sent == 3 * len(payload)
    finally:
        for r in gws:
            if r.svc is not None:
                await r.disconnect()
        await asyncio.to_thread(dm.stop)


async def test_threshold_halts_refusal_visible_and_operator_verbs(
    cloud: Cloud, tmp_path: Path
) -> None:
    rel = publish(cloud)
    a = Responder(cloud, tmp_path, "gw-a", "refuse")
    b = Responder(cloud, tmp_path, "gw-b", "hold")
    c = Responder(cloud, tmp_path, "gw-c", "hold")
    dm = await start_manager(cloud)
    assert dm.engine is not None and dm.chunks is not None
    engine, chunks = dm.engine, dm.chunks
    try:
        for r in (a, b, c):
            await r.connect()
        out = await cli(cloud, "rollout", rel.release_id, "--to", "gw-a,gw-b,gw-c", "--waves",
                        "1,100%", "--max-failures", "10%", "--json")
        rid = json.loads(out)["id"]
        await await_until(lambda: rollout_state(cloud, rid)[0] == "halted", 30, "auto-halt")
        ticks = engine.counts["ticks"]
        await await_until(lambda: engine.counts["ticks"] >= ticks + 3, 10, "3 more ticks")
        assert b.offers == [] and c.offers == [], "a later wave was offered after the halt"
        text = (await cli(cloud, "status", str(rid)))
        assert "halted: failure threshold (1 of 1 failed in wave 1, max 10%)" in text, text
        assert "refused: bad_signature (scripted refusal)" in text, text

        # chunks only for an active target: gw-a (refused) and gw-b (not offered) get none
        a.send(ot.Request(rel.release_id, (0,)).body())
        b.send(ot.Request(rel.release_id, (0, 1)).body())
        b.send(ot.Request("nope-1-config-99", (0,)).body())
        await await_until(lambda: chunks.counts["refused_not_targeted"] == 2
                          and chunks.counts["refused_unknown_release"] == 1, 10, "refusals")
        assert chunks.counts["chunks_sent"] == 0 and a.chunks == {} and b.chunks == {}

        await cli(cloud, "resume", str(rid))
        await await_until(lambda: set(rollout_state(cloud, rid)[1].values())
                          == {"refused", "downloading"}
                          and b.chunks.keys() == {0} and c.chunks.keys() == {0}, 30,
                          "wave 2 downloading")
        await cli(cloud, "halt", str(rid))
        assert rollout_state(cloud, rid)[0] == "halted"
        await cli(cloud, "cancel", str(rid))
        await await_until(lambda: rollout_state(cloud, rid)[1] == {
            "gw-a": "refused", "gw-b": "cancelled", "gw-c": "cancelled"}, 30, "cancelled")
        assert [len(r.cancels) for r in (a, b, c)] == [0, 1, 1]
        assert rollout_state(cloud, rid)[0] == "cancelled"
        # after the cancel, gw-b's chunk requests are refused
        n = chunks.counts["refused_not_targeted"]
        b.send(ot.Request(rel.release_id, (1,)).body())
        await await_until(lambda: chunks.counts["refused_not_targeted"] == n + 1, 10,
                          "refused after cancel")
    finally:
        for r in (a, b, c):
            if r.svc is not None:
                await r.disconnect()
        await asyncio.to_thread(dm.stop)
