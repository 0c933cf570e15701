"""Finding 8: disk full, on a real small file system (a tmpfs of 6 MiB mounted by the test as
root and unmounted after it).

The gateway daemon polls a pymodbus server; its outbox bound (64 MiB) is far larger than the
disk, so only the free-space floor (``outbox.min_free_bytes``) and SQLITE_FULL can stop it:
- below the floor the outbox stops growing and evicts the oldest telemetry with gap records
  (reason ``disk_full``); no ERROR flood;
- with the disk completely full (another file ate it), refused batches are counted and named
  by a gap record once space returns;
- recovery when space comes back; SIGTERM exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modbus.simproc import SimServer
from runtime.helpers import poll_until, start_daemon, stop_daemon, write_config

from edgegw.protocol.codec import decode_batch
from edgegw.protocol.envelope import FLAG_GAP, open_sealed, parse_header
from edgegw.runtime.sealing import key_lookup

GW = "gw-diskfull"
MIB = 1024 * 1024


@pytest.fixture
def small_fs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="edgegw-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", str(d)],
                   check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        with contextlib.suppress(OSError):
            d.rmdir()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _status(state: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state / "status.json").read_text())["stats"])
    except (OSError, ValueError, KeyError):
        return {}


def _gaps(state: Path) -> list[Any]:
    import sqlite3

    lookup = key_lookup(state)
    con = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT envelope FROM batches").fetchall()
    finally:
        con.close()
    out = []
    for (env,) in rows:
        h = parse_header(env)
        if h.flags & FLAG_GAP:
            key = lookup(h.key_id)
            assert key is not None
            out += decode_batch(open_sealed(key, GW, env)[1]).gaps
    return out


@pytest.mark.slow
def test_disk_full_floor_drop_policy_recovery_and_clean_exit(
    tmp_path: Path, small_fs: Path
) -> None:
    server = SimServer("--tcp", "0", "--units", "1", log_dir=tmp_path)
    state = small_fs / "state"
    points = [{"name": f"r{i}", "kind": "holding", "address": i, "type": "uint16"}
              for i in range(60)]
    cfg = write_config(tmp_path / "gateway.yaml", {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "info"},
        "metrics": {"enabled": False},
        "batch": {"max_age": "50ms"},
        "outbox": {"max_bytes": "64MiB", "min_free_bytes": "1MiB"},
        "devices": [{"id": f"u{k}", "driver": "modbus", "poll": "20ms", "timeout": "1s",
                     "options": {"transport": "tcp", "host": "127.0.0.1",
                                 "port": server.port, "unit_id": 1, "points": points}}
                    for k in range(4)],
    })
    log = tmp_path / "daemon.log"
    filler = small_fs / "filler"
    proc = start_daemon(cfg, log)
    try:
        poll_until(lambda: _status(state).get("outbox", {}).get("appended", 0) > 20, 30,
                   "the daemon to store batches")
        # leave a little above the floor: the outbox must stop growing by itself
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, _free(small_fs) - int(1.2 * MIB)))
        poll_until(lambda: _status(state).get("outbox", {}).get("dropped_batches", {})
                   .get("telemetry", 0) > 0, 60, "evictions under the free-space floor")
        # the outbox made room inside its file instead of eating the floor
        assert _free(small_fs) > MIB // 2
        # now another program eats the rest of the disk: appends fail with SQLITE_FULL
        with open(small_fs / "filler2", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        poll_until(lambda: _status(state).get("pipeline", {}).get("batches_refused", 0) > 3
                   or ((state / "outbox.db").exists() and "refused" in log.read_text()), 60,
                   "refused batches on a full disk")
        # space comes back
        (small_fs / "filler2").unlink()
        filler.unlink()
        try:
            poll_until(lambda: _status(state).get("outbox", {}).get("disk_low") == 0, 60,
                       "the outbox to notice the space came back")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {json.dumps(_status(state))[:3000]}") from None
        before = _status(state)["outbox"]["appended"]
        poll_until(lambda: _status(state)["outbox"]["appended"] > before + 10, 30,
                   "appends after recovery")
    finally:
        rc = stop_daemon(proc)
        server.close()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert text.count(" ERROR ") <= 2, text[-3000:]
    gaps = _gaps(state)
    reasons = {g.reason for g in gaps}
    assert "disk_full" in reasons
    refused = [g for g in gaps if g.reason == "disk_full" and not g.seqs]
    evicted = [g for g in gaps if g.reason == "disk_full" and g.seqs]
    assert evicted and all(g.readings > 0 for g in evicted)
    assert refused and sum(g.readings for g in refused) > 0
