"""`edgegw-cloud db inspect`: read-only inspection of the registry and store (sqlite-utils).

Checked against a real data dir and a store holding real committed batches: the row counts it
reports are the store's own counts, and the databases are byte-for-byte unchanged after it ran
(it opens them read-only, so it is safe next to a running `serve`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgegw.model import Lane, Sample
from edgegw_cloud.cli import main
from edgegw_cloud.pki_setup import init_data_dir
from edgegw_cloud.store import CloudStore


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_db_inspect_reports_the_stores_counts_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = init_data_dir(tmp_path / "cloud")
    store = CloudStore(paths.store_db)
    for seq in (1, 2, 3):
        t0 = 1_700_000_000_000 + seq * 10
        batch = [Sample("pump", "flow", t0 + i, float(i)) for i in range(4)]
        assert store.commit_batch("gw1", seq, int(Lane.TELEMETRY), 100 + seq, batch)
    store.close()
    before = {p: _digest(p) for p in (paths.store_db, paths.registry_db)}

    assert main(["db", "inspect", "--data-dir", str(paths.data_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["store"]["tables"]["batches"]["rows"] == 3
    assert info["store"]["journal_mode"] == "wal"
    assert "gateway" in info["store"]["tables"]["batches"]["columns"]
    assert info["registry"]["exists"] and info["registry"]["tables"]
    assert {p: _digest(p) for p in before} == before

    assert main(["db", "inspect", "--data-dir", str(paths.data_dir)]) == 0
    text = capsys.readouterr().out
    assert "store:" in text and "batches: 3 rows" in text
