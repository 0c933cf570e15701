"""Finding 11 (gateway side): after an unclean stop (SIGKILL here; a power cut is the same to
the next start) the gateway reports the interval it cannot account for - from its last
committed reading to the restart - as a gap record (reason ``unclean_stop``), so the cloud can
tell "gateway down" from "no data"; `edgegw status` counts starts and unclean stops.

Real daemon, real pymodbus server, the outbox on disk.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from modbus.simproc import SimServer
from runtime.helpers import outbox_seqs, poll_until, start_daemon, write_config

from edgegw.protocol.codec_v2 import decode_any
from edgegw.protocol.envelope import FLAG_GAP, open_sealed, parse_header
from edgegw.runtime.sealing import key_lookup
from edgegw.store.series_dict import FILE_NAME, file_resolver

from .cloudproc import edgegw_cli

GW = "gw-unclean"


def _contents(state: Path) -> tuple[list[Any], list[int]]:
    """(gap entries, reading timestamps) of everything in the outbox."""
    lookup = key_lookup(state)
    con = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT envelope FROM batches ORDER BY seq").fetchall()
    finally:
        con.close()
    gaps, ts = [], []
    resolve = file_resolver(state / FILE_NAME)  # codec v2 series ids (batch.codec default)
    for (env,) in rows:
        h = parse_header(env)
        key = lookup(h.key_id)
        assert key is not None
        batch = decode_any(open_sealed(key, GW, env)[1], resolve)
        if h.flags & FLAG_GAP:
            gaps += batch.gaps
        ts += [s.ts_ms for s in batch.samples]
    return gaps, ts


def one_modbus_device_config(tmp_path: Path, state: Path, port: int) -> Path:
    """gateway.yaml (no uplink): one Modbus TCP device polled every 100 ms, 100 ms batches."""
    return write_config(tmp_path / "gateway.yaml", {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "info"},
        "metrics": {"enabled": False},
        "batch": {"max_age": "100ms"},
        "devices": [{"id": "u1", "driver": "modbus", "poll": "100ms", "timeout": "1s",
                     "options": {"transport": "tcp", "host": "127.0.0.1", "port": port,
                                 "unit_id": 1, "points": [{"name": "v", "kind": "holding",
                                                           "address": 0, "type": "int16"}]}}],
    })


def test_sigkill_is_reported_as_a_gap_and_counted(tmp_path: Path) -> None:
    server = SimServer("--tcp", "0", "--units", "1", log_dir=tmp_path)
    state = tmp_path / "state"
    cfg = one_modbus_device_config(tmp_path, state, server.port)
    try:
        proc = start_daemon(cfg, tmp_path / "daemon.log")
        poll_until(lambda: len(outbox_seqs(state / "outbox.db")) >= 10, 30, "stored batches")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_ms = time.time_ns() // 1_000_000
        _, before = _contents(state)
        last_committed = max(before)
        r = edgegw_cli("run", "-c", str(cfg), "--for", "1.5")
        assert r.returncode == 0, r.stderr
        status = edgegw_cli("status", "-c", str(cfg), "--json")
    finally:
        server.close()
    gaps, ts = _contents(state)
    (gap,) = [g for g in gaps if g.reason == "unclean_stop"]
    # the interval starts right after the last committed reading and reaches the restart
    assert gap.from_ts_ms == last_committed + 1
    assert gap.to_ts_ms >= killed_ms
    assert gap.seqs == () and gap.batches == 0
    # nothing stored contradicts it: no reading inside the interval
    assert not [t for t in ts if gap.from_ts_ms <= t <= gap.to_ts_ms]
    proc_stats = json.loads(status.stdout)["stats"]["process"]
    assert proc_stats["starts"] == 2 and proc_stats["unclean_stops"] == 1
    assert proc_stats["phase"] == "stopped"
    # a clean stop is not reported: a third run adds no unclean_stop gap
    r = edgegw_cli("run", "-c", str(cfg), "--for", "0.5")
    assert r.returncode == 0, r.stderr
    assert len([g for g in _contents(state)[0] if g.reason == "unclean_stop"]) == 1
