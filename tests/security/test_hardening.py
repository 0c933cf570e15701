"""Issue 9 #10, the smaller findings: file modes of data at rest, the repeated-log filter, the
missing local data key, early refusal of a huge config file."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgegw.model import Lane
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.fileperms import prepare_sqlite
from edgegw.protocol.logthrottle import RepeatFilter
from edgegw.runtime.sealing import LocalKeyMissing, local_key, make_sealer
from edgegw.store.outbox import Outbox
from edgegw_cloud.store import CloudStore


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_outbox_and_cloud_store_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask that made them 0644
    try:
        ob = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20,
                    sealer=make_sealer("gw", tmp_path, None))
        ob.append(Lane.TELEMETRY, encode_batch([]), count=0, first_ts_ms=0, last_ts_ms=0)
        store = CloudStore(tmp_path / "store.db")
        store.commit_many([])
        for name in ("outbox.db", "store.db"):
            for suffix in ("", "-wal", "-shm"):
                p = tmp_path / (name + suffix)
                if p.exists():
                    assert _mode(p) == 0o600, (p, oct(_mode(p)))
        assert (tmp_path / "outbox.db-wal").exists() and (tmp_path / "store.db-wal").exists()
        ob.close()
        store.close()
        # an existing 0644 file (an older version) is tightened at the next open
        legacy = tmp_path / "legacy.db"
        legacy.write_bytes(b"")
        os.chmod(legacy, 0o644)
        prepare_sqlite(legacy)
        assert _mode(legacy) == 0o600
    finally:
        os.umask(old)


def test_status_json_is_not_world_readable(tmp_path: Path) -> None:
    from edgegw.protocol.fileperms import write_private

    old = os.umask(0o022)
    try:
        write_private(tmp_path / "status.json", "{}")
        assert _mode(tmp_path / "status.json") == 0o640
    finally:
        os.umask(old)


def test_deleted_local_key_is_not_silently_regenerated(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outbox_path = state / "outbox.db"
    ob = Outbox(outbox_path, max_bytes=1 << 20, sealer=make_sealer("gw", state, None, outbox_path))
    ob.append(Lane.TELEMETRY, encode_batch([]), count=0, first_ts_ms=0, last_ts_ms=0)
    ob.close()
    key = (state / "local-data.key").read_bytes()
    (state / "local-data.key").unlink()
    with pytest.raises(LocalKeyMissing, match=r"Restore local-data\.key") as err:
        make_sealer("gw", state, None, outbox_path)
    assert "outbox.db.orphaned" in str(err.value) and "1 batches" in str(err.value)
    assert not (state / "local-data.key").exists()  # nothing generated, nothing deleted
    # restoring the key is the fix; a fresh state dir still gets a key generated
    (state / "local-data.key").write_bytes(key)
    assert local_key(state, outbox_path) == key
    assert len(local_key(tmp_path / "fresh", tmp_path / "fresh" / "outbox.db")) == 32


def test_repeat_filter_first_then_a_counted_summary() -> None:
    now = [0.0]
    f = RepeatFilter(60.0, clock=lambda: now[0])
    out: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(record.getMessage())

    h = Collect()
    h.addFilter(f)
    log = logging.getLogger("test.throttle")
    log.propagate = False
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    try:
        for i in range(841):
            log.error("device %s: read failed", f"d{i % 10}")
            log.debug("debug lines are never throttled %d", i)
        assert [m for m in out if "read failed" in m] == ["device d0: read failed"]
        assert sum("debug lines" in m for m in out) == 841
        out.clear()
        log.warning("another kind")  # a different kind passes at once
        assert out == ["another kind"]
        now[0] = 61.0
        log.error("device %s: read failed", "d3")
        assert out[-1] == "device d3: read failed [+840 similar in the last 60 s]"
        # a kind that went quiet gets its summary with the next record, or at flush()
        log.error("device %s: read failed", "d4")
        now[0] = 200.0
        log.info("something else")
        assert out[-2].startswith("1 more like this in the last 60 s, last: device d4")
        assert f.suppressed_total == 841
    finally:
        log.removeHandler(h)


def test_huge_config_file_is_refused_before_parsing(tmp_path: Path) -> None:
    cfg = tmp_path / "big.yaml"
    with cfg.open("w") as fh:
        fh.write("gateway: {id: gw-big}\ndevices: []\n# ")
        fh.write("x" * (50 * 1024 * 1024))
    proc = subprocess.run(
        [sys.executable, "-c",
         "import resource, subprocess, sys\n"
         "p = subprocess.run([sys.executable, '-m', 'edgegw.cli', 'check', '-c', sys.argv[1]],"
         " capture_output=True, text=True)\n"
         "print(p.returncode); print(p.stdout + p.stderr)\n"
         "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
         str(cfg)],
        capture_output=True, text=True, timeout=120,
    )
    lines = proc.stdout.splitlines()
    assert lines[0] != "0", proc.stdout
    assert "too large" in proc.stdout and "big.yaml" in proc.stdout, proc.stdout
    rss_kib = int(proc.stdout.rsplit("MAXRSS", 1)[1])
    assert rss_kib < 200 * 1024  # refused before reading it (1 GB RSS before the fix)


def test_install_then_close_leaves_no_filter_behind() -> None:
    from edgegw.protocol.logthrottle import install

    h = logging.StreamHandler()
    f = install([h], interval=60.0)
    assert f in h.filters
    f.close()
    assert h.filters == []
