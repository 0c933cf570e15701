"""Broker ACL: a gateway writes only gw/<id>/up/#, reads only gw/<id>/down/#; bootstrap and
enrollment identities are confined to their enrollment topics."""

from __future__ import annotations

from .conftest import Cloud, wait_until


def test_gateway_cannot_publish_into_another_gateways_topics(cloud: Cloud) -> None:
    ingest = cloud.ingest_probe()
    ingest.subscribe("gw/+/up/#")
    a = cloud.gateway_probe(cloud.gateway("gw-a"))
    cloud.gateway("gw-b")
    a.wait_connected()

    own = a.publish("gw/gw-a/up/batch", b"mine")
    foreign = a.publish("gw/gw-b/up/batch", b"forged")
    downlink = a.publish("gw/gw-a/down/ack", b"self-ack")  # only the cloud writes downlink
    assert not own.is_failure
    assert foreign.value == 0x87, foreign  # MQTT v5 "Not authorized" in the PUBACK
    assert downlink.value == 0x87, downlink

    # positive control first (a later message on the same path), then the absence
    assert not a.publish("gw/gw-a/up/status", b"online").is_failure
    wait_until(lambda: ingest.got("gw/gw-a/up/status") == [b"online"], 10, "own status")
    assert ingest.got("gw/gw-a/up/batch") == [b"mine"]
    assert ingest.got("gw/gw-b/up/batch") == []
    assert ingest.got("gw/gw-a/down/ack") == []
    assert a.connected_ok and a.client.is_connected()  # denied, not disconnected


def test_gateway_cannot_receive_another_gateways_downlink(cloud: Cloud) -> None:
    ingest = cloud.ingest_probe()
    a = cloud.gateway_probe(cloud.gateway("gw-a"))
    b = cloud.gateway_probe(cloud.gateway("gw-b"))
    a.wait_connected()
    b.wait_connected()
    spy = a.subscribe("gw/gw-b/down/#")  # Mosquitto may grant it; it must never deliver
    a.subscribe("gw/gw-a/down/#")
    b.subscribe("gw/gw-b/down/#")
    wildcard = a.subscribe("gw/+/down/#")

    assert not ingest.publish("gw/gw-b/down/ack", b"for-b").is_failure
    assert not ingest.publish("gw/gw-a/down/ack", b"for-a").is_failure
    wait_until(lambda: b.got("gw/gw-b/down/ack") == [b"for-b"], 10, "b's own downlink")
    # a has two matching subscriptions (own + wildcard): MQTT v5 may deliver one copy per match
    wait_until(lambda: b"for-a" in a.got("gw/gw-a/down/ack"), 10, "a's own downlink")
    # a's messages arrive in order: once its own is here, b's (published first) would be too
    assert a.got("gw/gw-b/down/ack") == [], (spy, wildcard)
    assert {(t, m) for t, m in a.messages} == {("gw/gw-a/down/ack", b"for-a")}


def test_gateway_cannot_read_uplink_of_others(cloud: Cloud) -> None:
    a = cloud.gateway_probe(cloud.gateway("gw-a"))
    b = cloud.gateway_probe(cloud.gateway("gw-b"))
    a.wait_connected()
    b.wait_connected()
    a.subscribe("gw/gw-b/up/#")
    a.subscribe("#")
    b.subscribe("gw/gw-b/up/#")  # b cannot read its own uplink either: write-only
    ingest = cloud.ingest_probe()
    ingest.subscribe("gw/gw-b/up/#")
    assert not b.publish("gw/gw-b/up/batch", b"secret").is_failure
    wait_until(lambda: ingest.got("gw/gw-b/up/batch") == [b"secret"], 10, "ingest delivery")
    assert not b.publish("gw/gw-b/up/status", b"sync").is_failure
    wait_until(lambda: ingest.got("gw/gw-b/up/status") == [b"sync"], 10, "ingest delivery 2")
    assert a.messages == [] and b.messages == []


def test_bootstrap_identity_is_confined_to_its_own_enrollment_topics(cloud: Cloud) -> None:
    p = cloud.paths
    victim = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "enroll-victim")
    thief = cloud.probe(p.bootstrap_crt, p.bootstrap_key, "enroll-thief")
    enroller = cloud.probe(p.enroll_crt, p.enroll_key, "edgegw-enroll-test")
    for c in (victim, thief, enroller):
        c.wait_connected()
    victim.subscribe("enroll/bootstrap/~enroll-victim/resp")
    thief.subscribe("enroll/bootstrap/~enroll-victim/resp")
    thief.subscribe("enroll/+/+/resp")
    thief.subscribe("enroll/bootstrap/~enroll-thief/resp")
    enroller.subscribe("enroll/+/+/req")

    # requests only under its own username and client id
    assert not thief.publish("enroll/bootstrap/~enroll-thief/req", b"{}").is_failure
    assert thief.publish("enroll/bootstrap/~enroll-victim/req", b"{}").value == 0x87
    assert thief.publish("enroll/gw-a/~enroll-thief/req", b"{}").value == 0x87
    assert thief.publish("gw/gw-a/up/batch", b"x").value == 0x87
    wait_until(lambda: enroller.got("enroll/bootstrap/~enroll-thief/req") == [b"{}"], 10, "req")
    assert enroller.got("enroll/bootstrap/~enroll-victim/req") == []

    # responses reach only the client they are addressed to
    assert not enroller.publish("enroll/bootstrap/~enroll-victim/resp", b"cert-v").is_failure
    assert not enroller.publish("enroll/bootstrap/~enroll-thief/resp", b"cert-t").is_failure
    wait_until(lambda: victim.got("enroll/bootstrap/~enroll-victim/resp") == [b"cert-v"], 10, "v")
    # two matching subscriptions (own + wildcard): one copy per match is allowed
    wait_until(lambda: b"cert-t" in thief.got("enroll/bootstrap/~enroll-thief/resp"), 10, "t")
    assert thief.got("enroll/bootstrap/~enroll-victim/resp") == []


def test_ingest_and_enroll_identities_have_only_their_rights(cloud: Cloud) -> None:
    p = cloud.paths
    ingest = cloud.ingest_probe()
    enroller = cloud.probe(p.enroll_crt, p.enroll_key, "edgegw-enroll-test")
    enroller.wait_connected()
    assert ingest.publish("gw/gw-a/up/batch", b"x").value == 0x87  # cannot forge uplink
    assert ingest.publish("enroll/bootstrap/c/resp", b"x").value == 0x87
    assert enroller.publish("gw/gw-a/down/ack", b"x").value == 0x87
    assert enroller.publish("enroll/bootstrap/c/req", b"x").value == 0x87
