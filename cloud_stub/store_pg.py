"""The cloud store on PostgreSQL (``serve --store postgresql://...``), psycopg 3.

Same contract as the SQLite ``CloudStore`` (edgegw_cloud.store), same tables and names:
- ``batches (gateway, seq)`` is the PRIMARY KEY; a batch's readings, alerts and gaps are written
  in the SAME transaction as its ``batches`` row (``INSERT ... ON CONFLICT DO NOTHING
  RETURNING``): dedup and durable commit are one atomic step. Several ingest processes may write
  at once: a second insert of the same (gateway, seq) waits for the first transaction and then
  finds the conflict, so each batch is stored once whatever the interleaving.
- Durable when ``commit_many`` returns (``synchronous_commit`` is forced ``on`` for the session).
- ``points`` is time-partitioned on ``ts_ms`` (epoch ms): with the TimescaleDB extension
  available it is a hypertable (one-day chunks), otherwise a natively partitioned table with one
  partition per UTC day, created on demand in its own short transaction before the batch
  transaction (never inside it, so concurrent ingest processes cannot deadlock on DDL).
  Everything else (tables, views, column names, queries) is identical on both, so Grafana's
  PostgreSQL data source reads either unchanged (``readings`` has a ``time`` timestamptz column).
- Values: numbers and booleans in ``value`` (double precision, what Grafana plots); strings,
  integers beyond +-2**53 and blob digests in ``value_text``; ``vtype`` tells which (as SQLite).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import sql

from edgegw.protocol.model import Value
from edgegw_cloud.store import (
    VT_BLOB,
    VT_BOOL,
    VT_FLOAT,
    VT_INT,
    VT_NULL,
    VT_STR,
    BatchRecord,
    BatchWriter,
    StoredReading,
    _Counts,
    alert_rows,
    gap_rows,
)
from edgegw_cloud.store_read import readings_query

log = logging.getLogger("edgegw.cloud.store")

DAY_MS = 86_400_000
_EXACT = 2**53

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway     text     NOT NULL,
    seq         bigint   NOT NULL,
    lane        smallint NOT NULL,
    received_ms bigint   NOT NULL,
    stored_ms   bigint   NOT NULL,
    readings    integer  NOT NULL,
    alerts      integer  NOT NULL DEFAULT 0,
    gaps        integer  NOT NULL DEFAULT 0,
    digest      bytea,
    PRIMARY KEY (gateway, seq)
);
CREATE TABLE IF NOT EXISTS seq_conflicts (
    gateway        text   NOT NULL,
    seq            bigint NOT NULL,
    stored_digest  bytea,
    offered_digest bytea,
    received_ms    bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id      serial PRIMARY KEY,
    gateway text NOT NULL,
    device  text NOT NULL,
    metric  text NOT NULL,
    UNIQUE (gateway, device, metric)
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 text PRIMARY KEY,
    size   integer NOT NULL,
    data   bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    gateway  text     NOT NULL,
    seq      bigint   NOT NULL,
    rule     text     NOT NULL,
    device   text     NOT NULL,
    ts_ms    bigint   NOT NULL,
    active   smallint NOT NULL,
    severity smallint NOT NULL,
    message  text     NOT NULL,
    metric   text     NOT NULL,
    value    double precision,
    labels   text     NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (gateway, device, ts_ms);
-- codec v2 series dictionaries: (gateway, epoch, id) -> names, written in the transaction of the
-- batch that defined them (as in the SQLite store)
CREATE TABLE IF NOT EXISTS series_dict (
    gateway text    NOT NULL,
    epoch   bigint  NOT NULL,
    id      integer NOT NULL,
    device  text    NOT NULL,
    metric  text    NOT NULL,
    PRIMARY KEY (gateway, epoch, id)
);
CREATE TABLE IF NOT EXISTS gaps (
    gateway    text     NOT NULL,
    seq        bigint   NOT NULL,
    lane       smallint NOT NULL,
    seqs       text     NOT NULL,
    from_ts_ms bigint   NOT NULL,
    to_ts_ms   bigint   NOT NULL,
    batches    integer  NOT NULL,
    readings   integer  NOT NULL,
    reason     text     NOT NULL
);
"""

POINTS = """
CREATE TABLE IF NOT EXISTS points (
    series     integer  NOT NULL,
    ts_ms      bigint   NOT NULL,
    value      double precision,
    value_text text,
    vtype      smallint NOT NULL,
    quality    smallint NOT NULL,
    seq        bigint   NOT NULL
){partition}
"""

VIEWS = """
CREATE INDEX IF NOT EXISTS points_ts_series ON points (ts_ms, series);
CREATE OR REPLACE VIEW readings AS
    SELECT s.gateway, s.device, s.metric, p.ts_ms, p.value, p.value_text, p.vtype, p.quality,
           p.seq, to_timestamp(p.ts_ms / 1000.0) AS time
    FROM points p JOIN series s ON s.id = p.series;
"""


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def _encode(value: Value) -> tuple[float | None, str | None, int, bytes | None]:
    """(value, value_text, vtype, blob bytes or None)."""
    if value is None:
        return None, None, VT_NULL, None
    if isinstance(value, bool):
        return float(value), None, VT_BOOL, None
    if isinstance(value, int):
        if -_EXACT <= value <= _EXACT:
            return float(value), None, VT_INT, None
        return None, str(value), VT_INT, None
    if isinstance(value, float):
        return value, None, VT_FLOAT, None
    if isinstance(value, str):
        return None, value, VT_STR, None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return None, hashlib.sha256(data).hexdigest(), VT_BLOB, data
    raise TypeError(f"unsupported value type {type(value).__name__}")


def _decode(num: float | None, text: str | None, vtype: int) -> Any:
    if vtype == VT_NULL:
        return None
    if vtype == VT_BOOL:
        return bool(num)
    if vtype == VT_INT:
        return int(text) if text is not None else int(num or 0)
    if vtype == VT_FLOAT:
        return num
    return text


class PgStore(BatchWriter):
    """PostgreSQL store. Not thread-safe: one owner thread (one connection)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ConnectionError(
                f"cannot connect to the PostgreSQL store ({exc}); check the URL "
                "(postgresql://USER@HOST:PORT/DB), that the server runs and the database exists"
            ) from None
        self._db.execute("SET synchronous_commit = on")
        self.timescale = False
        if not readonly:
            self._create_schema()
        else:
            self.timescale = self._is_hypertable()
        self._counts = _Counts()
        self._series: dict[tuple[str, str, str], int] = {}
        self._new_series: list[tuple[str, str, str]] = []
        self._defs_stored: dict[tuple[str, int], set[int]] = {}
        self._days: set[int] = set()  # partitions known to exist

    # ------------------------------------------------------------------ schema
    def _create_schema(self) -> None:
        db = self._db
        # serialise schema creation between processes starting together
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(7478120)")
            db.execute(SCHEMA)
            exists = db.execute("SELECT to_regclass('points') IS NOT NULL").fetchone()
            if exists and exists[0]:
                self.timescale = self._is_hypertable()
            else:
                self.timescale = self._try_timescale()
                db.execute(POINTS.format(partition="" if self.timescale
                                         else " PARTITION BY RANGE (ts_ms)"))
                if self.timescale:
                    db.execute("SELECT create_hypertable('points', 'ts_ms',"
                               f" chunk_time_interval => {DAY_MS}::bigint)")
            db.execute(VIEWS)
        log.debug("PostgreSQL store ready (%s)",
                 "TimescaleDB hypertable" if self.timescale else "daily partitions")

    def _try_timescale(self) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        if row is None:
            return False
        try:
            with self._db.transaction():
                self._db.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as exc:  # e.g. not in shared_preload_libraries
            log.info("timescaledb is available but cannot be enabled (%s): plain partitions",
                     exc)
            return False
        return True

    def _is_hypertable(self) -> bool:
        try:
            row = self._db.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
            if row is None:
                return False
            row = self._db.execute(
                "SELECT 1 FROM timescaledb_information.hypertables"
                " WHERE hypertable_name = 'points'").fetchone()
        except psycopg.Error:
            return False
        return row is not None

    def _ensure_partitions(self, records: Sequence[BatchRecord]) -> None:
        if self.timescale:
            return
        days: set[int] = set()
        for rec in records:
            for s in rec.samples:
                days.add(s.ts_ms // DAY_MS)
            for col in rec.series:
                if col.ts:
                    days.add(min(col.ts) // DAY_MS)
                    days.add(max(col.ts) // DAY_MS)
        missing = days - self._days
        if not missing:
            return
        # a series spanning several days: fill the range between its first and last day
        lo, hi = min(missing), max(missing)
        for day in range(lo, hi + 1) if hi - lo <= 31 else sorted(missing):
            if day in self._days:
                continue
            name = f"points_d{day}" if day >= 0 else f"points_dm{-day}"
            stmt = sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF points FOR VALUES FROM ({}) TO ({})"
            ).format(sql.Identifier(name), sql.Literal(day * DAY_MS),
                     sql.Literal((day + 1) * DAY_MS))
            for attempt in range(3):
                try:
                    with self._db.transaction():
                        self._db.execute("SELECT pg_advisory_xact_lock(7478121)")
                        self._db.execute(stmt)
                    break
                except psycopg.errors.DuplicateTable:
                    break
                except psycopg.Error:
                    if attempt == 2:
                        raise
            self._days.add(day)

    # ------------------------------------------------------------------ writing
    def _before_commit(self, records: Sequence[BatchRecord]) -> None:
        self._ensure_partitions(records)

    def _write_transaction(self) -> AbstractContextManager[object]:
        return self._db.transaction()

    def _store_definitions(self, rows: list[tuple[Any, ...]]) -> None:
        with self._db.cursor() as cur:
            cur.executemany("INSERT INTO series_dict VALUES (%s, %s, %s, %s, %s)"
                            " ON CONFLICT DO NOTHING", rows)

    def _insert_batch_row(self, row: tuple[Any, ...]) -> bool:
        got = self._db.execute(
            "INSERT INTO batches (gateway, seq, lane, received_ms, stored_ms,"
            " readings, alerts, gaps, digest)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1", row).fetchone()
        return got is not None

    def _stored_digest(self, gateway: str, seq: int) -> bytes | None:
        got = self._db.execute("SELECT digest FROM batches WHERE gateway = %s AND seq = %s",
                               (gateway, seq)).fetchone()
        return bytes(got[0]) if got is not None and got[0] is not None else None

    def _record_conflict(self, row: tuple[Any, ...]) -> None:
        self._db.execute("INSERT INTO seq_conflicts VALUES (%s, %s, %s, %s, %s)", row)

    def _insert_contents(self, rec: BatchRecord) -> None:
        db = self._db
        gw, seq = rec.gateway, rec.seq
        rows: list[tuple[Any, ...]] = []
        blobs: list[tuple[str, int, bytes]] = []

        def add(device: str, metric: str, ts: int, value: Value, quality: int) -> None:
            num, text, vt, blob = _encode(value)
            if blob is not None and text is not None:
                blobs.append((text, len(blob), blob))
            rows.append((sid, ts, num, text, vt, quality, seq))

        for s in rec.samples:
            sid = self._series_id(gw, s.device, s.metric)
            add(s.device, s.metric, s.ts_ms, s.value, int(s.quality))
        for col in rec.series:
            sid = self._series_id(gw, col.device, col.metric)
            for ts, value, quality in zip(col.ts, col.values, col.qualities, strict=True):
                add(col.device, col.metric, ts, value, quality)
        if blobs:
            with db.cursor() as cur:
                cur.executemany("INSERT INTO blobs (sha256, size, data) VALUES (%s, %s, %s)"
                                " ON CONFLICT DO NOTHING", blobs)
        if rows:
            with db.cursor() as cur, cur.copy(
                "COPY points (series, ts_ms, value, value_text, vtype, quality, seq)"
                " FROM STDIN"
            ) as copy:
                for r in rows:
                    copy.write_row(r)
        if rec.alerts:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO alerts (gateway, seq, rule, device, ts_ms, active, severity,"
                    " message, metric, value, labels)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    alert_rows(rec),
                )
        if rec.gaps:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO gaps (gateway, seq, lane, seqs, from_ts_ms, to_ts_ms, batches,"
                    " readings, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    gap_rows(rec),
                )

    def _series_id(self, gw: str, device: str, metric: str) -> int:
        key = (gw, device, metric)
        sid = self._series.get(key)
        if sid is not None:
            return sid
        row = self._db.execute(
            "INSERT INTO series (gateway, device, metric) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING id", key).fetchone()
        if row is not None:
            self._new_series.append(key)
        else:
            row = self._db.execute(
                "SELECT id FROM series WHERE gateway = %s AND device = %s AND metric = %s",
                key).fetchone()
            assert row is not None
        self._series[key] = int(row[0])
        return int(row[0])

    # ------------------------------------------------------------------ reading
    def _rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(query.replace("?", "%s"), params).fetchall()

    def _dict_rows(self, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self._db.execute(query.replace("?", "%s"), params)
        cols = [d[0] for d in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    _VALUE_COLS = "p.value, p.value_text"

    def _decode_stored(self, stored: tuple[Any, ...], vtype: int) -> Any:
        return _decode(stored[0], stored[1], vtype)

    def series_names(
        self, gateway: str, epoch: int, ids: Iterable[int]
    ) -> dict[int, tuple[str, str]]:
        """Stored codec v2 dictionary definitions of ``gateway``'s ``epoch`` for ``ids``."""
        rows = self._db.execute(
            "SELECT id, device, metric FROM series_dict WHERE gateway = %s AND epoch = %s"
            " AND id = ANY(%s)", (gateway, epoch, list(ids))).fetchall()
        return {int(i): (d, m) for i, d, m in rows}

    def has_batch(self, gateway: str, seq: int) -> bool:
        return bool(self._rows("SELECT 1 FROM batches WHERE gateway = ? AND seq = ?",
                               (gateway, seq)))

    def batch_seqs(self, gateway: str) -> list[int]:
        return [int(r[0]) for r in self._rows(
            "SELECT seq FROM batches WHERE gateway = ? ORDER BY seq", (gateway,))]

    def batches(self, gateway: str) -> list[dict[str, Any]]:
        return self._dict_rows(
            "SELECT seq, lane, received_ms, stored_ms, readings, alerts, gaps FROM batches"
            " WHERE gateway = ? ORDER BY seq", (gateway,))

    def count_readings(self, gateway: str | None = None) -> int:
        if gateway is None:
            return int(self._rows("SELECT count(*) FROM points")[0][0])
        return int(self._rows(
            "SELECT count(*) FROM points WHERE series IN"
            " (SELECT id FROM series WHERE gateway = ?)", (gateway,))[0][0])

    def readings(self, *, gateway: str | None = None, device: str | None = None,
                 metric: str | None = None, since_ms: int | None = None,
                 until_ms: int | None = None, limit: int | None = None
                 ) -> Iterator[StoredReading]:
        q, params = readings_query(
            "gateway, device, metric, ts_ms, value, value_text, vtype, quality, seq",
            gateway=gateway, device=device, metric=metric, since_ms=since_ms,
            until_ms=until_ms, limit=limit)
        # a server-side cursor streams a large range instead of loading it all at once
        with self._db.transaction(), self._db.cursor(name="edgegw_readings") as cur:
            cur.itersize = 5000
            cur.execute(q.replace("?", "%s"), params)
            for gw, dev, met, ts, num, text, vtype, quality, seq in cur:
                out: Any
                if vtype == VT_BLOB:
                    size = self._db.execute("SELECT size FROM blobs WHERE sha256 = %s",
                                            (text,)).fetchone()
                    out = {"blob_sha256": text, "size": size[0] if size else None}
                else:
                    out = _decode(num, text, vtype)
                yield StoredReading(gw, dev, met, int(ts), out, int(quality), int(seq))

    def blob(self, sha256: str) -> bytes | None:
        row = self._db.execute("SELECT data FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
        return bytes(row[0]) if row else None

    def stats(self) -> dict[str, int | float | dict[str, Any]]:
        c = self._counts
        return {"batches_stored": c.batches, "batches_duplicate": c.duplicates,
                "readings_stored": c.readings, "alerts_stored": c.alerts,
                "gaps_stored": c.gaps, "transactions": c.transactions,
                "seq_conflicts": c.conflicts}

    def close(self) -> None:
        self._db.close()
