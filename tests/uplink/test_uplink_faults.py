"""Fault tests over the real broker + ingest: each ends with produced == stored, no duplicates.

- the broker SIGKILLed for 10 s mid-stream, then restarted;
- the TCP path cut repeatedly by a proxy between gateway and broker;
- the ingest down while the broker is up (nothing is acked, the gateway re-sends), then back.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from .conftest import Cloud, CutProxy, GatewaySide, assert_exactly_once, await_until


async def _produce(gw: GatewaySide, batches: int, readings: int, pace: float) -> None:
    for _ in range(batches):
        await gw.append(readings)
        await asyncio.sleep(pace)  # the data rate of the producer, not synchronisation


@pytest.mark.parametrize(
    "store_kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
async def test_broker_killed_for_10s_mid_stream(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-brokerkill", tmp_path / "id")
    ingest = cloud.ingest()
    gw = GatewaySide(ident, tmp_path / "state", cloud.url)
    gw.start()
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        producer = asyncio.ensure_future(_produce(gw, 300, 100, 0.05))  # ~15 s of data
        await await_until(lambda: gw.uplink.stats()["batches_delivered"] >= 40, 20,
                          "some batches delivered before the kill")
        cloud.broker.kill()
        await await_until(lambda: not gw.uplink.connected, 10, "uplink notices the loss")
        await asyncio.sleep(10)  # the outage itself (the fault's duration, not a sync point)
        assert not producer.done(), "producer should still be appending during the outage"
        cloud.broker.start()
        await producer
        await gw.drained(60)
        assert_exactly_once(cloud, gw)
        st = gw.uplink.stats()
        assert st["connects"] >= 2 and st["disconnects"] >= 1
    finally:
        await gw.close()
        ingest.stop()


@pytest.mark.parametrize(
    "store_kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
async def test_connection_cut_repeatedly_by_proxy(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-cuts", tmp_path / "id")
    ingest = cloud.ingest()
    proxy = await CutProxy(cloud.broker.port).start()
    gw = GatewaySide(ident, tmp_path / "state", proxy.url)
    gw.start()
    rng = random.Random(7)
    try:
        producer = asyncio.ensure_future(_produce(gw, 200, 100, 0.02))
        for _ in range(10):
            connects = gw.uplink.stats()["connects"]
            await await_until(lambda c=connects: gw.uplink.stats()["connects"] > c, 20,
                              "uplink reconnected through the proxy")
            await asyncio.sleep(rng.uniform(0.1, 0.6))  # cut at a random point mid-upload
            proxy.cut()
        await producer
        await gw.drained(60)
        assert_exactly_once(cloud, gw)
        assert proxy.cuts == 10
        assert gw.uplink.stats()["connects"] >= 10  # one reconnect after every cut
    finally:
        await gw.close()
        await proxy.close()
        ingest.stop()


async def test_ingest_down_then_back(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-ingestdown", tmp_path / "id")
    gw = GatewaySide(ident, tmp_path / "state", cloud.url, ack_timeout=1.0)
    gw.start()
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        for _ in range(40):
            await gw.append(100)
        # broker up, no ingest: batches are PUBACKed but never acked end-to-end
        await await_until(lambda: gw.uplink.stats()["resend_timeouts"] >= 8, 15,
                          "re-sends after the ack timeout")
        assert gw.uplink.stats()["batches_delivered"] == 0
        assert await gw.pending() == 40  # nothing deleted without an ingest ack
        ingest = cloud.ingest()
        try:
            for _ in range(20):
                await gw.append(100)
            await gw.drained(60)
            assert_exactly_once(cloud, gw)
        finally:
            ingest.stop()
    finally:
        await gw.close()


async def test_handed_off_batches_exactly_once_through_cuts(cloud: Cloud, tmp_path: Path) -> None:
    """Batches handed to the uplink as they are stored (``Uplink.offer``, the daemon's path)
    are sent without reading the outbox back, and still exactly once through connection cuts
    (after a reconnect the outbox is read again); the outbox is read far less often than
    batches are stored."""
    ident = cloud.gateway("gw-handoff", tmp_path / "id")
    ingest = cloud.ingest()
    proxy = await CutProxy(cloud.broker.port).start()
    gw = GatewaySide(ident, tmp_path / "state", proxy.url, hand_off=True)
    scans = {"n": 0}
    scan = gw.io.next_batches

    async def counting(limit: int, exclude: object) -> list[object]:
        scans["n"] += 1
        return await scan(limit, exclude)  # type: ignore[arg-type]

    gw.io.next_batches = counting  # type: ignore[method-assign]
    gw.start()
    rng = random.Random(11)
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        await _produce(gw, 60, 50, 0.02)  # paced: every batch finds the window open
        await await_until(lambda: gw.uplink.stats()["batches_delivered"] >= 60, 30,
                          "the first batches delivered")
        assert scans["n"] < 30, f"{scans['n']} outbox scans for 60 handed-off batches"
        producer = asyncio.ensure_future(_produce(gw, 100, 50, 0.02))
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.1, 0.6))  # cut at a random point mid-upload
            connects = gw.uplink.stats()["connects"]
            proxy.cut()
            await await_until(lambda c=connects: gw.uplink.stats()["connects"] > c, 20,
                              "uplink reconnected through the proxy")
        await producer
        await gw.drained(60)
        assert_exactly_once(cloud, gw)
    finally:
        await gw.close()
        await proxy.close()
        ingest.stop()
