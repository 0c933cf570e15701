"""Cloud ingest against hostile input, through the real broker, with a raw paho client playing
the gateway (so the test controls every byte): tampered / forged / malformed envelopes and
replayed sequences are counted, never stored and never acked in a way that could delete data
on the gateway; an authentic but undecodable batch is acked `rejected`."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgegw import pki
from edgegw.model import Sample
from edgegw.protocol import topics
from edgegw.protocol.ack import AckStatus, decode_acks
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer

from .conftest import Cloud, Identity, wait_until


class RawGateway:
    """A paho client with the gateway's identity; records every ack it receives."""

    def __init__(self, cloud: Cloud, ident: Identity) -> None:
        self.ident = ident
        self.acks: list[tuple[int, AckStatus]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=pki.client_id(ident.gateway_id), protocol=mqtt.MQTTv5)
        d = ident.dir
        c.tls_set_context(pki.make_tls_context(d / "ca.crt", d / "gateway.crt", d / "gateway.key"))
        c.on_connect = lambda cl, *_: cl.subscribe(topics.down_ack(ident.gateway_id), qos=1)
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", cloud.broker.port)
        c.loop_start()
        assert self._subscribed.wait(10)
        self.client = c

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.acks.extend(decode_acks(msg.payload))

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(topics.up_batch(self.ident.gateway_id), payload, qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _batch(n: int, t0: int) -> bytes:
    return encode_batch([Sample("dev", "m", t0 + i, float(i)) for i in range(n)])


def test_tampered_forged_replayed_and_undecodable(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-hostile", tmp_path / "id")
    sealer = ident.sealer()
    ingest = cloud.ingest()
    gw = RawGateway(cloud, ident)
    try:
        good1 = sealer.seal(1, _batch(100, 1_000))
        gw.publish(good1)
        wait_until(lambda: (1, AckStatus.DELIVERED) in gw.acks, 10, "ack of seq 1")

        # replay of an already stored sequence: acked delivered again, stored once
        gw.publish(good1)
        # the same seq sealed again (a gateway re-send after a crash gets a fresh nonce)
        gw.publish(sealer.seal(1, _batch(100, 1_000)))
        wait_until(lambda: gw.acks.count((1, AckStatus.DELIVERED)) == 3, 10, "three acks of 1")
        assert ingest.counts["duplicates"] == 2

        # tampered: one ciphertext bit flipped; and a header bit (seq) flipped
        env2 = bytearray(sealer.seal(2, _batch(100, 2_000)))
        env2[-20] ^= 0x01
        gw.publish(bytes(env2))
        env3 = bytearray(sealer.seal(3, _batch(100, 3_000)))
        env3[11] ^= 0x01  # inside the seq field: the header is associated data
        gw.publish(bytes(env3))
        # forged: sealed with a key the cloud never derived (attacker's own key)
        forged = Sealer(b"\x07" * 32, ident.key_id, ident.gateway_id).seal(4, _batch(10, 4_000))
        gw.publish(forged)
        # unknown key id, garbage, truncated
        gw.publish(Sealer(b"\x07" * 32, 999, ident.gateway_id).seal(5, _batch(10, 5_000)))
        gw.publish(b"not an envelope at all")
        gw.publish(good1[:20])
        # authentic but undecodable plaintext: rejected (the seq is authenticated)
        gw.publish(sealer.seal(6, b"\x01garbage that is not snappy"))
        # a good one after all the junk: the ingest is still alive
        gw.publish(sealer.seal(7, _batch(50, 7_000)))
        wait_until(lambda: (7, AckStatus.DELIVERED) in gw.acks, 10, "ack of seq 7")
        wait_until(lambda: (6, AckStatus.REJECTED) in gw.acks, 10, "rejection of seq 6")

        c = ingest.counts
        assert c["unauthentic"] == 3
        assert c["unknown_key_id"] == 1
        assert c["malformed"] == 2
        assert c["undecodable"] == 1
        # nothing acked for what could not be authenticated (2, 3, 4, 5, and seq 1's junk)
        acked = {s for s, _ in gw.acks}
        assert acked == {1, 6, 7}
        store = cloud.store()
        assert store.batch_seqs(ident.gateway_id) == [1, 7]
        assert store.count_readings(ident.gateway_id) == 150
        store.close()
    finally:
        gw.close()
        ingest.stop()


def test_unregistered_gateway_is_ignored_and_last_seen_recorded(
    cloud: Cloud, tmp_path: Path
) -> None:
    known = cloud.gateway("gw-known", tmp_path / "known")
    # a certificate from the right CA that the registry never recorded (no key to derive from)
    stranger = cloud.gateway("gw-stranger", tmp_path / "stranger")
    import sqlite3

    with sqlite3.connect(cloud.paths.registry_db) as db:
        db.execute("DELETE FROM certificates WHERE gateway_id = 'gw-stranger'")
    ingest = cloud.ingest()
    gw_known, gw_stranger = RawGateway(cloud, known), RawGateway(cloud, stranger)
    try:
        gw_stranger.publish(stranger.sealer().seal(1, _batch(5, 0)))
        gw_known.publish(known.sealer().seal(1, _batch(5, 0)))
        wait_until(lambda: ingest.counts["batches_stored"] == 1, 10, "stored")
        wait_until(lambda: ingest.counts["unknown_gateway"] == 1, 10, "stranger counted")
        assert gw_stranger.acks == []
        store = cloud.store()
        assert store.batch_seqs("gw-stranger") == []
        assert store.batch_seqs("gw-known") == [1]
        store.close()
        from edgegw_cloud.registry import Registry

        with Registry(cloud.paths.registry_db) as reg:
            seen = reg.gateway(known.gateway_id)
        assert seen is not None and seen.last_seen_ms is not None  # last seen was recorded
    finally:
        gw_known.close()
        gw_stranger.close()
        ingest.stop()


def test_sequence_beyond_2_63_cannot_roll_back_other_gateways_batches(
    cloud: Cloud, tmp_path: Path
) -> None:
    """Issue 9 #4: an authentic envelope with seq >= 2**63 (u64 on the wire, not storable in
    SQLite's signed INTEGER) used to fail the whole group commit, so the other gateways' batches
    in that transaction were acked `retry`. It is refused at the header now, never acked."""
    from edgegw.protocol.envelope import _seal_with

    a = cloud.gateway("gw-good", tmp_path / "a")
    b = cloud.gateway("gw-bigseq", tmp_path / "b")
    sa, sb = a.sealer(), b.sealer()
    ingest = cloud.ingest()
    ga, gb = RawGateway(cloud, a), RawGateway(cloud, b)
    try:
        # interleaved, so that on the old code most groups held both gateways' batches
        for i in range(1, 41):
            gb.publish(_seal_with(sb._aead, b.key_id, 2**63 + i, b.gateway_id,
                                  _batch(10, i * 100), 0))
            ga.publish(sa.seal(i, _batch(10, i * 100)))
        wait_until(lambda: len({s for s, _ in ga.acks}) == 40, 20, "acks for every batch of A")
        assert all(st is AckStatus.DELIVERED for _, st in ga.acks), ga.acks
        assert gb.acks == []  # an unauthenticatable (here: unstorable) seq is never acked
        assert ingest.counts["malformed"] == 40
        assert ingest.counts.get("store_errors", 0) == 0
        store = cloud.store()
        assert store.batch_seqs(a.gateway_id) == list(range(1, 41))
        assert store.batch_seqs(b.gateway_id) == []
        store.close()
    finally:
        ga.close()
        gb.close()
        ingest.stop()
