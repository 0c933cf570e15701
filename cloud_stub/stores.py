"""Opening the cloud store a target names: a SQLite file path (the default, ``DATA/store.db``)
or a ``postgresql://`` URL (``edgegw-cloud serve --store URL``, ``query --store URL``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgegw.protocol.broker_url import parse_endpoint_url
from edgegw_cloud.store import CloudStore
from edgegw_cloud.store_pg import PgStore, is_postgres_url

log = logging.getLogger("edgegw.cloud")


def open_store(target: str | Path, *, readonly: bool = False) -> Any:
    """A CloudStore (SQLite) or PgStore (PostgreSQL); both have the same methods."""
    if is_postgres_url(target):
        return PgStore(str(target), readonly=readonly)
    return CloudStore(Path(target), readonly=readonly)


def describe(target: str | Path) -> str:
    """The target for messages, without a password."""
    if is_postgres_url(target):
        u = parse_endpoint_url(str(target))
        user = f"{u.username}@" if u.username else ""
        port = f":{u.port}" if u.port else ""
        return f"postgresql://{user}{u.host or 'localhost'}{port}{u.path}"
    return str(target)


def listing_summary(target: str | Path) -> dict[str, dict[str, int]]:
    """Per-gateway counters for ``edgegw-cloud gateways`` from any store (empty on error)."""
    try:
        store = open_store(target, readonly=True)
        try:
            summary = store.fleet_summary()
        finally:
            store.close()
    except Exception as exc:  # the listing still shows the registry
        log.warning("could not read the store %s: %s", describe(target), exc)
        return {}
    return {
        gw: {
            "batches": s.get("batches", 0),
            "last_ms": s.get("last_stored_ms") or 0,
            "devices": s.get("devices", 0),
            "gaps": s.get("gaps", 0),
            "dropped": s.get("dropped_batches", 0),
        }
        for gw, s in summary.items()
    }
