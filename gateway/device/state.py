"""The gateway's durable device-management state: ``state_dir/devmgmt.db`` (SQLite).

What it remembers, and why it must survive a SIGKILL:
- the downlink replay window (highest accepted sequence + recent accepted ones): a replayed
  message is refused after a restart too;
- command ids with their state (``started`` before the action runs, then the final result):
  a redelivered command id is never executed twice, it is answered with the remembered result;
- shadow documents (desired / reported, versioned) per device.

Invariants: WAL, ``synchronous=FULL``, one short transaction per change. Only ONE thread uses
a ``DevState`` (the downlink service's executor); callers on the event loop go through it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen(seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS commands(
    id TEXT PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL,            -- started | done
    result TEXT                     -- JSON final result once done
);
CREATE INDEX IF NOT EXISTS commands_received ON commands(received_ms);
CREATE TABLE IF NOT EXISTS shadow(
    device TEXT PRIMARY KEY,
    desired TEXT NOT NULL DEFAULT '{}',
    desired_version INTEGER NOT NULL DEFAULT 0,
    reported TEXT NOT NULL DEFAULT '{}',
    reported_version INTEGER NOT NULL DEFAULT 0
);
"""

#: command ids are remembered this long after their deadline (far beyond any redelivery)
COMMAND_MEMORY_MS = 7 * 24 * 3600 * 1000


class DevState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        if fresh:
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ replay window
    def load_replay(self) -> tuple[int, list[int]]:
        row = self._db.execute("SELECT value FROM kv WHERE name='down_highest'").fetchone()
        seen = [r[0] for r in self._db.execute("SELECT seq FROM seen")]
        return (int(row[0]) if row else 0), seen

    def record_accepted(self, seq: int, highest: int, floor: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR IGNORE INTO seen(seq) VALUES (?)", (seq,))
            db.execute("INSERT INTO kv(name, value) VALUES ('down_highest', ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                       (highest,))
            db.execute("DELETE FROM seen WHERE seq <= ?", (floor,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ commands
    def command_begin(
        self, cmd_id: str, received_ms: int, deadline_ms: int
    ) -> dict[str, Any] | None:
        """Durably mark ``cmd_id`` started. Returns None if it is new (the caller executes it),
        else its remembered state: ``{"state": "done", "result": {...}}`` or
        ``{"state": "started"}`` (a previous run died while executing it)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT state, result FROM commands WHERE id = ?",
                             (cmd_id,)).fetchone()
            if row is None:
                db.execute("INSERT INTO commands(id, received_ms, deadline_ms, state) "
                           "VALUES (?, ?, ?, 'started')", (cmd_id, received_ms, deadline_ms))
                db.execute("DELETE FROM commands WHERE deadline_ms < ?",
                           (received_ms - COMMAND_MEMORY_MS,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if row is None:
            return None
        return {"state": row[0], "result": json.loads(row[1]) if row[1] else None}

    def command_done(self, cmd_id: str, result: dict[str, Any]) -> None:
        self._db.execute("UPDATE commands SET state='done', result=? WHERE id=?",
                         (json.dumps(result, default=str), cmd_id))

    # ------------------------------------------------------------------ shadow
    def shadow_get(self, device: str) -> dict[str, Any]:
        row = self._db.execute(
            "SELECT desired, desired_version, reported, reported_version FROM shadow "
            "WHERE device=?", (device,)).fetchone()
        if row is None:
            return {"desired": {}, "desired_version": 0, "reported": {}, "reported_version": 0}
        return {"desired": json.loads(row[0]), "desired_version": row[1],
                "reported": json.loads(row[2]), "reported_version": row[3]}

    def shadow_devices(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT device FROM shadow ORDER BY device")]

    def shadow_put(self, device: str, doc: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO shadow(device, desired, desired_version, reported, reported_version) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET desired=excluded.desired, "
            "desired_version=excluded.desired_version, reported=excluded.reported, "
            "reported_version=excluded.reported_version",
            (device, json.dumps(doc["desired"]), doc["desired_version"],
             json.dumps(doc["reported"]), doc["reported_version"]))
