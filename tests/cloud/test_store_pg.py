"""The PostgreSQL store against the local PostgreSQL 15 (a database created and dropped per
test): same results as the SQLite store for the same batches, dedup in the commit transaction,
daily partitions, the Grafana-facing ``readings`` view."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from edgegw.model import Alert, Sample
from edgegw.protocol.codec import Series
from edgegw_cloud.store import BatchRecord, CloudStore
from edgegw_cloud.store_pg import DAY_MS, PgStore
from edgegw_cloud.stores import describe, open_store

from .helpers import pg_database

T0 = 1_700_000_000_000


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


def _records() -> list[BatchRecord]:
    values = [1.5, 2**60, True, "running", None, b"\x89PNG-frame", -7]
    samples = [Sample("dev1", f"m{i}", T0 + i, v) for i, v in enumerate(values)]
    series = Series("dev2", "temp", [T0, T0 + DAY_MS, T0 + 2 * DAY_MS], [20.5, 21.0, 21.5],
                    [0, 0, 1])
    return [
        BatchRecord("gw-a", 1, 1, T0, samples=samples),
        BatchRecord("gw-a", 2, 0, T0, series=[series],
                    alerts=[Alert("hot", "dev2", T0, True, message="too hot", metric="temp",
                                  value=21.5)]),
    ]


def test_same_results_as_sqlite_and_duplicates_refused(pg_url: str, tmp_path: Path) -> None:
    pg = open_store(pg_url)
    lite = CloudStore(tmp_path / "store.db")
    try:
        assert isinstance(pg, PgStore) and not pg.timescale
        assert pg.commit_many(_records()) == [True, True]
        assert lite.commit_many(_records()) == [True, True]
        # re-sent batches (and a new one beside them): only the new one is stored
        again = [*_records(), BatchRecord("gw-a", 3, 1, T0, samples=[Sample("d", "m", T0, 1)])]
        assert pg.commit_many(again) == [False, False, True]
        assert lite.commit_many(again) == [False, False, True]
        assert list(pg.readings(gateway="gw-a")) == list(lite.readings(gateway="gw-a"))
        assert pg.count_readings("gw-a") == lite.count_readings("gw-a") == 11
        assert pg.distinct_readings("gw-a") == 11
        assert pg.batch_seqs("gw-a") == [1, 2, 3]
        assert pg.alert_states() == lite.alert_states()
        assert pg.fleet_summary()["gw-a"]["readings"] == 11
        assert pg.recent_readings("gw-a", since_ms=0, after_seq=1) == lite.recent_readings(
            "gw-a", since_ms=0, after_seq=1)
        assert pg.blob(next(r.value for r in pg.readings(gateway="gw-a", metric="m5")
                            )["blob_sha256"]) == b"\x89PNG-frame"  # type: ignore[index]
        st = pg.stats()
        assert st["batches_stored"] == 3 and st["batches_duplicate"] == 2
    finally:
        pg.close()
        lite.close()
    with psycopg.connect(pg_url) as db:
        parts = {r[0] for r in db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'points'")}
        assert {f"points_d{(T0 + k * DAY_MS) // DAY_MS}" for k in range(3)} <= parts
        # what Grafana's PostgreSQL source reads: a timestamptz "time" and a numeric "value"
        row = db.execute("SELECT time, value FROM readings WHERE metric = 'temp'"
                         " ORDER BY time LIMIT 1").fetchone()
        assert row is not None and row[0].timestamp() * 1000 == T0 and row[1] == 20.5
    assert "postgres@127.0.0.1:5432/" in describe(pg_url) and "@" not in describe("/x/store.db")


def test_concurrent_commits_of_the_same_batch_store_it_once(pg_url: str) -> None:
    open_store(pg_url).close()  # schema
    stores = [PgStore(pg_url) for _ in range(4)]
    results: list[list[bool]] = []
    barrier = threading.Barrier(len(stores))

    def commit(s: PgStore) -> None:
        barrier.wait()
        results.append(s.commit_many(_records()))

    threads = [threading.Thread(target=commit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert sorted(r[0] for r in results) == [False, False, False, True]
    assert sorted(r[1] for r in results) == [False, False, False, True]
    check = PgStore(pg_url, readonly=True)
    try:
        assert check.count_readings() == 10 and check.distinct_readings("gw-a") == 10
    finally:
        check.close()
