"""The managed broker admits only clients with a certificate from our CA that is not revoked."""

from __future__ import annotations

from pathlib import Path

from edgegw import pki
from edgegw_cloud.revocation import revoke_gateway

from .conftest import Cloud, wait_until


def _refused(cloud: Cloud, cert: Path | None, key: Path | None, client_id: str) -> None:
    """Connect and assert the connection is closed without ever reaching CONNACK success.

    TLS 1.3 reports a refused client certificate only as EOF on the first read (FIELD-NOTES),
    so paho sees a disconnect (and retries); we wait for at least two such disconnects.
    """
    probe = cloud.probe(cert, key, client_id)
    wait_until(lambda: len(probe.disconnects) >= 2, 15, "the broker to drop the connection twice")
    assert not probe.connected_ok, f"{client_id} reached CONNACK success: {probe.connacks}"
    probe.close()


def test_client_with_our_certificate_is_admitted(cloud: Cloud) -> None:
    ingest = cloud.ingest_probe()
    assert not ingest.subscribe("$share/ingest/gw/+/up/batch")[0].is_failure
    gw = cloud.gateway("gw-ok")
    probe = cloud.gateway_probe(gw)
    probe.wait_connected()
    assert probe.publish("gw/gw-ok/up/batch", b"x").value == 0
    wait_until(lambda: ingest.got("gw/gw-ok/up/batch") == [b"x"], 10, "ingest to get the batch")


def test_client_without_certificate_is_refused(cloud: Cloud) -> None:
    _refused(cloud, None, None, "anonymous")
    assert "peer did not return a certificate" in cloud.broker.log_tail(50)


def test_certificate_from_another_ca_is_refused(cloud: Cloud, tmp_path: Path) -> None:
    other_key = pki.generate_ec_key()
    other = pki.Issuer(pki.make_ca(other_key, "rogue CA"), other_key)
    key = pki.generate_ec_key()
    cert = other.issue(key.public_key(), "gw-rogue", client=True)
    pki.save_private_key(tmp_path / "rogue.key", key)
    pki.write_public(tmp_path / "rogue.crt", pki.cert_pem(cert).encode())
    _refused(cloud, tmp_path / "rogue.crt", tmp_path / "rogue.key", "gw-rogue")
    assert "certificate verify failed" in cloud.broker.log_tail(50)


def test_revoked_gateway_is_refused_and_cut_off(cloud: Cloud) -> None:
    gw = cloud.gateway("gw-bad")
    live = cloud.gateway_probe(gw)
    live.wait_connected()
    assert not live.publish("gw/gw-bad/up/batch", b"before").is_failure

    revoke_gateway(cloud.paths, "gw-bad")
    cloud.broker.reload()  # what `serve` does when crl.pem changes

    # the live session: every topic denied at once (ACL reload applies to connected clients)
    wait_until(
        lambda: live.publish("gw/gw-bad/up/batch", b"after").value == 0x87,
        10,
        "the revoked session's publishes to be denied",
    )
    # a new connection: refused by the CRL during the TLS handshake
    _refused(cloud, gw.cert_path, gw.key_path, "gw-bad-again")
    # other gateways are unaffected
    other = cloud.gateway_probe(cloud.gateway("gw-good"))
    other.wait_connected()
    assert not other.publish("gw/gw-good/up/batch", b"x").is_failure


def test_expired_crl_would_lock_everyone_out_so_revocation_re_signs_it(cloud: Cloud) -> None:
    from cryptography import x509

    before = x509.load_pem_x509_crl(cloud.paths.crl.read_bytes())
    cloud.gateway("gw-x")
    revoke_gateway(cloud.paths, "gw-x")
    after = x509.load_pem_x509_crl(cloud.paths.crl.read_bytes())
    assert after.next_update_utc is not None and before.next_update_utc is not None
    assert after.next_update_utc >= before.next_update_utc
    assert len(list(after)) == 1 and len(list(before)) == 0
    assert after.is_signature_valid(pki.load_certificate(cloud.paths.ca_crt).public_key())  # type: ignore[arg-type]
