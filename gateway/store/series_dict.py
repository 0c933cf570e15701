"""The gateway's series dictionary: (device, metric) -> small id, shared with the cloud in-band.

Rule (the contract with the cloud, see ``edgegw.protocol.codec_v2``):
1. An id is assigned once per (epoch, device, metric) and never reused for another series.
   Assignments are written to ``series-dict.db`` (SQLite, synchronous=FULL) BEFORE the batch
   using them is sealed, so every stored batch can be decoded locally (``edgegw status``, model
   fitting) and the epoch survives restarts.
2. A batch carries the definition of every id it uses that is not yet *confirmed*. An id is
   confirmed when the cloud acked DELIVERED a batch that carried its definition (the cloud
   stores definitions in the same transaction as the batch). Confirmations live in memory only:
   after a gateway restart every id is defined once more, until the next ack.
3. Nothing else: a re-sent batch is byte-identical (it still carries what it carried), and a
   batch never depends on another batch that was not acked yet, so order, loss, re-sends and
   re-packing cannot make a batch undecodable at the cloud.

Thread-safety: ``assign``/``sealed`` run in the outbox thread, ``delivered`` on the event loop;
a lock guards the shared maps.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from edgegw.model import Alert, Sample
from edgegw.protocol.codec import Gap
from edgegw.protocol.codec_v2 import SeriesKey, encode_batch_v2
from edgegw.protocol.model import SampleBlock

FILE_NAME = "series-dict.db"


class SeriesDictionary:
    """Ids, confirmations and the on-disk table of one gateway's dictionary."""

    def __init__(self, path: Path | str | None) -> None:
        self._lock = threading.Lock()
        self._ids: dict[SeriesKey, int] = {}
        self._names: dict[int, SeriesKey] = {}
        self._confirmed: set[int] = set()
        self._pending: dict[int, list[int]] = {}  # batch seq -> ids it defined
        self._new: list[tuple[int, str, str]] = []  # assigned, not yet on disk
        self._db: sqlite3.Connection | None = None
        self.epoch = secrets.randbits(63) or 1
        if path is not None:
            self._open(Path(path))
        self.stats = {"defined": 0, "confirmed": 0}

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
            "CREATE TABLE IF NOT EXISTS ids (epoch INTEGER NOT NULL, id INTEGER NOT NULL,"
            " device TEXT NOT NULL, metric TEXT NOT NULL, PRIMARY KEY (epoch, id));")
        row = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = int(row[0])
        for i, d, m in db.execute("SELECT id, device, metric FROM ids WHERE epoch=?",
                                  (self.epoch,)):
            self._ids[(d, m)] = i
            self._names[i] = (d, m)
        self._db = db

    # ------------------------------------------------------------------ encoder side
    def assign(self, key: SeriesKey) -> tuple[int, bool]:
        """(id, must define) for a series (``assign_many`` of one)."""
        ids, define = self.assign_many((key,))
        return ids[0], define[0]

    def assign_many(self, keys: Collection[SeriesKey]) -> tuple[list[int], list[bool]]:
        """``assign`` for every series of a batch under one lock round trip:
        (ids, must define) in the order of ``keys``."""
        with self._lock:
            get = self._ids.get
            found = list(map(get, keys))
            if None in found:
                for n, key in enumerate(keys):
                    if found[n] is None:
                        i = get(key)  # a key given twice gets one id
                        if i is None:
                            i = len(self._ids)
                            self._ids[key] = i
                            self._names[i] = key
                            self._new.append((i, key[0], key[1]))
                        found[n] = i
            ids: list[int] = found  # type: ignore[assignment]  # no None left
            confirmed = self._confirmed
            if confirmed.issuperset(ids):  # the steady state: nothing to define
                return ids, [False] * len(ids)
            return ids, [i not in confirmed for i in ids]

    def flush(self) -> None:
        """Write new assignments to disk (before the batch using them is sealed)."""
        with self._lock:
            new, self._new = self._new, []
        if new and self._db is not None:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?, ?)",
                                 [(self.epoch, i, d, m) for i, d, m in new])
            self._db.execute("COMMIT")

    def encode(self, samples: Iterable[Sample] = (), alerts: Iterable[Alert] = (),
               gaps: Iterable[Gap] = (), parts: Sequence[int] = (),
               part_of: Sequence[int] = (), part_digests: Sequence[bytes] = (),
               alert_part_of: Sequence[int] = (),
               blocks: Sequence[SampleBlock] = ()) -> tuple[bytes, list[int]]:
        """A v2 batch using this dictionary (v3 with ``part_digests``); returns (plaintext,
        ids defined in it). ``blocks``: more readings as polls' columns (``encode_batch_v2``)."""
        data, defined = encode_batch_v2(samples, alerts, gaps, ids_many=self.assign_many,
                                        epoch=self.epoch, parts=parts, part_of=part_of,
                                        part_digests=part_digests,
                                        alert_part_of=alert_part_of, blocks=blocks)
        self.flush()
        return data, defined

    #: the batcher may hand this encoder SampleBlocks as they are
    encode.takes_blocks = True  # type: ignore[attr-defined]

    def sealed(self, seq: int, defined: Sequence[int]) -> None:
        """The batch ``seq`` carrying definitions ``defined`` is in the outbox."""
        if defined:
            with self._lock:
                self._pending[seq] = list(defined)
                self.stats["defined"] += len(defined)

    def forget(self, seqs: Iterable[int]) -> None:
        """Batches that will never be acked (re-packed into another one, quarantined)."""
        with self._lock:
            for s in seqs:
                self._pending.pop(s, None)

    # ------------------------------------------------------------------ uplink side
    def delivered(self, seqs: Iterable[int]) -> None:
        """The cloud durably stored these batches: their definitions are confirmed."""
        with self._lock:
            for s in seqs:
                ids = self._pending.pop(s, None)
                if ids:
                    self._confirmed.update(ids)
                    self.stats["confirmed"] = len(self._confirmed)

    # ------------------------------------------------------------------ decoding
    def resolve(self, epoch: int, ids: Sequence[int]) -> dict[int, SeriesKey]:
        """Resolver for ``decode_batch_v2`` of this gateway's own batches."""
        if epoch == self.epoch:
            with self._lock:
                return {i: self._names[i] for i in ids if i in self._names}
        return load_names(self._db, epoch, ids) if self._db is not None else {}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def load_names(db: sqlite3.Connection, epoch: int, ids: Sequence[int]) -> dict[int, SeriesKey]:
    out: dict[int, SeriesKey] = {}
    for i in ids:
        row = db.execute("SELECT device, metric FROM ids WHERE epoch=? AND id=?",
                         (epoch, i)).fetchone()
        if row is not None:
            out[i] = (row[0], row[1])
    return out


def file_resolver(path: Path) -> object:
    """A read-only resolver over a state dir's ``series-dict.db`` (for ``read_outbox``)."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def resolve(epoch: int, ids: Sequence[int]) -> dict[int, SeriesKey]:
        return load_names(db, epoch, ids)

    return resolve
