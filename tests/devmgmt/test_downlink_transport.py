"""The downlink channel end to end over the real broker: cloud Downlink -> Mosquitto (mTLS, ACL)
-> gateway Uplink session -> DownlinkService -> handler -> sealed reply -> cloud listener.
Forged (another gateway's key), replayed, bad-tag and expired messages are refused and counted;
gateway B cannot publish on A's downlink (the broker refuses it)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from uplink.conftest import Cloud, GatewaySide, Identity, await_until, wait_until

from edgegw import pki
from edgegw.device.downlink import DownlinkService
from edgegw.protocol import downlink as dl
from edgegw.protocol import topics
from edgegw_cloud.downlink import Downlink


async def _gateway(cloud: Cloud, tmp: Path, gw: str,
                   ident: Identity | None = None) -> tuple[GatewaySide, DownlinkService]:
    ident = ident or cloud.gateway(gw, tmp / gw / "identity")
    side = GatewaySide(ident, tmp / gw / "state", cloud.url)
    svc = DownlinkService(gw, ident.dir, tmp / gw / "state")
    svc.attach(side.uplink)
    await svc.start()
    side.start()
    await await_until(lambda: side.uplink.connected, 15, "gateway connected")
    return side, svc


async def test_round_trip_and_refusals(cloud: Cloud, tmp_path: Path) -> None:
    a, svc = await _gateway(cloud, tmp_path, "gw-a")
    got: list[dl.Message] = []

    async def echo(msg: dl.Message) -> None:
        got.append(msg)
        svc.reply("command", msg.msg_id, {"echo": msg.body})

    svc.register("command", echo)
    a_closed = False
    replies: list[tuple[str, dl.Message]] = []
    lock = threading.Lock()
    down = Downlink(cloud.paths, cloud.broker.service_url)
    await asyncio.to_thread(down.start)
    down.listen("command", lambda gw, m: (lock.acquire(), replies.append((gw, m)), lock.release()))
    try:
        # happy path: delivered, handled, authentic reply at the cloud
        mid = await asyncio.to_thread(down.send, "gw-a", "command", {"x": 1})
        await await_until(lambda: len(replies) == 1, 10, "reply")
        assert replies[0][0] == "gw-a" and replies[0][1].msg_id == mid
        assert replies[0][1].body == {"echo": {"x": 1}}
        assert [m.body for m in got] == [{"x": 1}]

        # capture a sealed message and publish it twice: the copy is a replay
        codec = down.keys.down("gw-a")
        seq = down.store.next_seq("gw-a")
        now = dl.now_ms()
        blob = codec.seal("command", "dup", seq, {"x": 2}, issued_ms=now, expires_ms=now + 60_000)
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "command"), blob)
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "command"), blob)
        # bad tag
        bad = blob[:-1] + bytes([blob[-1] ^ 0x55])
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "command"), bad)
        # expired (authentic, fresh sequence)
        old = codec.seal("command", "old", down.store.next_seq("gw-a"), {},
                         issued_ms=now - 120_000, expires_ms=now - 60_000)
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "command"), old)
        # forged by gateway B: it knows only its own key and the ingest public key, so the best
        # it can do is a message sealed with a key derived from ITS key, for gateway A
        ident_b = cloud.gateway("gw-b", tmp_path / "gw-b" / "identity")
        own_b = pki.load_private_key(ident_b.dir / "gateway.key")
        ingest_pub = pki.load_public_key(ident_b.dir / "ingest-ka.pub")
        forged_key = dl.derive_message_key(own_b, ingest_pub, ident_b.key_id, "gw-a", dl.DOWN)  # type: ignore[arg-type]
        forged = dl.MessageCodec(forged_key, ident_b.key_id, "gw-a", dl.DOWN).seal(
            "command", "forged", dl.next_seq(seq), {"x": 666}, expires_ms=now + 60_000)
        # ... which the broker will not take from B (checked below); a compromised broker could
        # still deliver it, so publish it with the cloud's identity to reach the gateway
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "command"), forged)
        # and a fresh, valid one afterwards: everything before it has been processed once it
        # is handled (one worker, in order)
        await asyncio.to_thread(down.send, "gw-a", "command", {"x": 3})
        await await_until(lambda: len(got) == 3, 10, "the last valid command")
        assert [m.body for m in got] == [{"x": 1}, {"x": 2}, {"x": 3}]
        st = svc.stats()
        assert st["refused"] == {"replay": 1, "auth": 2, "expired": 1}, st
        assert st["accepted"] == 3

        # B cannot publish on A's downlink at all: PUBACK 0x87 from the broker
        assert await asyncio.to_thread(_publish_as, cloud, ident_b.dir, "gw-b",
                                       topics.down("gw-a", "command"), forged) == 0x87

        # replies are authenticated too: one sealed with a key that is not A's UP key is
        # refused and counted at the cloud, never handed to a listener
        # (A's session is closed first: on the gateway listener the probe's client id becomes
        # A's certificate CN, and two clients with one id kick each other off)
        await a.close()
        a_closed = True
        n_replies = len(replies)
        fake = dl.MessageCodec(bytes(32), a.ident.key_id, "gw-a", dl.UP).seal(
            "command", mid, 1, {"status": "ok"}, expires_ms=dl.now_ms() + 60_000)
        assert await asyncio.to_thread(_publish_as, cloud, a.ident.dir, "gw-a-probe",
                                       topics.up("gw-a", "command"), fake) == 0
        await await_until(lambda: down.counts.get("refused_auth", 0) == 1, 10, "refusal")
        assert len(replies) == n_replies
    finally:
        await asyncio.to_thread(down.stop)
        if not a_closed:
            await a.close()
        await svc.stop()


async def test_replay_refused_after_gateway_restart(cloud: Cloud, tmp_path: Path) -> None:
    a, svc = await _gateway(cloud, tmp_path, "gw-a")
    seen: list[str] = []

    async def handler(msg: dl.Message) -> None:
        seen.append(msg.msg_id)

    svc.register("shadow", handler)
    down = Downlink(cloud.paths, cloud.broker.service_url)
    await asyncio.to_thread(down.start)
    try:
        codec = down.keys.down("gw-a")
        blob = codec.seal("shadow", "s1", down.store.next_seq("gw-a"), {},
                          expires_ms=dl.now_ms() + 60_000)
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "shadow"), blob)
        await await_until(lambda: seen == ["s1"], 10, "first delivery")
        await a.close()
        await svc.stop()
        a, svc = await _gateway(cloud, tmp_path, "gw-a", a.ident)  # same state dir: a restart
        svc.register("shadow", handler)
        await asyncio.to_thread(down.publish_raw, topics.down("gw-a", "shadow"), blob)
        await asyncio.to_thread(down.send, "gw-a", "shadow", {}, msg_id="s2")
        await await_until(lambda: seen == ["s1", "s2"], 10, "fresh message after restart")
        assert svc.stats()["refused"] == {"replay": 1}
    finally:
        await asyncio.to_thread(down.stop)
        await a.close()
        await svc.stop()


def _publish_as(cloud: Cloud, identity: Path, client_id: str, topic: str, payload: bytes) -> int:
    codes: list[int] = []
    connected = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=pki.client_id(client_id),
                    protocol=mqtt.MQTTv5)
    c.tls_set_context(pki.make_tls_context(identity / "ca.crt", identity / "gateway.crt",
                                           identity / "gateway.key"))
    c.on_connect = lambda *a: connected.set()
    c.on_publish = lambda _c, _u, _m, rc, _p: codes.append(rc.value)
    c.connect("127.0.0.1", cloud.broker.port)
    c.loop_start()
    try:
        assert connected.wait(10)
        c.publish(topic, payload, qos=1)
        wait_until(lambda: bool(codes), 10, "PUBACK")
        return codes[0]
    finally:
        c.disconnect()
        c.loop_stop()
