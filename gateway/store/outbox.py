"""Outbox: the crash-safe, bounded, lane-ordered store of sealed batches (SQLite).

Invariants (read these before changing anything):

1. Sequence numbers. Every batch gets a seq that is unique and strictly greater than every seq
   this outbox ever handed out, across lanes and restarts. The next seq lives in ``meta`` and is
   written in the same transaction as the batch that used it, so deleting the newest rows
   (delivered or dropped) never lets a seq be reused. A brand-new database starts at the wall
   clock in microseconds (unless ``first_seq`` is given), so an outbox that was wiped or reset
   after corruption continues above every seq the cloud has seen, as long as the clock is sane.
2. Durability. ``append`` returns only after COMMIT (WAL, ``synchronous=FULL``): a returned seq
   survives a crash or power cut. One transaction per append holds the batch row, the seq
   counter and, when the bound forced evictions, the deletes and the gap record naming them.
3. Who deletes a batch: ``settle(DELIVERED)`` (the cloud acked after its durable commit);
   ``settle(REJECTED)`` and a failed integrity check (both move the row to ``quarantine``);
   eviction when full (counted per lane and named by a gap record); ``replace`` (re-pack:
   telemetry batches deleted in the transaction that stores the one batch carrying all their
   readings under their seqs, see ``edgegw.store.repack``). Nothing else.
4. Integrity. Each row stores the CRC32 of its envelope. ``next_batches`` verifies the CRC, the
   lane and that the envelope header's seq equals the row's seq before returning a row; a row
   that fails is moved to quarantine and counted, never returned, never raised.
5. Bound. Accounted bytes = sum over stored rows (batches and quarantine) of the envelope
   length plus SQLite's storage cost for it (``row_cost``: cell, overflow pages, index entry).
   Quarantine keeps at most the newest 1000 rows and max_bytes / 8 (forensics only).
   An append never makes the accounted bytes exceed ``max_bytes``. The files (db + wal) stay
   within ``max_bytes + slack_bytes``: free pages are reclaimed by incremental vacuum once they
   exceed ``vacuum_threshold`` (checked every 64 operations and after each eviction pass, and
   by ``maintain()``, which the runtime calls every ``outbox.vacuum_every``), and the WAL is
   checkpointed and truncated to ``wal_limit``. slack = 2 x wal_limit + vacuum_threshold +
   max_bytes / 8 (b-tree pages not full) + 128 KiB (schema), with wal_limit = max_bytes / 16
   and vacuum_threshold = max_bytes / 32, each clamped to [64 KiB | 32 KiB, 4 MiB]: 64 MiB ->
   ~18 MiB of slack. Measured worst case: +11% of max_bytes at 4 MiB, +67% at 256 KiB.
6. Order. ``next_batches`` returns ALERT before TELEMETRY before BULK, by seq within a lane.
7. When full (``when_full``):
   - ``drop_oldest_telemetry`` (default): evict the oldest BULK, then the oldest TELEMETRY,
     then (last resort) the oldest ALERT batches - but never a lane of higher priority than the
     incoming batch: a camera image cannot push out telemetry, telemetry cannot push out alerts.
     If that frees too little, the new batch is refused with ``OutboxFull`` (counted).
   - ``drop_oldest``: evict the oldest batches of any lane.
   - ``reject_new``: refuse the new batch with ``OutboxFull`` (counted).
   Under every policy a single batch larger than max_bytes / 2 is refused with ``OutboxFull``.
   Each eviction pass appends ONE gap record (lane ALERT, envelope flag ``FLAG_GAP``,
   ``encode_batch(gaps=[one Gap per lane])``) naming the dropped seqs, time interval and
   reading count, in the same transaction. When a gap record is itself evicted, its entries
   are carried forward into the new one (which also names its seq), so every dropped seq stays
   named exactly once in the records still stored or delivered.
8. Corruption of the file. A database SQLite reports as corrupt at open (SQLITE_CORRUPT,
   SQLITE_NOTADB or a failing ``quick_check``), or later during an operation, is renamed to
   ``<path>.corrupt-<unix ts>`` (with its -wal/-shm), an ERROR is logged, ``corrupt_files`` is
   counted, the rows that are still readable and pass their CRC are salvaged into a fresh
   database and the seq counter continues above them. I/O and permission errors are not
   corruption: they propagate and the file is left alone.
9. Threads. Synchronous; calls are serialised by a lock. The runtime calls it from one thread.
10. Settles are not fsynced. The transaction of ``settle(DELIVERED | RETRY)`` commits with
   ``synchronous=NORMAL`` (issue 13: it was one fsync per ack). In WAL mode such a commit is
   atomic and the WAL is a sequential log replayed up to its last valid commit, so a power cut
   keeps a PREFIX of the transactions: every synced commit (each append, replace, give-up,
   quarantine) and everything before it, and at most loses the settles since the last synced
   commit or checkpoint (which fsyncs the WAL first). What such a loss does: the delivered
   batch is back in the outbox and is sent again, same seq and same envelope; the cloud holds
   that (gateway, seq) with the same plaintext digest, answers "duplicate, delivered", and the
   next settle deletes it (docs/delivery.md: re-sending is always safe). A lost RETRY count
   delays the poison policy by one attempt. Nothing acked is ever lost, nothing is stored
   twice in the cloud, and no seq can be reused (the seq counter is written by appends).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from edgegw.model import Lane
from edgegw.protocol.ack import AckStatus
from edgegw.protocol.codec import CodecError, Gap, decode_batch, encode_batch
from edgegw.protocol.envelope import FLAG_GAP, EnvelopeError, open_sealed, parse_header
from edgegw.protocol.fileperms import DB_MODE, prepare_sqlite
from edgegw.protocol.keys import Sealer

log = logging.getLogger("edgegw.store")

WhenFull = Literal["drop_oldest_telemetry", "drop_oldest", "reject_new"]
WHEN_FULL: tuple[str, ...] = ("drop_oldest_telemetry", "drop_oldest", "reject_new")
GAP_REASON = "outbox_full"
#: gap record reasons (``Gap.reason``); docs/delivery.md explains each
GAP_DISK_FULL = "disk_full"
GAP_CORRUPT = "outbox_corrupt"
GAP_UNCLEAN_STOP = "unclean_stop"
GAP_UNDELIVERABLE = "undeliverable"
GAP_REJECTED = "rejected"
_KIB = 1024
_MIB = 1024 * _KIB
_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_MAINTAIN_EVERY = 64  # operations between cheap freelist / WAL size checks
_QUARANTINE_MAX_ROWS = 1000
_LANE_VALUES = frozenset(int(x) for x in Lane)
_COLS = "seq, lane, envelope, crc, count, first_ts_ms, last_ts_ms, attempts"

T = TypeVar("T")
# (seq, lane, envelope length, count, first_ts_ms, last_ts_ms, envelope flags byte)
Victim = tuple[int, int, int, int, int, int, bytes]

__all__ = ["WHEN_FULL", "Outbox", "OutboxError", "OutboxFull", "StoredBatch"]


class OutboxError(Exception):
    """Base class of outbox errors."""


class OutboxFull(OutboxError):
    """The batch was refused because the outbox is full (policy ``reject_new``, or no
    evictable batch of equal or lower priority). Counted in ``stats()['rejected_new']``."""

    def __init__(self, message: str, lane: Lane, size: int) -> None:
        super().__init__(message)
        self.lane = lane
        self.size = size


@dataclass(frozen=True, slots=True)
class StoredBatch:
    seq: int
    lane: Lane
    envelope: bytes
    count: int
    first_ts_ms: int
    last_ts_ms: int
    attempts: int


def _lanes_zero() -> dict[str, int]:
    return {lane.name.lower(): 0 for lane in Lane}


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def _is_gap_record(v: Victim) -> bool:
    return bool(v[6]) and bool(v[6][0] & FLAG_GAP)


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    msg = str(exc)
    return "malformed" in msg or "not a database" in msg


@dataclass
class _Salvage:
    """What could be read back from a corrupt outbox file."""

    rows: list[tuple[object, ...]] = field(default_factory=list)  # intact (CRC + header ok)
    bad: list[int] = field(default_factory=list)  # seqs of rows read back damaged
    bad_readings: int = 0
    seq_floor: int = 0
    oldest_ts: int = 0  # oldest first_ts among rows read back (intact or not)
    delivered_ts: int = 0  # meta: newest last_ts ever settled delivered
    created_ms: int = 0
    lost_possible: bool = False  # some part of the batches table could not be read


_SALVAGE_PROBES = 4000


def _scan_range(conn: sqlite3.Connection, lo: int, hi: int, desc: bool
                ) -> tuple[list[tuple[object, ...]], bool]:
    """Rows with lo <= seq <= hi in one direction until the first unreadable page."""
    out: list[tuple[object, ...]] = []
    order = "DESC" if desc else "ASC"
    try:
        for row in conn.execute(f"SELECT {_COLS} FROM batches WHERE seq BETWEEN ? AND ? "
                                f"ORDER BY seq {order}", (lo, hi)):
            out.append(tuple(row))
    except sqlite3.Error:
        return out, False
    return out, True


def _readable_from(conn: sqlite3.Connection, x: int, desc: bool) -> bool:
    """True if a scan starting at ``x`` reads its first row (or finds none) without error."""
    q = ("SELECT seq FROM batches WHERE seq <= ? ORDER BY seq DESC LIMIT 1" if desc else
         "SELECT seq FROM batches WHERE seq >= ? ORDER BY seq LIMIT 1")
    try:
        conn.execute(q, (x,)).fetchall()
    except sqlite3.Error:
        return False
    return True


def _harvest(conn: sqlite3.Connection, seen: dict[int, tuple[object, ...]], s: _Salvage,
             desc: bool, probes: list[int]) -> None:
    """One pass over the seq space (ascending or descending): scan until damage, then binary
    search the first seq past the damage from which a scan reads again, and go on from there."""
    lo, hi = 0, 2**63 - 1
    pos = hi if desc else lo
    while lo <= pos <= hi and probes[0] < _SALVAGE_PROBES:
        probes[0] += 1
        rows, complete = _scan_range(conn, lo, pos, True) if desc else _scan_range(
            conn, pos, hi, False)
        for r in rows:
            seen[int(r[0])] = r  # type: ignore[call-overload]
        if complete:
            return
        s.lost_possible = True
        if rows:
            pos = int(rows[-1][0]) + (-1 if desc else 1)  # type: ignore[call-overload]
        # pos sits on damage: find the nearest seq beyond it where a scan reads again
        if desc:
            left, right = lo - 1, pos - 1  # largest x in [lo, pos-1] readable
            while left < right and probes[0] < _SALVAGE_PROBES:
                probes[0] += 1
                mid = (left + right + 1) // 2
                if _readable_from(conn, mid, True):
                    left = mid
                else:
                    right = mid - 1
            pos = left
        else:
            left, right = pos + 1, hi + 1  # smallest x in [pos+1, hi] readable
            while left < right and probes[0] < _SALVAGE_PROBES:
                probes[0] += 1
                mid = (left + right) // 2
                if _readable_from(conn, mid, False):
                    right = mid
                else:
                    left = mid + 1
            pos = left


def _salvage(path: Path) -> _Salvage:
    """Read every row still readable from a damaged outbox, row by row.

    A plain ``SELECT ... ORDER BY seq`` stops at the first bad page. Here the seq space is
    scanned ascending and descending; at each damaged spot a binary search over seq finds the
    nearest point past it from which a scan reads again (the b-tree's interior pages lead
    around damaged leaves), so one bad page costs only the rows stored on it. Every row read back
    must still pass its CRC and header check. Rows on damaged pages are lost (and a readable
    run between two damaged regions may be missed by both passes); the caller's gap record
    covers the whole interval that may hold them. (SQLite's ``.recover`` would do the same, but
    Debian's sqlite3 shell is built without the ``sqlite_dbpage`` table it needs.)
    """
    s = _Salvage()
    work = path.with_name(path.name + ".salvage")
    try:
        _salvage_copy(path, work)
        conn = sqlite3.connect(f"file:{work}?mode=ro", uri=True)
    except (OSError, sqlite3.Error):
        s.lost_possible = True
        _remove_db(work)
        return s
    try:
        for query, attr in (
            ("SELECT max(value) FROM meta WHERE key='next_seq'", "seq_floor"),
            ("SELECT max(seq) + 1 FROM quarantine", "seq_floor"),
            ("SELECT max(value) FROM meta WHERE key='delivered_ts_ms'", "delivered_ts"),
            ("SELECT max(value) FROM meta WHERE key='created_ms'", "created_ms"),
        ):
            try:
                v = conn.execute(query).fetchone()[0]
                if isinstance(v, int):
                    setattr(s, attr, max(getattr(s, attr), v))
            except sqlite3.Error:
                s.lost_possible = True
        seen: dict[int, tuple[object, ...]] = {}
        probes = [0]
        for desc in (False, True):
            _harvest(conn, seen, s, desc, probes)
        for seq in sorted(seen):
            row = seen[seq]
            env, crc = row[2], row[3]
            ts = row[5]
            if isinstance(ts, int) and ts > 0:
                s.oldest_ts = min(s.oldest_ts, ts) if s.oldest_ts else ts
            s.seq_floor = max(s.seq_floor, seq + 1)
            ok = (isinstance(env, bytes) and zlib.crc32(env) == crc
                  and not Outbox._integrity_problem(seq, row[1], env, crc))
            if ok:
                s.rows.append(row)
            else:
                s.bad.append(seq)
                if isinstance(row[4], int):
                    s.bad_readings += row[4]
    finally:
        conn.close()
        _remove_db(work)
    return s


def _salvage_copy(src: Path, dst: Path) -> None:
    """Copy a damaged database (and its WAL) for reading; if the file was truncated, make the
    header's page count match what is left (SQLite otherwise refuses every read)."""
    _remove_db(dst)
    shutil.copyfile(src, dst)
    if Path(f"{src}-wal").exists():
        shutil.copyfile(f"{src}-wal", f"{dst}-wal")
    with open(dst, "r+b") as f:
        head = f.read(100)
        size = f.seek(0, 2)
        if len(head) == 100 and head.startswith(b"SQLite format 3\0"):
            page = int.from_bytes(head[16:18], "big")
            page = 65536 if page == 1 else page
            pages = int.from_bytes(head[28:32], "big")
            if page >= 512 and pages * page > size:
                f.seek(28)
                f.write((size // page).to_bytes(4, "big"))


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


class Outbox:
    """Store-and-forward buffer of sealed batches. See the module docstring for invariants."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        when_full: WhenFull | str = "drop_oldest_telemetry",
        sealer: Sealer,
        first_seq: int | None = None,
        previous_keys: Iterable[bytes] = (),
        min_free_bytes: int = 0,
        report_unclean_stop: bool = False,
    ) -> None:
        if when_full not in WHEN_FULL:
            raise ValueError(f"outbox.when_full {when_full!r} is not one of {', '.join(WHEN_FULL)}")
        if max_bytes < 64 * _KIB:
            raise ValueError(f"outbox.max_bytes {max_bytes} is too small (at least 64KiB)")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.when_full = when_full
        self.sealer = sealer
        self._first_seq = first_seq
        self.previous_keys = [bytes(k) for k in previous_keys]
        self.min_free_bytes = int(min_free_bytes)
        self.report_unclean_stop = report_unclean_stop
        #: readings refused since the last successful append, per gap reason and lane:
        #: (first ts, last ts, batches, readings); written as a gap record by the next append
        self._refused: dict[tuple[str, int], list[int]] = {}
        #: the batch the last ``append`` stored, if it stored nothing else (no gap record):
        #: read by its caller in the outbox thread right after the append
        self.last_appended: StoredBatch | None = None
        self._disk_low = False
        self._lock = threading.RLock()
        #: WAL is truncated to this after checkpoints; also the auto-checkpoint size
        self.wal_limit = _clamp(self.max_bytes // 16, 64 * _KIB, 4 * _MIB)
        #: free pages beyond this are returned to the file system by incremental vacuum
        self.vacuum_threshold = _clamp(self.max_bytes // 32, 32 * _KIB, 4 * _MIB)
        self._ops = 0
        self._c: dict[str, int] = dict.fromkeys(
            ("appended", "appended_readings", "delivered", "retried", "rejected",
             "corrupt_rows", "quarantined", "gaps", "corrupt_files", "salvaged_rows",
             "settle_unknown", "vacuums", "checkpoints", "resealed", "reseal_unknown_key",
             "given_up", "disk_full", "unclean_stops", "lost_in_corruption", "resequenced"), 0)
        self._dropped = {"batches": _lanes_zero(), "readings": _lanes_zero(),
                         "bytes": _lanes_zero()}
        self._rejected_new = _lanes_zero()
        self._open()

    # ------------------------------------------------------------------ open / recovery
    def _connect(self) -> sqlite3.Connection:
        prepare_sqlite(self.path, DB_MODE)  # 0600 before SQLite creates it (and its -wal/-shm)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # effective only before any table
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={self.wal_limit}").fetchall()
            self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA wal_autocheckpoint={max(16, self.wal_limit // self.page_size)}")
            conn.executescript(
                """
                BEGIN IMMEDIATE;
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS batches (
                    seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, envelope BLOB NOT NULL,
                    crc INTEGER NOT NULL, count INTEGER NOT NULL, first_ts_ms INTEGER NOT NULL,
                    last_ts_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
                CREATE INDEX IF NOT EXISTS batches_lane_seq ON batches (lane, seq);
                CREATE TABLE IF NOT EXISTS quarantine (
                    seq INTEGER PRIMARY KEY, lane INTEGER, envelope BLOB, crc INTEGER,
                    count INTEGER, first_ts_ms INTEGER, last_ts_ms INTEGER, attempts INTEGER,
                    reason TEXT NOT NULL, at_ms INTEGER NOT NULL);
                COMMIT;
                """
            )
            if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                log.warning("outbox %s was created without incremental auto-vacuum; converting "
                            "(one full VACUUM)", self.path)
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
            check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                raise sqlite3.DatabaseError(f"quick_check failed: {'; '.join(check[:3])}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> None:
        salvage = _Salvage()
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc) and "quick_check" not in str(exc):
                raise
            salvage = self._move_aside(exc)
            # the old counter may be unreadable: continue above it via the clock (invariant 1)
            salvage.seq_floor = max(salvage.seq_floor, time.time_ns() // 1000)
            self._conn = self._connect()
        self._load(salvage)

    def _move_aside(self, exc: BaseException) -> _Salvage:
        """Rename a corrupt database (and its WAL) out of the way; return what is salvageable."""
        stamp = int(time.time())
        dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{dest}{suffix}")
        self._c["corrupt_files"] += 1
        salvage = _salvage(dest)
        log.error(
            "outbox database %s is corrupt (%s); moved it to %s and started a fresh one "
            "(%d intact batches salvaged row by row, %d damaged rows; a gap record names the "
            "interval that may be lost)", self.path, exc, dest, len(salvage.rows),
            len(salvage.bad),
        )
        return salvage

    def _meta(self, key: str) -> int | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row is not None and isinstance(row[0], int) else None

    def _load(self, salvage: _Salvage | None = None, seq_floor: int = 0) -> None:
        c = self._conn
        brand_new = self._meta("next_seq") is None
        if salvage is not None and salvage.rows:
            c.execute("BEGIN IMMEDIATE")
            c.executemany(f"INSERT OR IGNORE INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                          salvage.rows)
            c.execute("COMMIT")
            self._c["salvaged_rows"] += len(salvage.rows)
        floor = max(seq_floor, salvage.seq_floor if salvage is not None else 0)
        for query in ("SELECT max(seq) + 1 FROM batches", "SELECT max(seq) + 1 FROM quarantine",
                      "SELECT value FROM meta WHERE key='next_seq'"):
            v = c.execute(query).fetchone()
            if v is not None and isinstance(v[0], int):
                floor = max(floor, v[0])
        persisted = floor
        if self._first_seq is not None:
            # tests pin the sequence: the given start replaces the clock floor
            floor = max(floor, self._first_seq) if brand_new and floor == 0 else floor
        else:
            # Invariant 1: every open continues above the wall clock in microseconds, so an
            # outbox whose counter was lost (WAL deleted while stopped, a restored backup,
            # salvage) never reuses a sequence the cloud has already acknowledged.
            clock = time.time_ns() // 1000
            if not brand_new and persisted < clock - 3_600_000_000:
                log.info("outbox %s: persisted sequence %d is more than an hour behind the "
                         "clock; continuing at the clock (%d)", self.path, persisted, clock)
            floor = max(floor, clock)
        self._next_seq = max(floor, 1)
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?)",
                  (self._next_seq,))
        if brand_new:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('created_ms', ?)",
                      (time.time_ns() // 1_000_000,))
        self._lane_batches = _lanes_zero()
        self._lane_bytes = _lanes_zero()
        self._used = 0
        for lane, size in c.execute("SELECT lane, length(envelope) FROM batches"):
            name = Lane(lane).name.lower() if lane in _LANE_VALUES else None
            if name is not None:
                self._lane_batches[name] += 1
                self._lane_bytes[name] += size
            self._used += self.row_cost(size)
        for (size,) in c.execute("SELECT length(envelope) FROM quarantine"):
            self._used += self.row_cost(size or 0)
        if salvage is not None and (salvage.lost_possible or salvage.bad):
            self._gap_for_salvage(salvage)
        self._reseal_if_key_changed()
        unclean = self._meta("open") == 1
        if unclean:
            self._c["unclean_stops"] += 1
            if self.report_unclean_stop:
                self._gap_for_unclean_stop()
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('open', 1)")

    # ------------------------------------------------------------------ gap records
    def _write_gaps(self, gaps: list[Gap]) -> int:
        """Append one gap record (its own transaction); returns its seq."""
        c = self._conn
        seq = self._next_seq
        row = self._seal_gap(seq, gaps)
        with self._transaction():
            c.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,0)", row)
            c.execute("UPDATE meta SET value=? WHERE key='next_seq'", (seq + 1,))
        self._next_seq = seq + 1
        self._account_add(Lane.ALERT, len(row[2]))
        self._c["gaps"] += 1
        return seq

    def _seal_gap(self, seq: int, gaps: list[Gap]) -> tuple[int, int, bytes, int, int, int, int]:
        env = self.sealer.seal(seq, encode_batch(gaps=gaps), FLAG_GAP)
        first = min(g.from_ts_ms for g in gaps)
        last = max(g.to_ts_ms for g in gaps)
        return (seq, int(Lane.ALERT), env, zlib.crc32(env), 0, first, last)

    def _gap_for_salvage(self, s: _Salvage) -> None:
        now = time.time_ns() // 1_000_000
        starts = [ts for ts in (s.oldest_ts, s.delivered_ts) if ts]
        start = min(starts) if starts else (s.created_ms or now)
        self._c["lost_in_corruption"] += len(s.bad)
        seq = self._write_gaps([Gap(
            lane=Lane.TELEMETRY, seqs=tuple(s.bad), from_ts_ms=start, to_ts_ms=max(now, start),
            batches=len(s.bad), readings=s.bad_readings, reason=GAP_CORRUPT)])
        log.warning("outbox: gap record seq %d reports batches possibly lost to corruption "
                    "between %d and %d ms (%d damaged rows named)", seq, start, now, len(s.bad))

    def _gap_for_unclean_stop(self) -> None:
        """The previous run ended without ``close()`` (SIGKILL, power cut, OOM): readings
        polled after the last committed batch are gone; tell the cloud which interval.

        "Last committed" is in commit order (the newest telemetry/bulk batch's last reading),
        not the highest timestamp ever committed: after a wall-clock step back the highest one
        lies in the stepped clock's future, and an interval starting there would miss the
        readings the kill lost (or, with ``now`` below it, not be written at all). If the clock
        is behind even the last committed reading (stepped back after it), the interval is
        written between the two instants anyway, with a WARNING: it is approximate then."""
        last = self._meta("last_poll_ts_ms") or self._meta("last_ts_ms")
        if not last:
            return
        now = time.time_ns() // 1_000_000
        start = last + 1
        if now < start:
            log.warning("outbox: the wall clock (%d ms) is %.1f s behind the last committed "
                        "reading: it was stepped back; the unclean-stop interval is approximate",
                        now, (start - now) / 1000)
        lo, hi = min(start, now), max(start, now)
        seq = self._write_gaps([Gap(lane=Lane.TELEMETRY, seqs=(), from_ts_ms=lo,
                                    to_ts_ms=hi, batches=0, readings=0,
                                    reason=GAP_UNCLEAN_STOP)])
        log.warning("outbox: the previous run stopped uncleanly; gap record seq %d reports "
                    "%d..%d ms (last committed reading -> this start) as unaccounted for",
                    seq, lo, hi)

    # ------------------------------------------------------------------ key changes
    def _key_fingerprint(self) -> int:
        digest = hashlib.sha256(b"edgegw outbox seal key|" + self.sealer.key
                                + self.sealer.key_id.to_bytes(4, "big")).digest()
        return int.from_bytes(digest[:7], "big")  # fits SQLite's signed 64-bit INTEGER

    def _reseal_if_key_changed(self) -> None:
        """Re-seal rows sealed under an earlier key (a standalone gateway's local key, or the
        data key of an earlier enrollment) with the current one, so the cloud can open them.

        Runs only when the sealing key changed since the last open (fingerprint in ``meta``).
        Rows no known key opens are left alone (the cloud may still know their key); if the
        cloud never acks them the uplink's poison policy gives them up with a gap record.
        """
        fp = self._key_fingerprint()
        if self._meta("seal_fp") == fp:
            return
        c = self._conn
        keys = [k for k in self.previous_keys if k != self.sealer.key]
        resealed: list[tuple[bytes, int, int]] = []
        unknown = 0
        for seq, env, in c.execute("SELECT seq, envelope FROM batches").fetchall():
            if not isinstance(env, bytes):
                continue
            try:
                self.sealer.open(env)
                continue
            except EnvelopeError:
                pass
            for key in keys:
                try:
                    header, plaintext = open_sealed(key, self.sealer.gateway_id, env)
                except EnvelopeError:
                    continue
                new = self.sealer.seal(seq, bytes(plaintext), header.flags)
                resealed.append((new, zlib.crc32(new), seq))
                break
            else:
                unknown += 1
        with self._transaction():
            c.executemany("UPDATE batches SET envelope=?, crc=?, attempts=0 WHERE seq=?",
                          resealed)
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('seal_fp', ?)", (fp,))
        self._c["resealed"] += len(resealed)
        self._c["reseal_unknown_key"] += unknown
        if resealed:
            log.info("outbox: re-sealed %d batches sealed under an earlier data key (standalone "
                     "local key or a previous enrollment) with key id %d, so the cloud can open "
                     "them", len(resealed), self.sealer.key_id)
        if unknown:
            log.warning("outbox: %d stored batches are sealed under a key this gateway no longer "
                        "has; they are sent as they are and given up (with a gap record) if the "
                        "cloud never acknowledges them", unknown)

    def _guard(self, op: Callable[[], T]) -> T:
        """Run ``op``; on corruption found mid-operation, recover (invariant 8) and retry once."""
        try:
            return op()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            self._conn.close()
            salvage = self._move_aside(exc)
            self._conn = self._connect()
            self._load(salvage, self._next_seq)
            return op()

    @contextlib.contextmanager
    def _transaction(self, synced: bool = True) -> Iterator[None]:
        """One write transaction on ``self._conn``: BEGIN IMMEDIATE, COMMIT when the body ends
        (unless it rolled back itself: nothing to change), ROLLBACK if it raises.

        ``synced=False`` commits without an fsync (``synchronous=NORMAL`` for this transaction
        only; invariant 10): atomic and ordered, but a power cut may undo it until the next
        synced commit or checkpoint."""
        c = self._conn
        if not synced:
            c.execute("PRAGMA synchronous=NORMAL")
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield
                if c.in_transaction:
                    c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        finally:
            if not synced:
                c.execute("PRAGMA synchronous=FULL")

    # ------------------------------------------------------------------ accounting
    def row_cost(self, envelope_len: int) -> int:
        """Bytes one stored envelope costs in SQLite: cell, overflow pages, index entry."""
        u = self.page_size
        payload = envelope_len + 40  # record header + integer columns
        max_local = u - 35
        if payload <= max_local:
            stored = payload
        else:
            min_local = ((u - 12) * 32 // 255) - 23
            k = min_local + (payload - min_local) % (u - 4)
            local = k if k <= max_local else min_local
            stored = local + -(-(payload - local) // (u - 4)) * u
        return stored + 12 + 24  # cell pointer/header + (lane, seq) index entry

    @property
    def slack_bytes(self) -> int:
        """How far db + wal may exceed ``max_bytes``: WAL before its truncation, free pages
        below the vacuum threshold, b-tree pages not full, schema and meta pages."""
        return 2 * self.wal_limit + self.vacuum_threshold + self.max_bytes // 8 + 128 * _KIB

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # ------------------------------------------------------------------ append
    def append(
        self, lane: Lane | int, plaintext: bytes, *, count: int, first_ts_ms: int, last_ts_ms: int
    ) -> int:
        """Seal ``plaintext`` under the next seq and store it durably (one transaction)."""
        try:
            lane = Lane(lane)
        except ValueError:
            raise ValueError(f"unknown lane {lane!r}") from None
        if count < 0:
            raise ValueError(f"count {count} must be >= 0")
        with self._lock:
            return self._guard(
                lambda: self._append(lane, plaintext, count, first_ts_ms, last_ts_ms))

    def _append(self, lane: Lane, plaintext: bytes, count: int, first: int, last: int) -> int:
        c = self._conn
        seq = self._next_seq
        env = self.sealer.seal(seq, plaintext)
        cost = self.row_cost(len(env))
        if cost > self.max_bytes // 2:
            self._rejected_new[lane.name.lower()] += 1
            self._refuse(lane, first, last, count, GAP_REASON)
            raise OutboxFull(
                f"batch of {len(env)} bytes is larger than half of outbox.max_bytes "
                f"({self.max_bytes}); raise outbox.max_bytes or lower batch.max_bytes",
                lane, len(env))
        limit, reason = self._limit(cost)
        refused = self._refused_gaps()
        victims: list[Victim] = []
        gap_row = None
        c.execute("BEGIN IMMEDIATE")
        try:
            if self._used + cost > limit:
                victims = self._choose_victims(lane, cost, limit, reason)
            carried: list[Gap] = list(refused)
            if victims:
                carried += self._carried_gaps(victims)
                # delete first so the new rows reuse the freed pages
                c.executemany("DELETE FROM batches WHERE seq=?", [(v[0],) for v in victims])
            c.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,0)",
                      (seq, int(lane), env, zlib.crc32(env), count, first, last))
            if victims or carried:
                gap_row = self._gap_row(seq + 1, victims, carried, reason)
                c.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,0)", gap_row)
            next_seq = seq + (2 if gap_row is not None else 1)
            c.execute("UPDATE meta SET value=? WHERE key='next_seq'", (next_seq,))
            c.execute("INSERT INTO meta (key, value) VALUES ('last_ts_ms', ?) ON CONFLICT(key) "
                      "DO UPDATE SET value=max(value, excluded.value)", (last,))
            if lane is not Lane.ALERT:
                # commit order, not the maximum: after a wall-clock step back the maximum lies
                # in the stepped clock's future (see _gap_for_unclean_stop)
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_poll_ts_ms', ?)",
                          (last,))
            c.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if c.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) != sqlite3.SQLITE_FULL:
                raise
            self._c["disk_full"] += 1
            self._refuse(lane, first, last, count, GAP_DISK_FULL)
            self._note_disk_low(f"SQLite: {exc}")
            raise OutboxFull(f"disk full: {lane.name.lower()} batch of {count} readings "
                             "refused (named by a gap record once space returns)",
                             lane, len(env)) from exc
        except BaseException as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if isinstance(exc, OutboxFull):
                self._refuse(lane, first, last, count, reason)
            raise
        # committed: now the in-memory view follows
        self._next_seq = next_seq
        # the uplink may send this batch without reading it back (no gap record came with it)
        self.last_appended = (StoredBatch(seq, lane, env, count, first, last, 0)
                              if gap_row is None else None)
        self._refused.clear()
        self._account_add(lane, len(env))
        self._c["appended"] += 1
        self._c["appended_readings"] += count
        if gap_row is not None:
            self._account_evicted(victims)
            self._account_add(Lane.ALERT, len(gap_row[2]))
            self._c["gaps"] += 1
        self._tick(force=bool(victims))
        return seq

    def replace(
        self, old: list[int], plaintext: bytes, *, count: int, first_ts_ms: int, last_ts_ms: int,
        lane: Lane = Lane.TELEMETRY,
    ) -> int | None:
        """Re-pack: seal ``plaintext`` (which carries the readings or alerts of the ``lane``
        batches ``old``, by their seqs) under a new seq and delete ``old``, in ONE
        transaction. Returns the new seq, or None (nothing changed) if any of ``old`` is gone
        or is not of ``lane``. The cloud deduplicates the new batch per original seq (codec
        parts, with the originals' digests), so a replaced batch that had reached the cloud is
        never stored twice."""
        with self._lock:
            return self._guard(lambda: self._replace(old, plaintext, count, first_ts_ms,
                                                     last_ts_ms, Lane(lane)))

    def _replace(self, old: list[int], plaintext: bytes, count: int, first: int,
                 last: int, lane: Lane) -> int | None:
        c = self._conn
        seq = self._next_seq
        env = self.sealer.seal(seq, plaintext)
        with self._transaction():
            sizes = []
            for s in old:
                row = c.execute("SELECT lane, length(envelope) FROM batches WHERE seq=?",
                                (s,)).fetchone()
                if row is None or row[0] != int(lane):
                    c.execute("ROLLBACK")
                    return None
                sizes.append(row[1])
            freed = sum(self.row_cost(n) for n in sizes)
            if self._used - freed + self.row_cost(len(env)) > self.max_bytes:
                c.execute("ROLLBACK")
                return None
            c.executemany("DELETE FROM batches WHERE seq=?", [(s,) for s in old])
            c.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,0)",
                      (seq, int(lane), env, zlib.crc32(env), count, first, last))
            c.execute("UPDATE meta SET value=? WHERE key='next_seq'", (seq + 1,))
        self._next_seq = seq + 1
        for size in sizes:
            self._account_remove(int(lane), size)
        self._account_add(lane, len(env))
        self._c["repacked"] = self._c.get("repacked", 0) + len(old)
        self._tick(force=False)
        return seq

    def _refuse(self, lane: Lane, first: int, last: int, count: int, reason: str) -> None:
        """Remember readings that could not be stored, for the next gap record."""
        k = (reason, int(lane))
        cur = self._refused.get(k)
        if cur is None:
            self._refused[k] = [first, last, 1, count]
        else:
            cur[0], cur[1] = min(cur[0], first), max(cur[1], last)
            cur[2] += 1
            cur[3] += count

    def _refused_gaps(self) -> list[Gap]:
        return [Gap(lane=Lane(lane), seqs=(), from_ts_ms=v[0], to_ts_ms=v[1], batches=v[2],
                    readings=v[3], reason=reason)
                for (reason, lane), v in sorted(self._refused.items())]

    def free_bytes(self) -> int:
        """Free space for unprivileged writers on the outbox's file system."""
        st = os.statvfs(self.path.parent)
        return int(st.f_bavail * st.f_frsize)

    def _note_disk_low(self, why: str) -> None:
        if not self._disk_low:
            self._disk_low = True
            # the WAL may not grow towards wal_limit now: checkpoint often, and give back
            # what it holds (best effort: on a full disk the checkpoint itself may fail)
            with contextlib.suppress(sqlite3.Error):
                if not self._conn.in_transaction:
                    self._conn.execute("PRAGMA wal_autocheckpoint=16")
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            log.warning("outbox %s: disk space low (%s); the outbox stops growing and makes "
                        "room by its when_full policy (%s), with gap records", self.path, why,
                        self.when_full)

    def _limit(self, cost: int) -> tuple[int, str]:
        """The byte limit this append must respect, and the gap reason if it forces drops.

        Normally ``max_bytes`` (accounted). The outbox may not grow at all when the real files
        (db + WAL) already exceed ``max_bytes + slack_bytes``, or when the file system's free
        space is below ``min_free_bytes`` (plus room for this batch in the WAL and the db):
        then room is made by eviction inside the file (freed pages, and the free pages that
        delivered batches left, are reused; they are not vacuumed away meanwhile)."""
        limit, reason = self.max_bytes, GAP_REASON
        if self.file_bytes() > self.max_bytes + self.slack_bytes:
            limit = min(limit, self._used)
        if self.min_free_bytes > 0:
            free = self.free_bytes()
            if free < self.min_free_bytes + 3 * cost:
                self._note_disk_low(f"{free} bytes free, floor outbox.min_free_bytes "
                                    f"{self.min_free_bytes}")
                # free pages inside the file (delivered batches) take new rows without growth
                reusable = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
                return min(limit, self._used + reusable * self.page_size), GAP_DISK_FULL
            hysteresis = max(64 * _KIB, self.min_free_bytes // 8)
            if self._disk_low and free > self.min_free_bytes + hysteresis + 3 * cost:
                self._disk_low = False
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_autocheckpoint="
                                       f"{max(16, self.wal_limit // self.page_size)}")
                log.info("outbox %s: disk space back (%d bytes free); growing again",
                         self.path, free)
        return limit, reason

    def _account_add(self, lane: Lane, size: int) -> None:
        name = lane.name.lower()
        self._lane_batches[name] += 1
        self._lane_bytes[name] += size
        self._used += self.row_cost(size)

    def _account_remove(self, lane: int, size: int) -> None:
        if lane in _LANE_VALUES:
            name = Lane(lane).name.lower()
            self._lane_batches[name] -= 1
            self._lane_bytes[name] -= size
        self._used -= self.row_cost(size)

    def _account_evicted(self, victims: Iterable[Victim]) -> None:
        for _seq, lane, size, count, _first, _last, _flags in victims:
            self._account_remove(lane, size)
            name = Lane(lane).name.lower()
            self._dropped["batches"][name] += 1
            self._dropped["readings"][name] += count
            self._dropped["bytes"][name] += size

    def _gap_cost(self, n_victims: int, carried_bytes: int) -> int:
        """Upper bound of the stored cost of a gap record naming ``n_victims`` batches and
        carrying forward the entries of evicted gap records (``carried_bytes`` sealed)."""
        body = 64 + 3 * 64 + 10 * n_victims + 2 * carried_bytes
        sealed = 1 + 32 + body + body // 6 + 28 + 16
        return self.row_cost(sealed)

    def _victim_queries(self, lane: Lane) -> list[str]:
        sel = ("SELECT seq, lane, length(envelope), count, first_ts_ms, last_ts_ms, "
               "substr(envelope, 4, 1) FROM batches")
        if self.when_full == "drop_oldest":
            return [f"{sel} ORDER BY seq"]
        if self.when_full == "reject_new":
            return []
        order = [Lane.BULK, Lane.TELEMETRY, Lane.ALERT]
        return [f"{sel} WHERE lane={int(x)} ORDER BY seq" for x in order if x >= lane]

    def _choose_victims(self, lane: Lane, cost: int, limit: int, reason: str) -> list[Victim]:
        """Oldest batches to evict so that the new batch and the gap record fit (in the open
        transaction). Raises OutboxFull (after ROLLBACK by the caller) if the policy cannot."""
        victims: list[Victim] = []
        freed = 0
        carried = 0

        def fits() -> bool:
            gap = self._gap_cost(len(victims), carried)
            return self._used - freed + cost + gap <= limit

        for query in self._victim_queries(lane):
            cur = self._conn.execute(query)
            for row in cur:
                if fits():
                    break
                victims.append(row)
                freed += self.row_cost(row[2])
                if _is_gap_record(row):
                    carried += row[2]
            cur.close()
            if fits():
                break
        if not victims or not fits():
            self._rejected_new[lane.name.lower()] += 1
            what = ("disk space below outbox.min_free_bytes" if reason == GAP_DISK_FULL
                    else f"outbox full ({self._used} of {self.max_bytes} bytes")
            raise OutboxFull(
                f"{what}, when_full={self.when_full}: {lane.name.lower()} batch of {cost} "
                "bytes refused (named by the next gap record)", lane, cost)
        return victims

    def _carried_gaps(self, victims: list[Victim]) -> list[Gap]:
        """Entries of evicted gap records, so that no dropped seq ever goes unnamed."""
        carried: list[Gap] = []
        for v in victims:
            if not _is_gap_record(v):
                continue
            env = self._conn.execute("SELECT envelope FROM batches WHERE seq=?",
                                     (v[0],)).fetchone()[0]
            try:
                carried += decode_batch(self.sealer.open(env)[1]).gaps
            except (EnvelopeError, CodecError) as exc:  # still named by seq in the new record
                log.error("outbox gap record seq %d unreadable (%s)", v[0], exc)
        return carried

    def _gap_row(
        self, seq: int, victims: list[Victim], carried: list[Gap], reason: str = GAP_REASON
    ) -> tuple[int, int, bytes, int, int, int, int]:
        gaps = list(carried)
        for lane in Lane:
            mine = [v for v in victims if v[1] == lane]
            if mine:
                gaps.append(Gap(
                    lane=lane, seqs=tuple(v[0] for v in mine),
                    from_ts_ms=min(v[4] for v in mine), to_ts_ms=max(v[5] for v in mine),
                    batches=len(mine), readings=sum(v[3] for v in mine), reason=reason))
        if victims:
            log.info("outbox %s: dropped %d batches (%d readings), gap record seq %d",
                     reason.replace("_", " "), len(victims), sum(v[3] for v in victims), seq)
        return self._seal_gap(seq, gaps)

    # ------------------------------------------------------------------ read / settle
    def next_batches(self, limit: int, exclude: Container[int] = ()) -> list[StoredBatch]:
        """Up to ``limit`` batches in upload order, skipping seqs in ``exclude`` (in flight)."""
        with self._lock:
            return self._guard(lambda: self._next_batches(limit, exclude))

    def _next_batches(self, limit: int, exclude: Container[int]) -> list[StoredBatch]:
        out: list[StoredBatch] = []
        bad: list[tuple[int, str]] = []
        if limit <= 0:
            return out
        cur = self._conn.execute(f"SELECT {_COLS} FROM batches ORDER BY lane, seq")
        for seq, lane, env, crc, count, first, last, attempts in cur:
            if seq in exclude:
                continue
            reason = self._integrity_problem(seq, lane, env, crc)
            if reason:
                bad.append((seq, reason))
                continue
            out.append(StoredBatch(seq, Lane(lane), env, count, first, last, attempts))
            if len(out) >= limit:
                break
        cur.close()
        for seq, reason in bad:
            log.error("outbox batch seq %d is corrupt (%s): moved to quarantine", seq, reason)
            self._quarantine(seq, reason)
            self._c["corrupt_rows"] += 1
        return out

    @staticmethod
    def _integrity_problem(seq: int, lane: object, env: object, crc: object) -> str:
        if not isinstance(env, bytes):
            return f"envelope is {type(env).__name__}, not bytes"
        if zlib.crc32(env) != crc:
            return "CRC32 mismatch"
        if lane not in _LANE_VALUES:
            return f"unknown lane {lane!r}"
        try:
            header = parse_header(env)
        except EnvelopeError as exc:
            return str(exc)
        if header.seq != seq:
            return f"envelope header names seq {header.seq}"
        return ""

    def _quarantine(self, seq: int, reason: str) -> bool:
        c = self._conn
        with self._transaction():
            row = c.execute("SELECT lane, length(envelope) FROM batches WHERE seq=?",
                            (seq,)).fetchone()
            if row is not None:
                c.execute(
                    f"INSERT OR REPLACE INTO quarantine ({_COLS}, reason, at_ms) "
                    f"SELECT {_COLS}, ?, ? FROM batches WHERE seq=?",
                    (reason, time.time_ns() // 1_000_000, seq))
                c.execute("DELETE FROM batches WHERE seq=?", (seq,))
                pruned = self._prune_quarantine()
        if row is None:
            return False
        lane, size = row
        self._account_quarantined(lane, size, pruned)
        self._c["quarantined"] += 1
        return True

    def _account_quarantined(self, lane: int, size: int | None, pruned: list[int]) -> None:
        """A row moved from batches to quarantine: its bytes stay accounted, only its lane
        counters change; the ``pruned`` quarantine rows free their bytes."""
        if lane in _LANE_VALUES:
            name = Lane(lane).name.lower()
            self._lane_batches[name] -= 1
            self._lane_bytes[name] -= size or 0
        for psize in pruned:
            self._used -= self.row_cost(psize)

    def _prune_quarantine(self) -> list[int]:
        """Keep the newest quarantined rows within QUARANTINE_MAX_ROWS and max_bytes / 8 (they
        are kept for forensics only); returns the envelope sizes deleted."""
        kept = 0
        drop: list[tuple[int, int]] = []
        for i, (seq, size) in enumerate(self._conn.execute(
                "SELECT seq, length(envelope) FROM quarantine ORDER BY seq DESC").fetchall()):
            kept += self.row_cost(size or 0)
            if i >= _QUARANTINE_MAX_ROWS or kept > self.max_bytes // 8:
                drop.append((seq, size or 0))
        self._conn.executemany("DELETE FROM quarantine WHERE seq=?", [(d[0],) for d in drop])
        return [d[1] for d in drop]

    def resequence(self, seq: int) -> int | None:
        """Move batch ``seq`` to a fresh sequence number (re-sealed, attempts kept), for a
        batch the cloud keeps skipping because it already holds a DIFFERENT batch under that
        number (a reused or forged-ahead sequence). Returns the new seq, or None if ``seq`` is
        unknown or not sealed under the current key."""
        with self._lock:
            return self._guard(lambda: self._resequence(seq))

    def _resequence(self, seq: int) -> int | None:
        c = self._conn
        row = c.execute(f"SELECT {_COLS} FROM batches WHERE seq=?", (seq,)).fetchone()
        if row is None or not isinstance(row[2], bytes):
            return None
        try:
            header, plaintext = self.sealer.open(row[2])
        except EnvelopeError:
            return None
        new = self._next_seq
        env = self.sealer.seal(new, bytes(plaintext), header.flags)
        with self._transaction():
            c.execute("DELETE FROM batches WHERE seq=?", (seq,))
            c.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                      (new, row[1], env, zlib.crc32(env), row[4], row[5], row[6], row[7]))
            c.execute("UPDATE meta SET value=? WHERE key='next_seq'", (new + 1,))
        self._next_seq = new + 1
        self._c["resequenced"] += 1
        log.warning("outbox: batch %d re-sequenced as %d (the cloud holds a different batch "
                    "under %d)", seq, new, seq)
        return new

    def give_up(self, seq: int, why: str, reason: str = GAP_UNDELIVERABLE) -> bool:
        """Stop trying to deliver ``seq``: move it to quarantine and, in the same transaction,
        append a gap record (``reason``) naming it, so the cloud learns what is missing.
        Returns False for an unknown seq (already settled)."""
        with self._lock:
            return self._guard(lambda: self._give_up(seq, why, reason))

    def _give_up(self, seq: int, why: str, reason: str) -> bool:
        c = self._conn
        row = c.execute("SELECT lane, length(envelope), count, first_ts_ms, last_ts_ms, "
                        "substr(envelope, 4, 1) FROM batches WHERE seq=?", (seq,)).fetchone()
        if row is None:
            self._c["settle_unknown"] += 1
            return False
        lane, size, count, first, last, flags = row
        gaps: list[Gap] = []
        if isinstance(flags, bytes) and flags and flags[0] & FLAG_GAP:
            gaps += self._carried_gaps([(seq, lane, size, count, first, last, flags)])
        gaps.append(Gap(lane=Lane(lane) if lane in _LANE_VALUES else Lane.TELEMETRY,
                        seqs=(seq,), from_ts_ms=first, to_ts_ms=last, batches=1,
                        readings=count, reason=reason))
        gseq = self._next_seq
        gap_row = self._seal_gap(gseq, gaps)
        with self._transaction():
            c.execute(f"INSERT OR REPLACE INTO quarantine ({_COLS}, reason, at_ms) "
                      f"SELECT {_COLS}, ?, ? FROM batches WHERE seq=?",
                      (why, time.time_ns() // 1_000_000, seq))
            c.execute("DELETE FROM batches WHERE seq=?", (seq,))
            c.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,0)", gap_row)
            c.execute("UPDATE meta SET value=? WHERE key='next_seq'", (gseq + 1,))
            pruned = self._prune_quarantine()
        self._next_seq = gseq + 1
        self._account_quarantined(lane, size, pruned)
        self._account_add(Lane.ALERT, len(gap_row[2]))
        self._c["quarantined"] += 1
        self._c["gaps"] += 1
        self._c["given_up"] += 1
        log.warning("outbox: gave up batch %d (%d readings, %s): quarantined, gap record seq %d "
                    "(%s) tells the cloud", seq, count, why, gseq, reason)
        return True

    def settle(self, seq: int, outcome: AckStatus | int) -> None:
        """Apply the cloud's verdict on one batch (unknown seqs are counted and ignored)."""
        self.settle_many([(seq, outcome)])

    def settle_many(self, items: Iterable[tuple[int, AckStatus | int]]) -> None:
        """``settle`` for several acks, delivered ones deleted in one transaction."""
        checked = [(seq, AckStatus(o)) for seq, o in items]
        with self._lock:
            self._guard(lambda: self._settle(checked))

    def _settle(self, items: list[tuple[int, AckStatus]]) -> None:
        c = self._conn
        delivered = [(s,) for s, o in items if o is AckStatus.DELIVERED]
        retry = [(s,) for s, o in items if o is AckStatus.RETRY]
        removed: list[tuple[int, int, int]] = []
        if delivered or retry:
            # unsynced (invariant 10): a delete a power cut undoes only re-sends the batch
            with self._transaction(synced=False):
                for (s,) in delivered:
                    removed += c.execute(
                        "DELETE FROM batches WHERE seq=? RETURNING lane, length(envelope), "
                        "last_ts_ms", (s,)).fetchall()
                if removed:
                    c.execute("INSERT INTO meta (key, value) VALUES ('delivered_ts_ms', ?) "
                              "ON CONFLICT(key) DO UPDATE SET value=max(value, excluded.value)",
                              (max(int(r[2]) for r in removed),))
                n_retry = 0
                for args in retry:
                    n_retry += c.execute(
                        "UPDATE batches SET attempts = attempts + 1 WHERE seq=?", args).rowcount
            for lane, size, _last in removed:
                self._account_remove(lane, size)
            self._c["delivered"] += len(removed)
            self._c["retried"] += n_retry
            self._c["settle_unknown"] += len(delivered) - len(removed) + len(retry) - n_retry
        for s, o in items:
            if o is AckStatus.REJECTED and self._give_up(s, "rejected by the cloud", GAP_REJECTED):
                self._c["rejected"] += 1
        self._tick(force=False)

    # ------------------------------------------------------------------ maintenance
    def _tick(self, force: bool) -> None:
        self._ops += 1
        if force or self._ops % _MAINTAIN_EVERY == 0:
            self._maintain(full=False)

    def maintain(self) -> None:
        """Reclaim free pages and truncate the WAL (call periodically, e.g. every vacuum_every)."""
        with self._lock:
            self._guard(lambda: self._maintain(full=True))

    def _maintain(self, full: bool) -> None:
        c = self._conn
        free = int(c.execute("PRAGMA freelist_count").fetchone()[0]) * self.page_size
        vacuumed = False
        # while the disk is low, free pages are kept for reuse: vacuuming them would hand the
        # space to whoever fills the disk and leave the outbox nothing to grow into
        if free > (0 if full else self.vacuum_threshold) and not self._disk_low:
            # executescript steps the pragma to completion; execute() + fetchall() in
            # Python 3.11 frees just one page per call
            c.executescript("PRAGMA incremental_vacuum;")
            self._c["vacuums"] += 1
            vacuumed = True
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            wal = 0
        if vacuumed or full or wal > self.wal_limit:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._c["checkpoints"] += 1

    # ------------------------------------------------------------------ stats / close
    @property
    def next_seq(self) -> int:
        return self._next_seq

    def stats(self) -> dict[str, Any]:
        with self._lock:
            q_rows = int(self._conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])
            return {
                "batches": dict(self._lane_batches),
                "bytes": dict(self._lane_bytes),
                "used_bytes": self._used,
                "max_bytes": self.max_bytes,
                "file_bytes": self.file_bytes(),
                "next_seq": self._next_seq,
                "appended": self._c["appended"],
                "appended_readings": self._c["appended_readings"],
                "delivered": self._c["delivered"],
                "retried": self._c["retried"],
                "rejected": self._c["rejected"],
                "corrupt_rows": self._c["corrupt_rows"],
                "quarantined": self._c["quarantined"],
                "quarantine_rows": q_rows,
                "dropped_batches": dict(self._dropped["batches"]),
                "dropped_readings": dict(self._dropped["readings"]),
                "dropped_bytes": dict(self._dropped["bytes"]),
                "rejected_new": dict(self._rejected_new),
                "gaps": self._c["gaps"],
                "corrupt_files": self._c["corrupt_files"],
                "salvaged_rows": self._c["salvaged_rows"],
                "settle_unknown": self._c["settle_unknown"],
                "vacuums": self._c["vacuums"],
                "checkpoints": self._c["checkpoints"],
                "repacked": self._c.get("repacked", 0),
                "resealed": self._c["resealed"],
                "reseal_unknown_key": self._c["reseal_unknown_key"],
                "given_up": self._c["given_up"],
                "resequenced": self._c["resequenced"],
                "disk_full": self._c["disk_full"],
                "disk_low": int(self._disk_low),
                "unclean_stops": self._c["unclean_stops"],
                "lost_in_corruption": self._c["lost_in_corruption"],
                "refused_pending": sum(v[3] for v in self._refused.values()),
            }

    def close(self) -> None:
        """Close; marks the stop as clean (the next open reports no ``unclean_stop`` gap)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("UPDATE meta SET value=0 WHERE key='open'")
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
