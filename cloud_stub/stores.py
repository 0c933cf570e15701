"""Opening the cloud store a target names: a SQLite file path (the default, ``DATA/store.db``)
or a ``postgresql://`` URL (``edgegw-cloud serve --store URL``, ``query --store URL``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegw_cloud.store_pg import is_postgres_url


def open_store(target: str | Path, *, readonly: bool = False) -> Any:
    """A CloudStore (SQLite) or PgStore (PostgreSQL); both have the same methods."""
    if is_postgres_url(target):
        from edgegw_cloud.store_pg import PgStore

        return PgStore(str(target), readonly=readonly)
    from edgegw_cloud.store import CloudStore

    return CloudStore(Path(target), readonly=readonly)


def describe(target: str | Path) -> str:
    """The target for messages, without a password."""
    if is_postgres_url(target):
        from urllib.parse import urlsplit

        u = urlsplit(str(target))
        host = u.hostname or "localhost"
        return f"postgresql://{u.username + '@' if u.username else ''}{host}" + (
            f":{u.port}" if u.port else "") + u.path
    return str(target)
