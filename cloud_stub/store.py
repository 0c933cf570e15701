"""The cloud's durable store of ingested batches (SQLite ``DATA/store.db``).

Invariants:
- ``batches(gateway, seq)`` is the PRIMARY KEY: a batch is stored at most once. Its readings,
  alerts and gaps are written in the SAME transaction as its ``batches`` row, so "seen" and
  "stored" can never disagree (dedup and durability are one atomic step).
- WAL mode, ``synchronous=FULL``: once ``commit_*`` returns, the batch survives a power cut;
  only then may the ingest acknowledge it to the gateway.
- Several batches may share one transaction (group commit for throughput); each batch in it is
  still all-or-nothing.
- Readings are stored as ``points`` rows keyed by a ``series`` id (gateway, device, metric):
  half the insert cost of repeating the three names in every row and its index entry. The
  ``readings`` VIEW gives the flat (gateway, device, metric, ts_ms, value, quality) form; the
  (ts_ms, series) index serves time-range queries and keeps inserts append-only (an index led
  by the series made every commit rewrite a leaf page per series, ever slower as data grew).
- Values keep their type: ``vtype`` says null/int/float/bool/str/blob. Numbers are stored as
  INTEGER/REAL, strings as TEXT. Bytes (camera snapshots) go to ``blobs`` keyed by their SHA-256
  (identical frames stored once); the reading's ``value`` is then the hex digest.
- One writer thread per ingest process; several ingest processes (``serve --ingest-processes``)
  share the store through SQLite's write lock (every batch commit is BEGIN IMMEDIATE), dedup by
  the batches primary key; readers (``query``) may run concurrently.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import operator
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

from edgegw.protocol.codec import Series
from edgegw.protocol.fileperms import DB_MODE, prepare_sqlite
from edgegw.protocol.model import Alert, Sample, Value
from edgegw_cloud.store_read import (  # the value types are defined with the read queries
    VT_BLOB,
    VT_BOOL,
    VT_FLOAT,
    VT_INT,
    VT_NULL,
    VT_STR,
    VTYPE_NAMES,
    StoreQueries,
    decode_value,
    readings_query,
)

__all__ = [
    "VTYPE_NAMES", "VT_BLOB", "VT_BOOL", "VT_FLOAT", "VT_INT", "VT_NULL", "VT_STR",
    "BatchRecord", "BatchWriter", "CloudStore", "StoredReading", "alert_rows", "decode_value",
    "gap_rows",
]

#: value types stored as they are (bulk fast path for single-typed series)
_FAST_VTYPES: dict[type, int] = {
    float: VT_FLOAT,
    int: VT_INT,
    bool: VT_BOOL,
    str: VT_STR,
    type(None): VT_NULL,
}

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1  # SQLite's INTEGER
_SERIES_TS = operator.itemgetter(2)  # Series.ts, at C speed
_POINT_COLUMNS = 6  # series, ts_ms, value, vtype, quality, seq
#: rows per multi-row INSERT into ``points``: long enough that the per-statement cost vanishes
#: (50-1000 rows cost the same per row), 768 bound parameters (within the 999 of SQLite before
#: 3.32), a power of two (see _insert_points)
_POINTS_PER_INSERT = 128


@functools.lru_cache(maxsize=16)
def _points_insert_sql(rows: int) -> str:
    """``INSERT INTO points`` of ``rows`` rows (power-of-two row counts: a few texts)."""
    return ("INSERT INTO points (series, ts_ms, value, vtype, quality, seq) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    lane        INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    stored_ms   INTEGER NOT NULL,
    readings    INTEGER NOT NULL,
    alerts      INTEGER NOT NULL DEFAULT 0,
    gaps        INTEGER NOT NULL DEFAULT 0,
    digest      BLOB,
    PRIMARY KEY (gateway, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id      INTEGER PRIMARY KEY,
    gateway TEXT NOT NULL,
    device  TEXT NOT NULL,
    metric  TEXT NOT NULL,
    UNIQUE (gateway, device, metric)
);
CREATE TABLE IF NOT EXISTS points (
    series  INTEGER NOT NULL REFERENCES series (id),
    ts_ms   INTEGER NOT NULL,
    value,
    vtype   INTEGER NOT NULL,
    quality INTEGER NOT NULL,
    seq     INTEGER NOT NULL
);
-- Time first: every batch appends at the index's right edge. An index led by the series id made
-- each commit touch a leaf per series, so inserts slowed down linearly as the store grew
-- (3.9 -> 19 us per row over 300k rows; time first stays ~1.7 us).
DROP INDEX IF EXISTS points_series_ts;
CREATE INDEX IF NOT EXISTS points_ts_series ON points (ts_ms, series);
CREATE VIEW IF NOT EXISTS readings AS
    SELECT s.gateway, s.device, s.metric, p.ts_ms, p.value, p.vtype, p.quality, p.seq
    FROM points p JOIN series s ON s.id = p.series;
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,
    data   BLOB    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    gateway  TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    rule     TEXT    NOT NULL,
    device   TEXT    NOT NULL,
    ts_ms    INTEGER NOT NULL,
    active   INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    message  TEXT    NOT NULL,
    metric   TEXT    NOT NULL,
    value    REAL,
    labels   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (gateway, device, ts_ms);
-- codec v2 series dictionaries: (gateway, epoch, id) -> names; written in the transaction of
-- the batch that defined them, so an acked definition is always resolvable (after restarts too)
CREATE TABLE IF NOT EXISTS series_dict (
    gateway TEXT    NOT NULL,
    epoch   INTEGER NOT NULL,
    id      INTEGER NOT NULL,
    device  TEXT    NOT NULL,
    metric  TEXT    NOT NULL,
    PRIMARY KEY (gateway, epoch, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_conflicts (
    gateway        TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    stored_digest  BLOB,
    offered_digest BLOB,
    received_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    gateway    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    lane       INTEGER NOT NULL,
    seqs       TEXT    NOT NULL,
    from_ts_ms INTEGER NOT NULL,
    to_ts_ms   INTEGER NOT NULL,
    batches    INTEGER NOT NULL,
    readings   INTEGER NOT NULL,
    reason     TEXT    NOT NULL
);
"""


NEW, DUPLICATE, CONFLICT = "new", "duplicate", "conflict"
_NO_IDS: frozenset[int] = frozenset()


def same_batch(stored: bytes | None, offered: bytes | None) -> bool:
    """Whether two digests of batches under one (gateway, seq) name the same batch. A
    re-packed part carries only a prefix of its original's SHA-256 (codec version 3), so the
    shorter of the two is compared; an unknown digest (None, e.g. a version 2 re-pack) cannot
    show a conflict."""
    if stored is None or offered is None:
        return True
    n = min(len(stored), len(offered))
    return n > 0 and bytes(stored[:n]) == bytes(offered[:n])


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One decoded, authenticated batch ready to be stored."""

    gateway: str
    seq: int
    lane: int
    received_ms: int
    samples: Sequence[Sample] = ()
    alerts: Sequence[Alert] = ()
    gaps: Sequence[Any] = ()  # edgegw.protocol.codec.Gap
    #: readings in columnar form (edgegw.protocol.codec.Series), the ingest's fast path
    series: Sequence[Series] = ()
    #: codec v2 dictionary definitions carried by the batch: (epoch, {id: (device, metric)})
    definitions: tuple[int, Mapping[int, tuple[str, str]]] | None = None
    #: SHA-256 of the batch's plaintext: a re-send has the same digest; a different batch
    #: under an already stored (gateway, seq) does not (a sequence conflict, never "delivered")
    digest: bytes | None = None

    @property
    def readings(self) -> int:
        return len(self.samples) + sum(map(len, map(_SERIES_TS, self.series)))


@dataclass
class StoredReading:
    gateway: str
    device: str
    metric: str
    ts_ms: int
    value: Value | dict[str, Any]
    quality: int
    seq: int


@dataclass
class _Counts:
    batches: int = 0
    duplicates: int = 0
    readings: int = 0
    alerts: int = 0
    gaps: int = 0
    transactions: int = 0
    conflicts: int = 0


def alert_rows(rec: BatchRecord) -> list[tuple[Any, ...]]:
    """The batch's ``alerts`` rows (both stores)."""
    return [(rec.gateway, rec.seq, a.rule, a.device, a.ts_ms, int(a.active), int(a.severity),
             a.message, a.metric, a.value, json.dumps(dict(a.labels), sort_keys=True))
            for a in rec.alerts]


def gap_rows(rec: BatchRecord) -> list[tuple[Any, ...]]:
    """The batch's ``gaps`` rows (both stores)."""
    return [(rec.gateway, rec.seq, int(g.lane), json.dumps(list(g.seqs)), g.from_ts_ms,
             g.to_ts_ms, g.batches, g.readings, str(g.reason)) for g in rec.gaps]


def _encode_value(value: Value) -> tuple[Any, int, bytes | None]:
    """(stored value, vtype, blob bytes or None)."""
    if value is None:
        return None, VT_NULL, None
    if isinstance(value, bool):  # before int: bool is an int subclass
        return int(value), VT_BOOL, None
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return value, VT_INT, None
        return str(value), VT_INT, None  # SQLite INTEGER is 64-bit: u64 kept as its digits
    if isinstance(value, float):
        return value, VT_FLOAT, None
    if isinstance(value, str):
        return value, VT_STR, None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return hashlib.sha256(data).hexdigest(), VT_BLOB, data
    raise TypeError(f"unsupported value type {type(value).__name__}")


class BatchWriter(StoreQueries):
    """The commit and dedup logic both stores share (SQLite here, PostgreSQL in ``store_pg``):
    batches are deduplicated by (gateway, seq) in one transaction per group; the backend
    supplies the SQL through the ``_``-hooks below."""

    _counts: _Counts
    _series: dict[tuple[str, str, str], int]
    _new_series: list[tuple[str, str, str]]  # created in the open transaction
    #: dictionary ids per (gateway, epoch) whose definitions this writer's committed
    #: transactions stored (or found stored): not sent again (a backlog sealed before the
    #: cloud's first ack repeats every definition in every batch)
    _defs_stored: dict[tuple[str, int], set[int]]

    def commit_batch(
        self,
        gateway: str,
        seq: int,
        lane: int,
        received_ms: int,
        samples: Sequence[Sample] = (),
        alerts: Sequence[Alert] = (),
        gaps: Sequence[Any] = (),
    ) -> bool:
        """Store one batch atomically. False = duplicate (already stored, nothing written)."""
        record = BatchRecord(gateway, seq, lane, received_ms, samples, alerts, gaps)
        return self.commit_many([record])[0]

    def commit_many(self, records: Sequence[BatchRecord]) -> list[bool]:
        """Store several batches in ONE transaction; per batch True = new, False = duplicate
        (or a sequence conflict: see ``commit_statuses``).

        Durable (fsync'd, synchronous=FULL) when this returns. On any error the whole
        transaction is rolled back and the error propagates: nothing of it was stored.
        """
        return [st == NEW for st in self.commit_statuses(records)]

    def commit_statuses(self, records: Sequence[BatchRecord]) -> list[str]:
        """``commit_many`` with a status per batch: ``NEW`` (stored now), ``DUPLICATE`` (the
        same batch was stored before: same digest, or no digest known) or ``CONFLICT`` (a
        DIFFERENT batch is stored under this (gateway, seq): nothing written, recorded in
        ``seq_conflicts``; the caller must not ack it as delivered)."""
        if not records:
            return []
        self._before_commit(records)
        result: list[str] = []
        n_readings = n_alerts = n_gaps = 0
        stored_defs = self._defs_stored
        new_defs: dict[tuple[str, int], set[int]] = {}  # written by this transaction
        try:
            with self._write_transaction():
                stored_ms = time.time_ns() // 1_000_000  # the group's commit time (latency)
                for rec in records:
                    if rec.definitions is not None and rec.definitions[1]:
                        epoch, defs = rec.definitions
                        dict_key = (rec.gateway, epoch)
                        known = stored_defs.get(dict_key, _NO_IDS)
                        fresh = new_defs.setdefault(dict_key, set())
                        rows = [(rec.gateway, epoch, i, d, m) for i, (d, m) in defs.items()
                                if i not in known and i not in fresh]
                        if rows:
                            self._store_definitions(rows)
                            fresh.update(row[2] for row in rows)
                for rec in records:
                    readings = rec.readings
                    if not self._insert_batch_row(
                            (rec.gateway, rec.seq, int(rec.lane), rec.received_ms, stored_ms,
                             readings, len(rec.alerts), len(rec.gaps), rec.digest)):
                        stored = self._stored_digest(rec.gateway, rec.seq)
                        if not same_batch(stored, rec.digest):
                            self._record_conflict(
                                (rec.gateway, rec.seq, stored, rec.digest, rec.received_ms))
                            result.append(CONFLICT)
                        else:
                            result.append(DUPLICATE)
                        continue
                    result.append(NEW)
                    self._insert_contents(rec)
                    n_readings += readings
                    n_alerts += len(rec.alerts)
                    n_gaps += len(rec.gaps)
        except BaseException:
            for key in self._new_series:  # their rows are gone with the transaction
                self._series.pop(key, None)
            self._new_series.clear()
            raise  # new_defs are dropped: their rows are gone with the transaction too
        self._new_series.clear()
        for dict_key, ids in new_defs.items():
            if ids:
                stored_defs.setdefault(dict_key, set()).update(ids)
        c = self._counts
        c.transactions += 1
        c.batches += result.count(NEW)
        c.duplicates += result.count(DUPLICATE)
        c.conflicts += result.count(CONFLICT)
        c.readings += n_readings
        c.alerts += n_alerts
        c.gaps += n_gaps
        return result

    # backend hooks (all but _before_commit run inside _write_transaction)
    def _before_commit(self, records: Sequence[BatchRecord]) -> None:
        """Preparation outside the transaction (PostgreSQL: partitions)."""

    def _write_transaction(self) -> contextlib.AbstractContextManager[object]:
        raise NotImplementedError

    def _store_definitions(self, rows: list[tuple[Any, ...]]) -> None:
        """Store codec v2 dictionary definitions, ``series_dict`` rows (gateway, epoch, id,
        device, metric); already stored ones are kept (``commit_statuses`` leaves out the ids
        this writer has committed before)."""
        raise NotImplementedError

    def _insert_batch_row(self, row: tuple[Any, ...]) -> bool:
        """Insert a ``batches`` row (gateway, seq, lane, received_ms, stored_ms, readings,
        alerts, gaps, digest) unless (gateway, seq) is stored; True = inserted."""
        raise NotImplementedError

    def _stored_digest(self, gateway: str, seq: int) -> bytes | None:
        raise NotImplementedError

    def _record_conflict(self, row: tuple[Any, ...]) -> None:
        """Note a different batch under a stored (gateway, seq): a ``seq_conflicts`` row
        (gateway, seq, stored digest, new digest, received_ms)."""
        raise NotImplementedError

    def _insert_contents(self, rec: BatchRecord) -> None:
        raise NotImplementedError


class CloudStore(BatchWriter):
    """SQLite store of everything the ingest accepted. Not thread-safe: one owner thread."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(
                    f"{self.path}: no cloud store here (run `edgegw-cloud serve` to create it, "
                    "or pass the right --data-dir)"
                )
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            prepare_sqlite(self.path, DB_MODE)  # 0600 (and its -wal/-shm) before SQLite opens it
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # several ingest processes may open the store at once: wait for each other's locks
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(batches)")}
            if "digest" not in cols:  # stores created before per-batch digests
                try:
                    self._db.execute("ALTER TABLE batches ADD COLUMN digest BLOB")
                except sqlite3.OperationalError as exc:  # another process migrated it first
                    if "duplicate column" not in str(exc):
                        raise
        self._db.execute("PRAGMA busy_timeout=10000")
        self._counts = _Counts()
        self._series: dict[tuple[str, str, str], int] = {}
        self._new_series: list[tuple[str, str, str]] = []  # created in the open transaction
        self._defs_stored: dict[tuple[str, int], set[int]] = {}

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[None]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _store_definitions(self, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO series_dict VALUES (?, ?, ?, ?, ?)", rows)

    def _insert_batch_row(self, row: tuple[Any, ...]) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO batches"
            " (gateway, seq, lane, received_ms, stored_ms, readings, alerts, gaps,"
            " digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        return cur.rowcount != 0

    def _stored_digest(self, gateway: str, seq: int) -> bytes | None:
        row = self._db.execute("SELECT digest FROM batches WHERE gateway = ? AND seq = ?",
                               (gateway, seq)).fetchone()
        return row[0] if row is not None else None

    def _record_conflict(self, row: tuple[Any, ...]) -> None:
        self._db.execute("INSERT INTO seq_conflicts VALUES (?, ?, ?, ?, ?)", row)

    def _insert_contents(self, rec: BatchRecord) -> None:
        db = self._db
        gw, seq = rec.gateway, rec.seq
        flat: list[Any] = []  # the points rows, flattened: _POINT_COLUMNS values per row
        blobs = []
        series = self._series
        for s in rec.samples:
            value, vtype, blob = _encode_value(s.value)
            if blob is not None:
                blobs.append((value, len(blob), blob))
            sid = series.get((gw, s.device, s.metric))
            if sid is None:
                sid = self._series_id(gw, s.device, s.metric)
            flat += (sid, s.ts_ms, value, vtype, int(s.quality), seq)
        get = series.get
        for col in rec.series:
            if len(col.ts) == 1:  # a gateway batch usually holds one reading per series
                value = col.values[0]
                vt = _FAST_VTYPES.get(type(value))
                if vt is not None and (vt != VT_INT or _I64_MIN <= value <= _I64_MAX):
                    sid = get((gw, col.device, col.metric))
                    if sid is None:
                        sid = self._series_id(gw, col.device, col.metric)
                    flat += (sid, col.ts[0], int(value) if vt == VT_BOOL else value, vt,
                             col.qualities[0], seq)
                    continue
            flat.extend(chain.from_iterable(self._series_rows(gw, seq, col, blobs)))
        if blobs:
            db.executemany(
                "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)", blobs
            )
        if flat:
            self._insert_points(flat)
        if rec.alerts:
            db.executemany(
                "INSERT INTO alerts (gateway, seq, rule, device, ts_ms, active, severity, message,"
                " metric, value, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                alert_rows(rec),
            )
        if rec.gaps:
            db.executemany(
                "INSERT INTO gaps (gateway, seq, lane, seqs, from_ts_ms, to_ts_ms, batches,"
                " readings, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                gap_rows(rec),
            )

    def _insert_points(self, flat: list[Any]) -> None:
        """Insert ``points`` rows given flattened (``_POINT_COLUMNS`` values per row) in
        multi-row INSERTs of ``_POINTS_PER_INSERT`` rows, the rest in power-of-two chunks (a
        handful of statement texts, all in the connection's statement cache). Half the CPU of
        an ``executemany`` of one-row INSERTs (one statement step per row, each releasing and
        re-taking the GIL: the ingest's opener thread decodes meanwhile)."""
        db = self._db
        width = _POINT_COLUMNS
        n = len(flat) // width
        pos = 0
        chunk = _POINTS_PER_INSERT
        while n:
            while chunk > n:
                chunk >>= 1
            k = chunk * width
            db.execute(_points_insert_sql(chunk), flat[pos:pos + k])
            pos += k
            n -= chunk

    def _series_rows(
        self, gw: str, seq: int, col: Series, blobs: list[tuple[Any, int, bytes]]
    ) -> Iterable[tuple[Any, ...]]:
        """Rows of one decoded series: one id lookup and, for a single-typed column, no
        per-value Python work; mixed columns go through ``_encode_value``. (A one-reading
        series of a plain type never gets here: ``_insert_contents`` writes it inline.)"""
        sid = self._series.get((gw, col.device, col.metric))
        if sid is None:
            sid = self._series_id(gw, col.device, col.metric)
        n = len(col.ts)
        types = set(map(type, col.values))
        vtype = _FAST_VTYPES.get(types.pop()) if len(types) == 1 else None
        if vtype == VT_INT and not (min(col.values) >= _I64_MIN and max(col.values) <= _I64_MAX):
            vtype = None  # beyond SQLite's 64-bit INTEGER: _encode_value keeps the digits
        if vtype is not None:
            values: Iterable[Any] = col.values
            if vtype == VT_BOOL:
                values = map(int, col.values)
            return zip(
                repeat(sid, n),
                col.ts,
                values,
                repeat(vtype, n),
                col.qualities,
                repeat(seq, n),
                strict=False,
            )
        rows = []
        for ts, value, quality in zip(col.ts, col.values, col.qualities, strict=True):
            stored, vt, blob = _encode_value(value)
            if blob is not None:
                blobs.append((stored, len(blob), blob))
            rows.append((sid, ts, stored, vt, quality, seq))
        return rows

    def _series_id(self, gw: str, device: str, metric: str) -> int:
        key = (gw, device, metric)
        db = self._db
        row = db.execute(
            "SELECT id FROM series WHERE gateway = ? AND device = ? AND metric = ?", key
        ).fetchone()
        if row is None:
            sid = int(
                db.execute(
                    "INSERT INTO series (gateway, device, metric) VALUES (?, ?, ?)", key
                ).lastrowid
                or 0
            )
            self._new_series.append(key)
        else:
            sid = int(row[0])
        self._series[key] = sid
        return sid

    # ------------------------------------------------------------------ reading
    def series_names(
        self, gateway: str, epoch: int, ids: Iterable[int]
    ) -> dict[int, tuple[str, str]]:
        """Stored dictionary definitions of ``gateway``'s ``epoch`` for ``ids``."""
        out: dict[int, tuple[str, str]] = {}
        for i in ids:
            row = self._db.execute(
                "SELECT device, metric FROM series_dict WHERE gateway=? AND epoch=? AND id=?",
                (gateway, epoch, i),
            ).fetchone()
            if row is not None:
                out[i] = (row[0], row[1])
        return out

    def has_batch(self, gateway: str, seq: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM batches WHERE gateway = ? AND seq = ?", (gateway, seq)
        ).fetchone()
        return row is not None

    def _dicts(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Rows of ``sql`` as dicts keyed by column name."""
        cur = self._db.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def batch_seqs(self, gateway: str) -> list[int]:
        return [
            r[0]
            for r in self._db.execute(
                "SELECT seq FROM batches WHERE gateway = ? ORDER BY seq", (gateway,)
            )
        ]

    def batches(self, gateway: str) -> list[dict[str, int]]:
        return self._dicts(
            "SELECT seq, lane, received_ms, stored_ms, readings, alerts, gaps FROM batches"
            " WHERE gateway = ? ORDER BY seq",
            (gateway,),
        )

    def count_readings(self, gateway: str | None = None) -> int:
        if gateway is None:
            return int(self._db.execute("SELECT count(*) FROM points").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT count(*) FROM points WHERE series IN"
                " (SELECT id FROM series WHERE gateway = ?)",
                (gateway,),
            ).fetchone()[0]
        )

    def readings(
        self,
        *,
        gateway: str | None = None,
        device: str | None = None,
        metric: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
    ) -> Iterator[StoredReading]:
        """Stored readings matching every given filter, by (gateway, device, metric, ts)."""
        sql, params = readings_query(
            "gateway, device, metric, ts_ms, value, vtype, quality, seq", gateway=gateway,
            device=device, metric=metric, since_ms=since_ms, until_ms=until_ms, limit=limit)
        for gw, dev, met, ts, value, vtype, quality, seq in self._db.execute(sql, params):
            out: Value | dict[str, Any]
            if vtype == VT_BLOB:
                size = self._db.execute(
                    "SELECT size FROM blobs WHERE sha256 = ?", (value,)
                ).fetchone()
                out = {"blob_sha256": value, "size": size[0] if size else None}
            else:
                out = decode_value(value, vtype)
            yield StoredReading(gw, dev, met, ts, out, quality, seq)

    def blob(self, sha256: str) -> bytes | None:
        row = self._db.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return bytes(row[0]) if row else None

    def stats(self) -> dict[str, int | float | dict[str, Any]]:
        c = self._counts
        return {
            "batches_stored": c.batches,
            "batches_duplicate": c.duplicates,
            "readings_stored": c.readings,
            "alerts_stored": c.alerts,
            "gaps_stored": c.gaps,
            "transactions": c.transactions,
            "seq_conflicts": c.conflicts,
        }

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def _dict_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self._dicts(sql, params)

    def close(self) -> None:
        self._db.close()
