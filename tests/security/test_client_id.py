"""Issue 9 #3: client-id takeover. Any identity (another gateway, the shared bootstrap key, a
service) used to connect with a victim gateway's client id and kick it off the broker. Now the
gateway listener binds the client id to the certificate CN and the service listener accepts
only ids starting with "~", which no gateway id does. Real broker, real mTLS probes."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgegw import pki

from .conftest import Cloud, make_probe, wait_until


def _raw(cloud: Cloud, port: int, cert: object, key: object, cid: str) -> list[object]:
    """Connect with exactly ``cid`` (no automatic "~"); returns the CONNACK reason list."""
    got: list[object] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.tls_set_context(pki.make_tls_context(cloud.paths.ca_crt, cert, key))  # type: ignore[arg-type]
    c.on_connect = lambda _c, _u, _f, rc, _p: got.append(rc)
    c.reconnect_delay_set(5, 5)
    c.connect_async("127.0.0.1", port)
    c.loop_start()
    try:
        wait_until(lambda: bool(got), 10, f"CONNACK for {cid}")
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def test_no_other_identity_can_take_a_gateways_client_id(cloud: Cloud) -> None:
    p = cloud.paths
    a, b = cloud.gateway("gw-a"), cloud.gateway("gw-b")
    victim = cloud.gateway_probe(a)
    victim.wait_connected()
    ingest = cloud.ingest_probe()
    ingest.subscribe("gw/+/up/batch")

    attackers = [
        # (listener, identity, client id asked for)
        (cloud.port, (b.cert_path, b.key_path), "~gw-a"),  # becomes gw-b: B's own id
        (cloud.port, (p.bootstrap_crt, p.bootstrap_key), "~gw-a"),  # becomes "bootstrap"
        (cloud.service_port, (p.bootstrap_crt, p.bootstrap_key), "~gw-a"),  # ~gw-a != gw-a
        (cloud.service_port, (b.cert_path, b.key_path), "~gw-a"),
        (cloud.service_port, (p.ingest_crt, p.ingest_key), "~gw-a"),
    ]
    for port, ident, cid in attackers:
        probe = make_probe(port, p.ca_crt, ident[0], ident[1], cid)
        cloud.probes.append(probe)
        probe.wait_connected()
    # the exact id "gw-a" (no "~") is refused on both listeners, whoever asks
    for port in (cloud.port, cloud.service_port):
        for cert, key in ((b.cert_path, b.key_path), (p.bootstrap_crt, p.bootstrap_key)):
            rcs = _raw(cloud, port, cert, key, "gw-a")
            assert rcs[0].is_failure and rcs[0].value == 0x87, rcs  # type: ignore[attr-defined]

    # the victim was never kicked and still delivers
    assert victim.disconnects == []
    assert not victim.publish("gw/gw-a/up/batch", b"still here").is_failure
    wait_until(lambda: b"still here" in ingest.got("gw/gw-a/up/batch"), 10, "delivery")
    assert victim.disconnects == []
    assert "Client gw-a already connected" not in p.mosquitto_log.read_text(errors="replace")

    # sanity: the id IS the certificate's: A's own key connecting again replaces the session
    again = cloud.gateway_probe(a, "~whatever")
    again.wait_connected()
    wait_until(lambda: len(victim.disconnects) >= 1, 10, "old session of gw-a replaced")
    log = p.mosquitto_log.read_text(errors="replace")
    assert "Client gw-a already connected, closing old connection." in log
