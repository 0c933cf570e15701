"""Finding 11 (last part): after a cloud outage longer than the backoff cap, gateways are back
promptly and spread out, not up to ``backoff_max`` after the broker (62 s before the fix).

While nothing accepts TCP at the broker, each uplink probes it with a bare TCP connect every
``probe_interval`` x U(1, 2) and starts its real connect U(0, ``reconnect_spread``) after a
probe succeeds: the design bound is 2 x probe_interval + reconnect_spread after the broker
listens again (docs/delivery.md "Reconnecting"). A gateway the broker refuses after TCP (a
certificate from a foreign CA) stays on the plain backoff and does not probe.

Real peers: the managed Mosquitto (mTLS + ACL) killed and restarted on the same port, the real
ingest, five gateways' outbox + uplink at the production reconnect defaults (backoff 0.5-10 s,
stable_after 20 s, probe 1 s, spread 1 s). The bound is asserted on the gateways' own connect
timestamps (loop time of the attempt that connected), with a 0.5 s allowance for a loaded
event loop; it is a design figure, not a speed measurement.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from edgegw import pki

from .conftest import Cloud, GatewaySide, assert_exactly_once, await_until

DEFAULTS: dict[str, object] = {"backoff_min": 0.5, "backoff_max": 10.0, "stable_after": 20.0,
                               "probe_interval": 1.0, "reconnect_spread": 1.0}
BOUND = 2 * 1.0 + 1.0  # 2 x probe_interval + reconnect_spread
FLEET = 5


def _foreign_ca(gw: GatewaySide) -> None:
    """Give the gateway a certificate for its key from a CA the broker does not trust."""
    rogue_key = pki.generate_ec_key()
    rogue = pki.Issuer(pki.make_ca(rogue_key, "rogue CA"), rogue_key)
    key = pki.load_private_key(gw.ident.dir / "gateway.key")
    cert = rogue.issue(key.public_key(), gw.ident.gateway_id, client=True)
    pki.write_public(gw.ident.dir / "gateway.crt", pki.cert_pem(cert).encode())


async def test_fleet_returns_promptly_and_spread_after_an_outage(cloud: Cloud,
                                                                 tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    ingest = cloud.ingest()
    fleet = [GatewaySide(cloud.gateway(f"gw-back{i}", tmp_path / f"id{i}"), tmp_path / f"st{i}",
                         cloud.url, rng=random.Random(i), **DEFAULTS) for i in range(FLEET)]
    refused = GatewaySide(cloud.gateway("gw-refused", tmp_path / "idr"), tmp_path / "str",
                          cloud.url, rng=random.Random(99), **DEFAULTS)
    _foreign_ca(refused)
    for gw in [*fleet, refused]:
        gw.start()
    try:
        await await_until(lambda: all(g.uplink.connected for g in fleet), 20, "fleet connected")
        for gw in fleet:
            await gw.append(10)
        cloud.broker.kill()
        await await_until(lambda: not any(g.uplink.connected for g in fleet), 10,
                          "the fleet notices the outage")
        # the outage itself (the fault's duration): longer than the backoff cap
        await asyncio.sleep(float(DEFAULTS["backoff_max"]) + 1.5)  # type: ignore[arg-type]
        for gw in fleet:
            await gw.append(10)  # recorded during the outage
            assert gw.uplink.stats()["probes"] >= 1, "no TCP probe while the broker was down"
        refused_before = refused.uplink.stats()["auth_failures"]
        await loop.run_in_executor(None, cloud.broker.start)  # same port
        back = loop.time()  # the broker listens at the latest now
        await await_until(lambda: all(g.uplink.connected for g in fleet), BOUND + 20,
                          "fleet reconnected")
        started = sorted(g.uplink.last_attempt_at for g in fleet)
        late = [round(t - back, 2) for t in started if t - back > BOUND + 0.5]
        assert not late, f"connect attempts later than the design bound {BOUND} s: {late}"
        assert sum(g.uplink.stats()["probe_hits"] for g in fleet) >= 1
        assert started[-1] - started[0] >= 0.3, f"reconnects not spread: {started}"
        for gw in fleet:
            await gw.drained(30)
            assert_exactly_once(cloud, gw)

        # refused after TCP (TLS): back on the plain backoff, no more probes
        await await_until(lambda: refused.uplink.stats()["auth_failures"] > refused_before, 20,
                          "the refused gateway tried the restarted broker")
        probes = refused.uplink.stats()["probes"]
        refused_at = loop.time()
        # observe a span longer than 2 probe periods (absence of probes, not a sync point)
        await asyncio.sleep(max(0.0, refused_at + 2.5 - loop.time()))
        st = refused.uplink.stats()
        assert st["probes"] == probes and st["connects"] == 0, st
    finally:
        for gw in [*fleet, refused]:
            await gw.close()
        ingest.stop()
