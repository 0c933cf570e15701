"""TLS session resumption on reconnect (issue 15): real Mosquitto with our mTLS config, the
real ingest, the real Outbox + Uplink, a TCP proxy that cuts the connection.

A reconnect resumes the TLS session (no certificates on the wire again), the resumed session
keeps the certificate's identity (the broker's ACL, keyed on the certificate CN, lets the
gateway publish under its own topic and the ingest stores and acks it), and a revocation
(CRL + broker reload) ends resumption: the next connection is a full handshake, which the CRL
refuses. The bytes saved per reconnect are measured in bench/bench_weaklink.py (--scenario tls).
"""

from __future__ import annotations

from pathlib import Path

from edgegw_cloud.revocation import revoke_gateway

from .conftest import Cloud, CutProxy, GatewaySide, await_until


def _tls(gw: GatewaySide) -> tuple[int, int]:
    st = gw.uplink.stats()
    return int(st["tls_full_handshakes"]), int(st["tls_resumed_handshakes"])  # type: ignore[call-overload]


async def test_reconnect_resumes_tls_and_revocation_forces_a_full_handshake(
    cloud: Cloud, tmp_path: Path
) -> None:
    ident = cloud.gateway("gw-resume", tmp_path / "id")
    ingest = cloud.ingest()
    proxy = await CutProxy(cloud.broker.port).start()
    gw = GatewaySide(ident, tmp_path / "state", proxy.url, backoff_min=0.05, backoff_max=0.2)
    gw.start()
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        await gw.append(10)
        await gw.drained(15)
        assert _tls(gw) == (1, 0)
        for n in (2, 3):
            proxy.cut()
            await await_until(lambda n=n: gw.uplink.connected  # type: ignore[misc]
                              and gw.uplink.stats()["connects"] == n, 15, f"connection {n}")
            await gw.append(10)
            await gw.drained(15)  # delivered over the resumed session: ACL + ingest accept it
        assert _tls(gw) == (1, 2)

        revoke_gateway(cloud.paths, "gw-resume")  # registry + CRL
        cloud.broker.reload()  # new CRL; Mosquitto's new TLS context refuses old tickets
        proxy.cut()
        await await_until(lambda: int(gw.uplink.stats()["auth_failures"]) >= 1, 15,  # type: ignore[call-overload]
                          "the revoked certificate refused")
        full, resumed = _tls(gw)
        assert resumed == 2 and full >= 2  # no resumption after the reload
        assert gw.uplink.stats()["connects"] == 3
        await gw.append(10)
        assert await gw.pending() == 1  # kept in the outbox, not delivered
    finally:
        await gw.close()
        await proxy.close()
        ingest.stop()
    store = cloud.store()
    try:
        assert store.count_readings("gw-resume") == 30
    finally:
        store.close()
