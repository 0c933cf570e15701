"""CoAP driver against two independent real clients: aiocoap (OSCORE) and libcoap's coap-client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import cbor2
from coap_harness import (
    AiocoapClient,
    Recorder,
    free_udp_port,
    libcoap_post,
    oscore_device,
    running_driver,
    write_client_context,
)

from edgegw.model import Lane, Quality, Sample

CHANGED, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND = "2.04", "4.00", "4.01", "4.03", "4.04"
UNSUPPORTED, TOO_MANY, TOO_LARGE = "4.15", "4.29", "4.13"


def setup(tmp_path: Path, *devices: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    port = free_udp_port()
    return port, {"listen": f"127.0.0.1:{port}", "devices": list(devices), "max_payload": 2048}


def by_device(samples: list[Sample]) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {}
    for s in samples:
        assert s.quality is Quality.GOOD
        out.setdefault(s.device, []).append((s.metric, s.value))
    return out


async def test_oscore_clients_samples_equal_sent_and_refusals(tmp_path: Path) -> None:
    a, b = oscore_device("therm-a", 1), oscore_device("therm-b", 2)
    port, opts = setup(tmp_path, a, b)
    rec = Recorder()
    ts = 1_790_000_000_123
    async with running_driver(opts, tmp_path / "state", rec) as driver:
        dir_a = write_client_context(tmp_path / "client-a", a)
        dir_b = write_client_context(tmp_path / "client-b", b)
        async with (
            AiocoapClient.connect(port, dir_a) as ca,
            AiocoapClient.connect(port, dir_b) as cb,
            AiocoapClient.connect(port) as anon,
        ):
            sent = [
                (ca, "/d/therm-a", json.dumps({"temp": 21.5, "ok": True}).encode(), 50),
                (ca, "/d/therm-a", json.dumps({"ts": ts, "values": {"temp": 21.7}}).encode(), None),
                (cb, "/d/therm-b", cbor2.dumps([{"ts": ts, "values": {"rh": 40, "raw": b"\x01"}},
                                                 {"ts": ts + 1000, "values": {"rh": 41}}]), 60),
            ]
            for client, path, payload, cf in sent:
                assert (await client.post(path, payload, cf)).code.dotted == CHANGED

            # Unauthenticated: refused, for known and unknown devices alike (no id oracle).
            assert (await anon.post("/d/therm-a", b'{"x": 1}')).code.dotted == UNAUTHORIZED
            assert (await anon.post("/d/nobody", b'{"x": 1}')).code.dotted == UNAUTHORIZED
            # Authenticated, but another device's resource / an unknown device.
            assert (await ca.post("/d/therm-b", b'{"x": 1}')).code.dotted == FORBIDDEN
            assert (await ca.post("/d/nobody", b'{"x": 1}')).code.dotted == NOT_FOUND
            # Content format, payload shape, size.
            assert (await ca.post("/d/therm-a", b"temp=1", 0)).code.dotted == UNSUPPORTED
            bad = await ca.post("/d/therm-a", b'{"ts": 5, "values": {"t": 1}}')
            assert bad.code.dotted == BAD_REQUEST and b"plausible" in bad.payload
            assert (await ca.post("/d/therm-a", b"[]")).code.dotted == BAD_REQUEST
            assert (await ca.post("/d/therm-a", b"\xa1", 60)).code.dotted == BAD_REQUEST
            big = json.dumps({f"m{i}": i for i in range(400)}).encode()
            assert (await ca.post("/d/therm-a", big)).code.dotted == TOO_LARGE

    got = by_device(rec.samples)
    assert got["therm-a"] == [("temp", 21.5), ("ok", True), ("temp", 21.7)]
    assert got["therm-b"] == [("rh", 40), ("raw", b"\x01"), ("rh", 41)]
    assert [s.ts_ms for s in rec.samples if s.device == "therm-b"] == [ts, ts, ts + 1000]
    assert [s.ts_ms for s in rec.samples if s.metric == "temp"][1] == ts
    assert rec.calls == [(Lane.TELEMETRY, True)] * 3  # every emit durable
    counters = dict(driver.ctx.counters)
    assert counters == {
        "accepted": 3, "samples": 6, "unauthenticated": 2, "forbidden": 1, "unknown_device": 1,
        "unsupported_format": 1, "malformed": 3, "too_large": 1,
    }


async def test_rate_limit_per_device(tmp_path: Path) -> None:
    a = oscore_device("a", 1, rate=0.01, burst=3)
    b = oscore_device("b", 2)
    port, opts = setup(tmp_path, a, b)
    rec = Recorder()
    async with (
        running_driver(opts, tmp_path / "state", rec) as driver,
        AiocoapClient.connect(port, write_client_context(tmp_path / "ca", a)) as ca,
        AiocoapClient.connect(port, write_client_context(tmp_path / "cb", b)) as cb,
    ):
        codes = [(await ca.post("/d/a", b'{"n": %d}' % i)).code.dotted for i in range(5)]
        limited = await ca.post("/d/a", b'{"n": 9}')
        other = await cb.post("/d/b", b'{"n": 0}')  # b has its own bucket
    assert codes == [CHANGED] * 3 + [TOO_MANY] * 2
    assert limited.code.dotted == TOO_MANY and limited.max_age is not None and limited.max_age >= 1
    assert other.code.dotted == CHANGED
    assert [s.value for s in rec.samples if s.device == "a"] == [0, 1, 2]
    assert driver.ctx.counters["rate_limited"] == 3


async def test_changed_only_after_durable_emit_returns(tmp_path: Path) -> None:
    a = oscore_device("a", 1)
    port, opts = setup(tmp_path, a)
    rec = Recorder()
    rec.gate.clear()  # the outbox commit is "in flight" until the gate opens
    async with (
        running_driver(opts, tmp_path / "state", rec) as driver,
        AiocoapClient.connect(port, write_client_context(tmp_path / "ca", a)) as ca,
    ):
        post = asyncio.create_task(ca.post("/d/a", b'{"t": 1}'))
        await asyncio.wait_for(rec.entered.wait(), 10)
        # emit has been called and has not returned: no response may exist yet.
        done, _ = await asyncio.wait({post}, timeout=0.5)
        assert not done
        rec.gate.set()
        assert (await post).code.dotted == CHANGED
        assert rec.samples == [Sample("a", "t", rec.samples[0].ts_ms, 1)]
        # A failing emit (outbox down) is a 5.03 with Max-Age, never a 2.04.
        rec.fail = RuntimeError("outbox closed")
        failed = await ca.post("/d/a", b'{"t": 2}')
    assert failed.code.dotted == "5.03" and failed.max_age == 5
    assert driver.ctx.counters["emit_failed"] == 1
    assert len(rec.samples) == 1


async def test_libcoap_client(tmp_path: Path) -> None:
    """libcoap's coap-client as an independent client.

    Debian's libcoap3-bin 4.3.1 is built without OSCORE (no -E option), so it can only reach
    OSCORE devices to be refused (4.01); the full path is exercised on a device configured
    ``insecure_no_auth`` (what an isolated test network would use).
    """
    secured = oscore_device("secured", 1)
    port, opts = setup(tmp_path, secured, {"id": "open", "insecure_no_auth": True, "burst": 5,
                                           "rate": 0.01})
    rec = Recorder()
    ts = 1_790_000_000_000
    async with running_driver(opts, tmp_path / "state", rec) as driver:
        replies = [
            await libcoap_post(port, "/d/secured", b'{"t": 1}'),
            await libcoap_post(port, "/d/open", b'{"t": 20.25, "state": "run"}'),
            await libcoap_post(port, "/d/open", cbor2.dumps({"ts": ts, "values": {"t": 19}}), 60),
            await libcoap_post(port, "/d/open", b'[{"ts": %d, "values": {"n": -3}}]' % ts, None),
            await libcoap_post(port, "/d/open", b'{"t": NaN}'),
            await libcoap_post(port, "/d/open", b"<t>1</t>", 41),  # application/xml
            await libcoap_post(port, "/d/nobody", b'{"t": 1}'),
            await libcoap_post(port, "/d/open", b'{"t": 3}'),
            await libcoap_post(port, "/d/open", b'{"t": 4}'),  # 6th token-taking request, burst 5
        ]
    assert [r.code.dotted for r in replies] == [
        UNAUTHORIZED, CHANGED, CHANGED, CHANGED, BAD_REQUEST, UNSUPPORTED, UNAUTHORIZED,
        CHANGED, TOO_MANY,
    ]
    assert by_device(rec.samples) == {
        "open": [("t", 20.25), ("state", "run"), ("t", 19), ("n", -3), ("t", 3)]
    }
    assert dict(driver.ctx.counters) == {
        "unauthenticated": 2, "accepted": 4, "samples": 5, "malformed": 1,
        "unsupported_format": 1, "rate_limited": 1,
    }


async def test_oscore_state_survives_driver_restart(tmp_path: Path) -> None:
    """Sequence numbers / replay windows persist in the state dir across close + open."""
    a = oscore_device("a", 1)
    port, opts = setup(tmp_path, a)
    client_dir = write_client_context(tmp_path / "ca", a)
    rec = Recorder()
    for n in range(2):
        async with (
            running_driver(opts, tmp_path / "state", rec),
            AiocoapClient.connect(port, client_dir) as ca,
        ):
            assert (await ca.post("/d/a", b'{"n": %d}' % n)).code.dotted == CHANGED
    assert [s.value for s in rec.samples] == [0, 1]
    seq = json.loads((tmp_path / "state" / "oscore" / "a" / "sequence.json").read_text())
    assert seq["received"] != "unknown"  # cleanly persisted on close
