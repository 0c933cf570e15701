"""Several ingest processes on the MQTT v5 shared subscription, one store: exactly once.

`edgegw-cloud serve --ingest-processes 2` against the real broker; a real gateway data path
(Outbox + Uplink) sends batches; the broker spreads them over both processes, whose commits the
store's SQLite write lock serialises. Ends by counting: produced == stored, no duplicates, and
each process stored some of them (the load was really shared).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgegw_cloud.server import serve

from .conftest import Cloud, GatewaySide, assert_exactly_once, await_until


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
async def test_two_ingest_processes_share_the_load_exactly_once(
    cloud: Cloud, tmp_path: Path
) -> None:
    stop = threading.Event()
    stats_dir = tmp_path / "ingest-stats"
    stats_dir.mkdir()
    server = threading.Thread(
        target=serve,
        args=(cloud.paths,),
        # an "external" broker for serve: the test broker's service listener (ingest, enroll)
        kwargs={"port": 0, "broker_url": cloud.broker.service_url, "stop": stop,
                "ingest_processes": 2,
                "ingest_stats_dir": stats_dir, "out": io.StringIO(),
                "store": cloud.store_url},
        daemon=True,
    )
    server.start()
    gw = GatewaySide(cloud.gateway("gw-multi", tmp_path / "id"), tmp_path / "gw", cloud.url,
                     window=16)
    try:
        gw.start()
        await await_until(lambda: gw.uplink.connected, 20, "the uplink to connect")
        for _ in range(120):
            await gw.append(50)
        await gw.drained(60)
    finally:
        await gw.close()
        stop.set()
        server.join(60)
    assert not server.is_alive()
    assert_exactly_once(cloud, gw)
    stored = [json.loads(f.read_text())["batches_stored"] for f in sorted(stats_dir.iterdir())]
    assert len(stored) == 2 and sum(stored) == 120, stored
    assert min(stored) > 0, f"one process took everything: {stored}"


def test_tune_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    """What an ingest process (and ``edgegw-cloud serve`` with the ingest in process) does
    to its collector once started (docs/performance.md "Drain"); in a fresh interpreter, as
    it changes process-wide settings."""
    code = ("import gc; from edgegw_cloud.ingest import GC_GEN0_THRESHOLD, tune_gc; "
            "before = gc.get_threshold(); tune_gc(); "
            "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(), "
            "GC_GEN0_THRESHOLD]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], check=True,
                         capture_output=True, text=True).stdout
    before, after, frozen, gen0 = json.loads(out)
    assert after == [max(before[0], gen0), before[1], before[2]] and after[0] > 700
    assert frozen > 10_000  # the start-up objects (modules) are out of every collection
