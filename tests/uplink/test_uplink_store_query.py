"""Cloud store (SQLite on disk) and the `edgegw-cloud query` command."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from edgegw.model import Alert, Lane, Quality, Sample, Severity
from edgegw.protocol.codec import Gap
from edgegw_cloud import query
from edgegw_cloud.commands import query as query_cmd
from edgegw_cloud.store import BatchRecord, CloudStore


def _samples(n: int, *, device: str = "d1", metric: str = "t", t0: int = 1_700_000_000_000
             ) -> list[Sample]:
    return [Sample(device, metric, t0 + i * 1000, float(i) / 4) for i in range(n)]


def test_commit_dedups_atomically_and_keeps_types(tmp_path: Path) -> None:
    store = CloudStore(tmp_path / "store.db")
    mixed = [
        Sample("d", "i", 1, 2**62), Sample("d", "u64", 2, 2**64 - 1), Sample("d", "f", 3, 1.5),
        Sample("d", "b", 4, True), Sample("d", "s", 5, "hello"),
        Sample("d", "x", 6, None, Quality.COMM_ERROR), Sample("d", "img", 7, b"\xff\xd8jpeg"),
        Sample("d", "img", 8, b"\xff\xd8jpeg"),  # identical frame: one blob row
    ]
    alert = Alert("hot", "d", 9, True, Severity.CRITICAL, "too hot", "f", 99.0, {"a": "b"})
    gap = Gap(Lane.TELEMETRY, (3, 4), 10, 20, 2, 2000, "outbox_full")
    assert store.commit_batch("gw1", 1, int(Lane.ALERT), 100, mixed, [alert], [gap]) is True
    # the same (gateway, seq) again stores nothing, even with different contents
    assert store.commit_batch("gw1", 1, int(Lane.ALERT), 101, _samples(5)) is False
    # same seq from another gateway is a different batch
    assert store.commit_batch("gw2", 1, int(Lane.TELEMETRY), 102, _samples(5)) is True

    got = {r.metric: r for r in store.readings(gateway="gw1")}
    assert got["i"].value == 2**62 and isinstance(got["i"].value, int)
    assert got["u64"].value == 2**64 - 1
    assert got["f"].value == 1.5
    assert got["b"].value is True
    assert got["s"].value == "hello"
    assert got["x"].value is None and got["x"].quality == int(Quality.COMM_ERROR)
    blob_ref = got["img"].value
    assert isinstance(blob_ref, dict) and blob_ref["size"] == 6
    assert store.blob(str(blob_ref["blob_sha256"])) == b"\xff\xd8jpeg"
    assert store.count_readings("gw1") == len(mixed)
    assert store.count_readings("gw2") == 5
    assert store.alerts("gw1")[0]["rule"] == "hot"
    assert json.loads(store.gaps("gw1")[0]["seqs"]) == [3, 4]
    st = store.stats()
    assert (st["batches_stored"], st["batches_duplicate"]) == (2, 1)
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_group_commit_is_per_batch_dedup_and_all_or_nothing(tmp_path: Path) -> None:
    store = CloudStore(tmp_path / "store.db")
    recs = [BatchRecord("gw", s, 1, 0, _samples(10, t0=s * 100_000)) for s in (1, 2, 2, 3)]
    assert store.commit_many(recs) == [True, True, False, True]
    assert store.batch_seqs("gw") == [1, 2, 3]
    assert store.count_readings() == 30
    # an unstorable value in the middle of a group rolls back the whole group
    bad = Sample("d", "m", 1, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.commit_many([BatchRecord("gw", 4, 1, 0, _samples(3)),
                           BatchRecord("gw", 5, 1, 0, [bad])])
    assert store.batch_seqs("gw") == [1, 2, 3]
    assert store.count_readings() == 30
    store.close()


def test_definitions_are_written_once_and_again_after_a_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog sealed before the cloud's first ack repeats every codec v2 definition in every
    batch: the store writes each (gateway, epoch, id) once, and a definition whose transaction
    rolled back is written again by the next batch carrying it."""
    store = CloudStore(tmp_path / "store.db")
    written: list[int] = []
    real = store._store_definitions

    def spy(rows: list[tuple[object, ...]]) -> None:
        written.extend(int(r[2]) for r in rows)  # type: ignore[call-overload]
        real(rows)

    monkeypatch.setattr(store, "_store_definitions", spy)

    def rec(seq: int, defs: dict[int, tuple[str, str]], samples: list[Sample]) -> BatchRecord:
        return BatchRecord("gw", seq, 1, 0, samples, definitions=(7, defs))

    ab = {0: ("d", "a"), 1: ("d", "b")}
    assert store.commit_many([rec(1, ab, _samples(2)), rec(2, ab, _samples(2, t0=5))])
    assert written == [0, 1]  # the second batch of the group repeats them: not written again
    assert store.commit_many([rec(3, {**ab, 2: ("d", "c")}, _samples(2, t0=9))]) == [True]
    assert written == [0, 1, 2]
    bad = Sample("d", "m", 1, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.commit_many([rec(4, {**ab, 3: ("e", "x")}, [bad])])
    assert store.series_names("gw", 7, [3]) == {}  # rolled back
    assert store.commit_many([rec(5, {3: ("e", "x")}, _samples(1, t0=20))]) == [True]
    assert written == [0, 1, 2, 3, 3]
    assert store.series_names("gw", 7, range(5)) == {**ab, 2: ("d", "c"), 3: ("e", "x")}
    other = CloudStore(tmp_path / "store.db")  # another writer (process): its own memory
    assert other.commit_many([BatchRecord("gw", 6, 1, 0, _samples(1, t0=30),
                                          definitions=(7, {0: ("d", "a")}))]) == [True]
    assert other.series_names("gw", 7, [0]) == {0: ("d", "a")}
    other.close()
    store.close()


def _args(tmp_path: Path, **kw: object) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    query_cmd.add_arguments(p)
    argv = ["--data-dir", str(tmp_path)]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_query_filters_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = CloudStore(tmp_path / "store.db")
    t0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
    store.commit_batch("gw1", 1, 1, 0, _samples(10, device="pump", metric="p", t0=t0)
                       + _samples(10, device="pump", metric="q", t0=t0))
    store.commit_batch("gw2", 1, 1, 0, _samples(10, device="pump", metric="p", t0=t0))
    store.close()

    out = io.StringIO()
    assert query_cmd.run(_args(tmp_path, gateway="gw1", metric="p", since="2024-05-01T12:00:02Z",
                           until=t0 + 5000), out) == 0
    rows = json.loads(out.getvalue())
    assert [r["ts_ms"] for r in rows] == [t0 + 2000, t0 + 3000, t0 + 4000]
    assert {(r["gateway"], r["metric"], r["quality"]) for r in rows} == {("gw1", "p", "good")}
    assert rows[0]["time"] == "2024-05-01T12:00:02.000Z"

    out = io.StringIO()
    assert query_cmd.run(_args(tmp_path, device="pump", format="csv"), out) == 0
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(table) == 30
    assert float(table[1]["value"]) == 0.25

    out = io.StringIO()
    assert query_cmd.run(_args(tmp_path, gateway="nobody"), out) == 0
    assert json.loads(out.getvalue()) == []

    out = io.StringIO()
    assert query_cmd.run(_args(tmp_path, format="jsonl", limit=4), out) == 0
    assert len(out.getvalue().splitlines()) == 4

    assert query_cmd.run(_args(tmp_path, since="yesterday-ish"), io.StringIO()) == 2
    assert "bad time 'yesterday-ish'" in capsys.readouterr().err
    assert query_cmd.run(_args(tmp_path, since=t0 + 10, until=t0), io.StringIO()) == 2
    assert query_cmd.run(_args(tmp_path / "nothing"), io.StringIO()) == 2
    assert "no cloud store here" in capsys.readouterr().err


def test_parse_time_forms() -> None:
    now = 1_714_564_800_000
    assert query.parse_time("-10m", now_ms=now) == now - 600_000
    assert query.parse_time("-1.5h", now_ms=now) == now - 5_400_000
    assert query.parse_time("+2d", now_ms=now) == now + 2 * 86_400_000
    assert query.parse_time("-500ms", now_ms=now) == now - 500
    assert query.parse_time("now", now_ms=now) == now
    assert query.parse_time("1714564800000") == now
    assert query.parse_time("2024-05-01T12:00:00Z") == now
    assert query.parse_time("2024-05-01T14:00:00+02:00") == now
    assert query.parse_time("2024-05-01 12:00:00") == now  # no zone: UTC
    with pytest.raises(query.TimeSpecError, match="relative offset"):
        query.parse_time("-10 minutes")
