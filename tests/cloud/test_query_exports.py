"""``edgegw-cloud query`` exports: CSV, JSON lines, Parquet (read back with pyarrow), alerts
and gaps, relative times (``--since -10m``), the PostgreSQL store, and a quiet exit when the
reader of a pipe goes away (``| head``)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edgegw.model import Alert, Sample
from edgegw.protocol.codec import Gap
from edgegw_cloud.cli import main
from edgegw_cloud.pki_setup import init_data_dir
from edgegw_cloud.store import BatchRecord
from edgegw_cloud.stores import open_store

from .helpers import BIN, pg_database


def _fill(target: str | Path) -> None:
    # "now" when the data is stored, not when the module was collected: in a long parallel
    # run the test may start many minutes after collection ("--since -10m" is relative)
    now = int(time.time() * 1000)
    store = open_store(target)
    try:
        store.commit_many([
            BatchRecord("gw1", 1, 1, now, samples=[
                Sample("boiler", "temp", now - 3_600_000, 10.0),  # an hour ago
                *(Sample("boiler", "temp", now - 1000 * i, 50.0 + i) for i in range(5)),
                Sample("boiler", "state", now, "running"),
                Sample("boiler", "count", now, 2**60),
            ]),
            BatchRecord("gw1", 2, 0, now,
                        alerts=[Alert("hot", "boiler", now - 500, True, message="hot, 55"),
                                Alert("hot", "boiler", now, False, message="cleared")],
                        gaps=[Gap(1, (7, 8), now - 90_000, now - 80_000, 2, 300)]),
        ])
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    d = tmp_path / "cloud"
    init_data_dir(d)
    if request.param == "sqlite":
        _fill(d / "store.db")
        yield ["--data-dir", str(d)]
    else:
        with pg_database() as url:
            _fill(url)
            yield ["--data-dir", str(d), "--store", url]


def _query_cmd(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _query(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["query", *argv]) == 0
    return capsys.readouterr().out


def test_formats_alerts_gaps_and_relative_times(data: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rows = list(csv.DictReader(io.StringIO(_query(capsys, *data, "--format", "csv"))))
    assert len(rows) == 8 and rows[0].keys() >= {"gateway", "device", "metric", "time", "value"}
    # "--since -10m" as documented (argparse alone would take "-10m" for an option)
    cutoff = int(time.time() * 1000) - 600_000
    recent = _query(capsys, *data, "--since", "-10m", "--format", "jsonl").splitlines()
    assert len(recent) == 7 and all(json.loads(x)["ts_ms"] >= cutoff for x in recent)
    big = next(json.loads(x) for x in recent if json.loads(x)["metric"] == "count")
    assert big["value"] == 2**60
    alerts = [json.loads(x) for x in
              _query(capsys, *data, "--what", "alerts", "--format", "jsonl").splitlines()]
    assert [a["state"] for a in alerts] == ["active", "cleared"]
    assert alerts[0]["message"] == "hot, 55"
    gaps = list(csv.DictReader(io.StringIO(
        _query(capsys, *data, "--what", "gaps", "--format", "csv"))))
    assert len(gaps) == 1 and gaps[0]["readings"] == "300" and gaps[0]["reason"] == "outbox_full"
    out = tmp_path / "r.parquet"
    _query(capsys, *data, "--format", "parquet", "--output", str(out), "--metric", "temp")
    table = pq.read_table(out)
    assert table.num_rows == 6
    assert str(table.schema.field("time").type) == "timestamp[ms, tz=UTC]"
    assert sorted(table.column("value").to_pylist()) == [10.0, 50.0, 51.0, 52.0, 53.0, 54.0]
    out2 = tmp_path / "all.parquet"
    _query(capsys, *data, "--format", "parquet", "-o", str(out2))
    texts = pq.read_table(out2).column("value_text").to_pylist()
    assert "running" in texts and str(2**60) in texts
    # the registry listing reads the same store's counters (SQLite or PostgreSQL)
    from edgegw import pki
    from edgegw_cloud.registry import Registry

    d = Path(data[1])
    with Registry(d / "registry.db") as reg:
        reg.provision("gw1", pki.generate_ec_key().public_key(),
                      pki.Issuer.load(d / "pki" / "ca.crt", d / "pki" / "ca.key"))
    row = next(ln for ln in _query_cmd(capsys, "gateways", *[a for a in data if a != "query"])
               .splitlines() if ln.startswith("gw1 "))
    assert row.split()[-5:] == ["1", "2", "1", "(2", "batches)"], row  # devices batches gaps


def test_piped_to_head_ends_quietly(tmp_path: Path) -> None:
    d = tmp_path / "cloud"
    init_data_dir(d)
    store = open_store(d / "store.db")
    now = int(time.time() * 1000)
    store.commit_many([BatchRecord("gw1", 1, 1, now, samples=[
        Sample("dev", "m", now + i, float(i)) for i in range(50_000)])])
    store.close()
    p = subprocess.run(
        f"{BIN / 'edgegw-cloud'} query --data-dir {d} --format csv | head -n 3",
        shell=True, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
