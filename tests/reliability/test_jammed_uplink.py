"""Finding 1 (jammed uplink): a gateway run standalone and then enrolled, in the README's order,
delivers everything it stored before enrollment; a batch the cloud keeps skipping is given up
with a gap record instead of jamming the window; a stuck uplink says why in a WARNING.

Real peers: `edgegw-cloud serve` (managed Mosquitto with mTLS + ACL, ingest), `edgegw enroll`,
`edgegw run` polling a pymodbus server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from modbus.simproc import SimServer
from runtime.helpers import outbox_seqs, poll_until, start_daemon, stop_daemon, write_config
from uplink.conftest import Cloud, GatewaySide, await_until, cloud, cloud_dir

from edgegw.model import Lane
from edgegw.protocol.codec import decode_batch, encode_batch
from edgegw.protocol.envelope import parse_header
from edgegw.protocol.keys import Sealer
from edgegw.runtime.outbox_reader import read_outbox

from .cloudproc import CloudServe, data_root, edgegw_cli

__all__ = ["cloud", "cloud_dir", "data_root"]

GW = "rel-gw1"


def _config(state: Path, port: int, broker: str, uplink: bool) -> dict[str, Any]:
    return {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "info"},
        "metrics": {"enabled": False},
        "batch": {"max_age": "100ms"},
        "uplink": {"enabled": uplink, "broker": broker, "ack_timeout": "3s",
                   "backoff_max": "2s"},
        "devices": [{
            "id": "unit1", "driver": "modbus", "poll": "100ms", "timeout": "1s",
            "options": {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
                        "points": [{"name": "h_int16_0", "kind": "holding", "address": 0,
                                    "type": "int16"}]},
        }],
    }


@pytest.mark.slow
def test_standalone_then_enrolled_delivers_everything(tmp_path: Path, data_root: Path) -> None:
    server = SimServer("--tcp", "0", "--units", "1", log_dir=tmp_path)
    cloud = CloudServe(data_root / "cloud", tmp_path / "serve.log")
    state = tmp_path / "state"
    cfg = tmp_path / "gateway.yaml"
    try:
        # 1. standalone: the outbox is sealed with the local key (key id 0)
        write_config(cfg, _config(state, server.port, cloud.url, uplink=False))
        r = edgegw_cli("run", "-c", str(cfg), "--for", "2")
        assert r.returncode == 0, r.stderr
        before = outbox_seqs(state / "outbox.db")
        assert len(before) >= 5
        standalone_readings = len(read_outbox(state)[0])
        assert standalone_readings >= 5
        # 2. the README's order: serve, token create, enroll, enable the uplink, run
        cloud.start()
        token = cloud.token(GW)
        write_config(cfg, _config(state, server.port, cloud.url, uplink=True))
        r = edgegw_cli("enroll", "-c", str(cfg), "--token", token, "--bootstrap-dir",
                       str(cloud.bootstrap_dir(tmp_path / "boot")))
        assert r.returncode == 0, r.stderr
        log = tmp_path / "daemon.log"
        proc = start_daemon(cfg, log)
        try:
            # every standalone batch reaches the cloud store
            poll_until(lambda: set(before) <= set(cloud.stored(GW)["seqs"]), 60,
                       f"the {len(before)} standalone batches at the cloud; log:\n"
                       + log.read_text(errors="replace")[-3000:])
        finally:
            assert stop_daemon(proc) == 0
        text = log.read_text(errors="replace")
        assert "re-sealed" in text and "giving up" not in text
        stored = cloud.stored(GW)
        assert not [g for g in stored["gaps"] if g["reason"] != "unclean_stop"]
        assert stored["readings"] >= standalone_readings
    finally:
        cloud.stop()
        server.close()


async def test_poison_batch_is_given_up_and_the_window_moves_on(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches sealed under a key the cloud cannot know (more of them than the window) are
    never acked; the good batches behind them are delivered anyway, and after max_attempts the
    poison ones are quarantined with gap records naming them."""
    ident = cloud.gateway("gw-poison", tmp_path / "id")
    ingest = cloud.ingest()
    gw = GatewaySide(ident, tmp_path / "state", cloud.url, window=4, ack_timeout=0.5,
                     max_attempts=3)
    try:
        bad = Sealer(b"\x07" * 32, ident.key_id, ident.gateway_id)  # a key the cloud never had
        good_sealer = gw.outbox.sealer
        poison: list[int] = []
        gw.outbox.sealer = bad
        for _ in range(6):  # more than the window
            poison.append(await gw.append(10))
        gw.outbox.sealer = good_sealer
        good = [await gw.append(10) for _ in range(10)]
        with caplog.at_level(logging.WARNING, logger="edgegw.uplink"):
            gw.start()
            store = cloud.store()
            try:
                await await_until(lambda: set(good) <= set(store.batch_seqs(ident.gateway_id)),
                                  30, "the good batches behind the poison ones")
                # a live gateway keeps producing: fresh batches acked after the poison ones
                # were sent are what proves the cloud is up and skipping them
                deadline = asyncio.get_running_loop().time() + 60
                while gw.uplink.c.given_up < len(poison):
                    assert asyncio.get_running_loop().time() < deadline, gw.uplink.stats()
                    good.append(await gw.append(10))
                    await await_until(lambda: good[-1] in store.batch_seqs(ident.gateway_id),
                                      20, "a fresh batch at the cloud")
                await gw.drained(30)
                gaps = store.gaps(ident.gateway_id)
            finally:
                store.close()
        named = sorted(s for g in gaps if g["reason"] == "undeliverable"
                       for s in json.loads(g["seqs"]))
        assert named == poison
        assert gw.outbox.stats()["given_up"] == len(poison)
        assert "giving up batch" in caplog.text
    finally:
        await gw.close()
        ingest.stop()


async def test_stuck_delivery_is_explained_in_a_warning(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No ingest at all: nothing is acked, nothing is given up, and one WARNING says why."""
    ident = cloud.gateway("gw-stuck", tmp_path / "id")
    gw = GatewaySide(ident, tmp_path / "state", cloud.url, window=4, ack_timeout=0.3,
                     max_attempts=2, stuck_after=1.5)
    try:
        seqs = [await gw.append(5) for _ in range(6)]
        with caplog.at_level(logging.WARNING, logger="edgegw.uplink"):
            gw.start()
            await await_until(lambda: gw.uplink.c.stuck_warnings == 1, 20, "the stuck warning")
        assert "delivery stuck" in caplog.text and "registry" in caplog.text
        assert gw.uplink.c.given_up == 0  # an outage never gives data up
        assert await gw.pending() == len(seqs)
    finally:
        await gw.close()


def test_gap_record_kinds_decode(tmp_path: Path) -> None:
    """Sanity of the helper used above: a gap record's envelope is flagged and decodes."""
    from edgegw.store.outbox import Outbox

    s = Sealer(b"\x01" * 32, 1, GW)
    ob = Outbox(tmp_path / "o.db", max_bytes=1 << 20, sealer=s)
    seq = ob.append(Lane.TELEMETRY, encode_batch(gaps=[]), count=0, first_ts_ms=1, last_ts_ms=2)
    assert ob.give_up(seq, "test", "undeliverable")
    (b,) = ob.next_batches(5)
    assert parse_header(b.envelope).flags & 1
    (g,) = decode_batch(s.open(b.envelope)[1]).gaps
    assert g.seqs == (seq,) and g.reason == "undeliverable"
    ob.close()
