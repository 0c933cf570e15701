"""Read-only inspection of the cloud's SQLite databases (``edgegw-cloud db inspect``, ``gateways``).

Built on sqlite-utils over a read-only connection (``mode=ro``): it never writes, never takes
the write lock and never touches the ingest's hot path, so it is safe next to a running
``serve``. It reports, per database, the file size, journal mode, and per table the row count,
columns (name -> Python type) and indexes.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from edgegw_cloud.pki_setup import CloudPaths

log = logging.getLogger("edgegw.cloud")

__all__ = ["inspect_data_dir", "inspect_db", "store_summary"]


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def inspect_db(path: Path) -> dict[str, Any]:
    """Size, journal mode and tables (rows, columns, indexes) of one database file."""
    if not path.exists():
        return {"path": str(path), "exists": False}
    con = _open_ro(path)
    try:
        db = Database(con)
        tables: dict[str, Any] = {}
        for name in db.table_names():
            t = db.table(name)
            tables[name] = {
                "rows": t.count,
                "columns": {c: tp.__name__ for c, tp in t.columns_dict.items()},
                "indexes": [ix.name for ix in t.indexes],
            }
        return {
            "path": str(path),
            "exists": True,
            "bytes": path.stat().st_size,
            "journal_mode": db.journal_mode,
            "tables": tables,
            "views": db.view_names(),
        }
    finally:
        con.close()


def inspect_data_dir(paths: CloudPaths) -> dict[str, Any]:
    return {"registry": inspect_db(paths.registry_db), "store": inspect_db(paths.store_db)}


def store_summary(store_db: Path) -> dict[str, dict[str, int]]:
    """Per-gateway counters from store.db (written by the ingest), if it exists."""
    if not store_db.exists():
        return {}
    out: dict[str, dict[str, int]] = {}
    try:
        con = _open_ro(store_db)
        try:
            for gw, n, last in con.execute(
                "SELECT gateway, COUNT(*), MAX(received_ms) FROM batches GROUP BY gateway"
            ):
                out.setdefault(gw, {}).update(batches=n, last_ms=last or 0)
            for gw, n in con.execute(
                "SELECT gateway, COUNT(DISTINCT device) FROM readings GROUP BY gateway"
            ):
                out.setdefault(gw, {})["devices"] = n
            for gw, n, dropped in con.execute(
                "SELECT gateway, COUNT(*), SUM(batches) FROM gaps GROUP BY gateway"
            ):
                out.setdefault(gw, {}).update(gaps=n, dropped=dropped or 0)
        finally:
            con.close()
    except sqlite3.Error as exc:
        log.warning("could not read %s: %s", store_db, exc)
    return out
