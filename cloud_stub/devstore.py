"""Cloud-side device-management state (DATA/devices.db): downlink sequences, commands, shadows,
pushed configurations.

Invariants:
- ``next_seq(gw)`` is strictly increasing per gateway across every process sharing the data
  dir (one ``BEGIN IMMEDIATE`` transaction) and never below the wall clock in microseconds, so
  a wiped database never reuses a sequence a gateway already accepted.
- A command has exactly one final result: ``finish`` only moves a ``pending`` row, the first
  final result wins and later ones are counted as ``late_results``.
- WAL, ``synchronous=FULL``; safe for several processes (``serve`` + CLI). Not thread-safe:
  one instance per thread (or a lock around it).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgegw.protocol.downlink import next_seq

_SCHEMA = """
CREATE TABLE IF NOT EXISTS downlink_seq(gateway TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands(
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    device TEXT NOT NULL,
    action TEXT NOT NULL,
    args TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    status TEXT NOT NULL,           -- pending | ok | refused | timed_out | unavailable
    value TEXT,                     -- JSON
    reason TEXT,
    result_ms INTEGER,
    sends INTEGER NOT NULL DEFAULT 0,
    late_results INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_gw ON commands(gateway, created_ms);
CREATE INDEX IF NOT EXISTS commands_status ON commands(status);  -- the pending ones, polled
CREATE TABLE IF NOT EXISTS shadows(
    gateway TEXT NOT NULL,
    device TEXT NOT NULL,
    desired TEXT NOT NULL DEFAULT '{}',
    desired_version INTEGER NOT NULL DEFAULT 0,
    reported TEXT NOT NULL DEFAULT '{}',
    reported_version INTEGER NOT NULL DEFAULT 0,
    desired_ms INTEGER,
    reported_ms INTEGER,
    PRIMARY KEY(gateway, device)
);
CREATE TABLE IF NOT EXISTS configs(
    gateway TEXT NOT NULL,
    version INTEGER NOT NULL,
    yaml TEXT NOT NULL,
    pushed_ms INTEGER NOT NULL,
    status TEXT NOT NULL,       -- pushed | refused | applied | confirmed | reverted | superseded
    messages TEXT NOT NULL DEFAULT '[]',
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(gateway, version)
);
"""

FINAL = ("ok", "refused", "timed_out", "unavailable")


def _ms() -> int:
    return time.time_ns() // 1_000_000


class DevStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=15.0,
                                   check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ sequences
    def next_seq(self, gw: str) -> int:
        with self._txn() as db:
            row = db.execute("SELECT last_seq FROM downlink_seq WHERE gateway=?", (gw,)).fetchone()
            seq = next_seq(int(row[0]) if row else 0)
            db.execute("INSERT INTO downlink_seq(gateway, last_seq) VALUES (?, ?) "
                       "ON CONFLICT(gateway) DO UPDATE SET last_seq=excluded.last_seq", (gw, seq))
        return seq

    # ------------------------------------------------------------------ commands
    def command_create(self, cmd_id: str, gw: str, device: str, action: str,
                       args: dict[str, Any], deadline_ms: int) -> None:
        with self._txn() as db:
            db.execute("INSERT INTO commands(id, gateway, device, action, args, created_ms, "
                       "deadline_ms, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                       (cmd_id, gw, device, action, json.dumps(args), _ms(), deadline_ms))

    def command_sent(self, cmd_id: str, delta: int = 1) -> None:
        """Count a send (``delta=-1`` takes back one that failed)."""
        self._db.execute("UPDATE commands SET sends = sends + ? WHERE id=?", (delta, cmd_id))

    def command_finish(self, cmd_id: str, status: str, value: Any = None,
                       reason: str | None = None) -> bool:
        """Record the final result; True if this was the first one (it is the result)."""
        if status not in FINAL:
            raise ValueError(f"unknown command status {status!r}")
        with self._txn() as db:
            cur = db.execute("UPDATE commands SET status=?, value=?, reason=?, result_ms=? "
                             "WHERE id=? AND status='pending'",
                             (status, json.dumps(value), reason, _ms(), cmd_id))
            if cur.rowcount == 0:
                db.execute("UPDATE commands SET late_results = late_results + 1 WHERE id=?",
                           (cmd_id,))
                return False
        return True

    def command(self, cmd_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM commands WHERE id=?", (cmd_id,)).fetchone()
        return _command_dict(row) if row else None

    def commands(self, gw: str | None = None, status: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM commands WHERE 1=1", []
        if gw is not None:
            sql += " AND gateway=?"
            params.append(gw)
        if status is not None:
            sql += " AND status=?"
            params.append(status)
        sql += " ORDER BY created_ms DESC LIMIT ?"
        params.append(str(limit))
        return [_command_dict(r) for r in self._db.execute(sql, params)]


    # ------------------------------------------------------------------ shadows / configs
    def shadow(self, gw: str, device: str) -> dict[str, Any]:
        row = self._db.execute("SELECT * FROM shadows WHERE gateway=? AND device=?",
                               (gw, device)).fetchone()
        return _shadow_dict(row, gw, device)

    def shadows(self, gw: str) -> list[dict[str, Any]]:
        return [_shadow_dict(r, gw, r["device"]) for r in self._db.execute(
            "SELECT * FROM shadows WHERE gateway=? ORDER BY device", (gw,))]

    def set_desired(self, gw: str, device: str, changes: dict[str, Any],
                    expected_version: int | None = None) -> dict[str, Any]:
        """Merge ``changes`` into desired (a None value removes the point); version + 1."""
        with self._txn() as db:
            row = db.execute("SELECT desired, desired_version FROM shadows WHERE gateway=? AND "
                             "device=?", (gw, device)).fetchone()
            desired = json.loads(row["desired"]) if row else {}
            version = row["desired_version"] if row else 0
            if expected_version is not None and expected_version != version:
                raise ShadowConflict(f"desired version is {version}, not {expected_version}: "
                                     "someone changed it; get it again and retry")
            for k, v in changes.items():
                if v is None:
                    desired.pop(k, None)
                else:
                    desired[k] = v
            db.execute("INSERT INTO shadows(gateway, device, desired, desired_version, "
                       "desired_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT(gateway, device) DO "
                       "UPDATE SET desired=excluded.desired, desired_version=excluded."
                       "desired_version, desired_ms=excluded.desired_ms",
                       (gw, device, json.dumps(desired), version + 1, _ms()))
        return self.shadow(gw, device)

    def set_reported(self, gw: str, device: str, reported: dict[str, Any],
                     version: int) -> None:
        self._db.execute(
            "INSERT INTO shadows(gateway, device, reported, reported_version, reported_ms) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(gateway, device) DO UPDATE SET "
            "reported=excluded.reported, reported_version=excluded.reported_version, "
            "reported_ms=excluded.reported_ms",
            (gw, device, json.dumps(reported), version, _ms()))

    def config_push(self, gw: str, text: str) -> int:
        with self._txn() as db:
            row = db.execute("SELECT MAX(version) FROM configs WHERE gateway=?", (gw,)).fetchone()
            version = int(row[0] or 0) + 1
            now = _ms()
            db.execute("INSERT INTO configs(gateway, version, yaml, pushed_ms, status, "
                       "updated_ms) VALUES (?, ?, ?, ?, 'pushed', ?)",
                       (gw, version, text, now, now))
        return version

    def config_status(self, gw: str, version: object, status: str,
                      messages: list[str] | None = None) -> bool:
        """Move a pushed config on; final states (refused, confirmed, reverted) stay."""
        try:
            v = int(str(version))
        except (TypeError, ValueError):
            return False
        with self._txn() as db:
            cur = db.execute(
                "UPDATE configs SET status=?, messages=COALESCE(?, messages), updated_ms=? "
                "WHERE gateway=? AND version=? AND status NOT IN ('refused','confirmed',"
                "'reverted') AND status != ?",
                (status, json.dumps(messages) if messages is not None else None, _ms(), gw, v,
                 status))
            return cur.rowcount > 0

    def config(self, gw: str, version: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM configs WHERE gateway=? AND version=?",
                               (gw, version)).fetchone()
        return _config_dict(row) if row else None

    def config_history(self, gw: str, limit: int = 50) -> list[dict[str, Any]]:
        return [_config_dict(r) for r in self._db.execute(
            "SELECT * FROM configs WHERE gateway=? ORDER BY version DESC LIMIT ?", (gw, limit))]


def _command_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["args"] = json.loads(d["args"])
    d["value"] = json.loads(d["value"]) if d["value"] is not None else None
    return d


class ShadowConflict(ValueError):
    """``set_desired`` with an expected version that is not the current one."""


def shadow_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """Desired points whose reported value differs (floats compared with a tolerance)."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        return bool(a == b)

    return {k: v for k, v in desired.items()
            if v is not None and (k not in reported or not same(reported[k], v))}


def _shadow_dict(row: sqlite3.Row | None, gw: str, device: str) -> dict[str, Any]:
    if row is None:
        return {"gateway": gw, "device": device, "desired": {}, "desired_version": 0,
                "reported": {}, "reported_version": 0, "delta": {}, "desired_ms": None,
                "reported_ms": None}
    desired, reported = json.loads(row["desired"]), json.loads(row["reported"])
    return {"gateway": gw, "device": device, "desired": desired,
            "desired_version": row["desired_version"], "reported": reported,
            "reported_version": row["reported_version"],
            "delta": shadow_delta(desired, reported), "desired_ms": row["desired_ms"],
            "reported_ms": row["reported_ms"]}




def _config_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["messages"] = json.loads(d["messages"])
    return d


