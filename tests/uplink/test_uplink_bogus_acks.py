"""Issue 9 #10: acks for sequences the gateway never sent (a confused or replaying ingest) must
not inflate ``batches_delivered``. Real gateway uplink, broker, ingest identity publishing."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgegw import pki
from edgegw.protocol import topics
from edgegw.protocol.ack import AckStatus, encode_acks

from .conftest import Cloud, GatewaySide, await_until


async def test_acks_of_unknown_sequences_do_not_count_as_delivered(
    cloud: Cloud, tmp_path: Path
) -> None:
    ident = cloud.gateway("gw-bogus", tmp_path / "id")
    ingest = cloud.ingest()
    gw = GatewaySide(ident, tmp_path / "state", cloud.url)
    gw.start()
    p = cloud.paths
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="~edgegw-ingest-forger",
                         protocol=mqtt.MQTTv5)
    forger.tls_set_context(pki.make_tls_context(p.ca_crt, p.ingest_crt, p.ingest_key))
    forger.connect("127.0.0.1", cloud.broker.service_port)
    forger.loop_start()
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        for _ in range(5):
            await gw.append(100)
        await gw.drained(30)
        await await_until(lambda: gw.uplink.stats()["batches_delivered"] == 5, 10, "5 acks")
        before = gw.uplink.stats()
        bogus = [(seq, AckStatus.DELIVERED) for seq in range(10**12, 10**12 + 1000)]
        forger.publish(topics.down_ack(ident.gateway_id), encode_acks(bogus), qos=1) \
            .wait_for_publish(10)
        await await_until(
            lambda: gw.uplink.stats()["acks_received"] > before["acks_received"], 10,
            "the bogus ack message received")
        st = gw.uplink.stats()
        assert st["batches_delivered"] == 5  # was 1005
        assert st["readings_delivered"] == 500
        assert st["acks_unknown_seq"] >= 1000
    finally:
        forger.disconnect()
        forger.loop_stop()
        await gw.close()
        ingest.stop()
