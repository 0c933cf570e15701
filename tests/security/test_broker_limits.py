"""The managed Mosquitto's limits against the identities an attacker is most likely to hold (the
bootstrap key sits on every unenrolled device; a gateway key can be stolen from one box):
issue 9 findings 2 and the TLS part of 10. Real broker, real mTLS, paho v5 probes."""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt

from edgegw_cloud.broker import MAX_PACKET_SIZE

from .conftest import Cloud, wait_until


def test_bootstrap_cannot_publish_into_the_uplink_the_ingest_reads(cloud: Cloud) -> None:
    p = cloud.paths
    boot = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "enroll-attacker")
    boot.wait_connected()
    ingest = cloud.ingest_probe()
    ingest.subscribe("gw/+/up/#")
    # gw/%u/up/... with %u = bootstrap matched the gateway pattern before the fix
    for topic in ("gw/bootstrap/up/batch", "gw/bootstrap/up/status", "gw/bootstrap/up/x"):
        assert boot.publish(topic, b"junk").value == 0x87, topic
    # a gateway's own topics still work, and the ingest got nothing from bootstrap
    gw = cloud.gateway("gw-lim")
    g = cloud.gateway_probe(gw)
    g.wait_connected()
    assert not g.publish("gw/gw-lim/up/batch", b"real").is_failure
    wait_until(lambda: ingest.got("gw/gw-lim/up/batch") == [b"real"], 10, "gateway delivery")
    assert [t for t, _ in ingest.messages if t.startswith("gw/bootstrap/")] == []


def test_oversized_publish_is_refused(cloud: Cloud) -> None:
    p = cloud.paths
    boot = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "enroll-big")
    boot.wait_connected()
    # MQTT v5: the broker announces its maximum in CONNACK and paho refuses locally; send the
    # packet anyway by lifting paho's own check so the broker has to enforce it
    client = boot.client
    client._max_packet_size = 0
    info = client.publish("enroll/bootstrap/~enroll-big/req", b"\0" * (MAX_PACKET_SIZE + 1024),
                          qos=1)
    # the broker drops the connection (v5: DISCONNECT 0x95 packet too large)
    wait_until(lambda: len(boot.disconnects) >= 1, 20, "disconnect after an oversized packet")
    assert info.mid not in boot.pubacks or boot.pubacks[info.mid].is_failure
    log = cloud.paths.mosquitto_log.read_text(errors="replace")
    assert "enroll-big" in log


def test_retained_messages_are_refused(cloud: Cloud) -> None:
    p = cloud.paths
    boot = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "enroll-retain")
    boot.wait_connected()
    info = boot.client.publish("enroll/bootstrap/~enroll-retain/req", b"x" * 1000, qos=1,
                               retain=True)
    wait_until(lambda: len(boot.disconnects) >= 1 or info.mid in boot.pubacks, 10,
               "retained publish answered")
    # retain_available false: Mosquitto disconnects the client (v5: 0x9A retain not supported)
    assert boot.disconnects, "a retained publish was accepted"
    assert boot.disconnects[0].value == 0x9A
    # and nothing was retained: a fresh subscriber gets no stored message
    enroller = cloud.probe(p.enroll_crt, p.enroll_key, "edgegw-enroll-ret")
    enroller.wait_connected()
    enroller.subscribe("enroll/+/+/req")
    marker = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "marker")
    marker.wait_connected()
    assert not marker.publish("enroll/bootstrap/~marker/req", b"marker").is_failure
    wait_until(lambda: any(t.endswith("/req") for t, _ in enroller.messages), 10, "marker")
    assert [t for t, _ in enroller.messages] == ["enroll/bootstrap/~marker/req"]


def _handshake(port: int, cloud: Cloud, ciphers: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cloud.paths.ca_crt)
    ctx.load_cert_chain(cloud.paths.bootstrap_crt, cloud.paths.bootstrap_key)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        got = tls.cipher()
        assert got is not None
        return got[0]


def test_tls12_offers_aead_suites_only(cloud: Cloud) -> None:
    assert "GCM" in _handshake(cloud.port, cloud, "ECDHE-ECDSA-AES128-GCM-SHA256")
    for cbc in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA"):
        try:
            name = _handshake(cloud.port, cloud, cbc)
        except (ssl.SSLError, OSError):
            continue
        raise AssertionError(f"broker accepted the CBC suite {name}")
    # our own client contexts never offer CBC either
    from edgegw import pki

    ctx = pki.make_tls_context(cloud.paths.ca_crt, cloud.paths.bootstrap_crt,
                               cloud.paths.bootstrap_key)
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(("GCM" in n or "CHACHA20" in n) for n in names), names


def test_mqtt_v5_connack_announces_the_limits(cloud: Cloud) -> None:
    p = cloud.paths
    props: list[object] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="~enroll-props",
                    protocol=mqtt.MQTTv5)
    from edgegw import pki

    c.tls_set_context(pki.make_tls_context(p.ca_crt, p.bootstrap_crt, p.bootstrap_key))
    c.on_connect = lambda _c, _u, _f, _rc, pr: props.append(pr)
    c.connect("127.0.0.1", cloud.service_port)
    c.loop_start()
    try:
        wait_until(lambda: bool(props), 10, "CONNACK")
        pr = props[0]
        assert getattr(pr, "MaximumPacketSize") == MAX_PACKET_SIZE  # noqa: B009
        assert getattr(pr, "RetainAvailable") == 0  # noqa: B009
    finally:
        c.disconnect()
        c.loop_stop()
