"""Refusals by the broker surface as clear, counted errors and never cost data:
a client certificate from a foreign CA (TLS refusal) and a revoked gateway whose live
connection gets PUBACK 0x87 (not authorized) after the ACL reload."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgegw import pki
from edgegw.uplink.session import TlsIdentity, Uplink, UplinkConfigError
from edgegw_cloud.registry import Registry

from .conftest import Cloud, GatewaySide, await_until


async def test_foreign_ca_certificate_is_an_authentication_error(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = cloud.gateway("gw-rogue", tmp_path / "id")
    # replace the gateway's certificate with one for the same key from a CA the broker
    # does not trust (the broker's own certificate still verifies against ca.crt)
    rogue_key = pki.generate_ec_key()
    rogue = pki.Issuer(pki.make_ca(rogue_key, "rogue CA"), rogue_key)
    key = pki.load_private_key(ident.dir / "gateway.key")
    cert = rogue.issue(key.public_key(), "gw-rogue", client=True)
    pki.write_public(ident.dir / "gateway.crt", pki.cert_pem(cert).encode())

    gw = GatewaySide(ident, tmp_path / "state", cloud.url)
    for _ in range(5):
        await gw.append(10)
    caplog.set_level(logging.DEBUG, logger="edgegw.uplink")
    gw.start()
    try:
        await await_until(lambda: gw.uplink.stats()["auth_failures"] >= 3, 20,
                          "repeated authentication failures")
        st = gw.uplink.stats()
        assert st["connects"] == 0 and st["published"] == 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, "a health flip is logged once, not per attempt"
        assert "authentication failed for gateway gw-rogue" in errors[0].getMessage()
        assert await gw.pending() == 5  # nothing lost
    finally:
        await gw.close()


async def test_revoked_gateway_gets_puback_0x87_and_keeps_its_data(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = cloud.gateway("gw-revoked", tmp_path / "id")
    ingest = cloud.ingest()
    gw = GatewaySide(ident, tmp_path / "state", cloud.url, backoff_min=0.2, backoff_max=0.5)
    gw.start()
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        await gw.append(10)
        await gw.drained(15)
        with Registry(cloud.paths.registry_db) as reg:
            reg.revoke("gw-revoked")
        cloud.broker.reload()  # ACL "deny #" for the gateway applies to its live connection
        for _ in range(6):
            await gw.append(10)
        await await_until(lambda: gw.uplink.stats()["puback_refused"] >= 6, 20,
                          "PUBACK refusals counted")
        st = gw.uplink.stats()
        assert st["puback_reasons"].get("0x87", 0) >= 6  # type: ignore[union-attr]
        assert st["batches_delivered"] == 1
        assert await gw.pending() == 6  # refused batches stay in the outbox (RETRY)
        assert any("PUBACK 0x87" in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog.records)
    finally:
        await gw.close()
        ingest.stop()


def test_configuration_errors_are_actionable(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-cfg", tmp_path / "id")
    with pytest.raises(UplinkConfigError, match="use mqtts://HOST:PORT"):
        Uplink("gw-cfg", ident.dir, "mqtt://127.0.0.1:1883", None)  # type: ignore[arg-type]
    with pytest.raises(UplinkConfigError, match="certificate CN is 'gw-cfg'"):
        Uplink("gw-other", ident.dir, cloud.url, None)  # type: ignore[arg-type]
    with pytest.raises(UplinkConfigError, match="gateway key file not found"):
        Uplink("gw-cfg", TlsIdentity(ident.dir / "gateway.crt", tmp_path / "nope.key",
                                     ident.dir / "ca.crt"), cloud.url, None)  # type: ignore[arg-type]
