"""File modes for data at rest: databases and status files are not world-readable.

Invariants:
- ``prepare_sqlite(path, mode)`` creates a missing database file with ``mode`` BEFORE SQLite
  opens it (SQLite gives the ``-wal``/``-shm`` files the main file's mode), and tightens an
  existing file and its ``-wal``/``-shm`` created by an older version (e.g. 0644).
- ``write_private(path, text, mode)`` replaces a file atomically; the temp file has ``mode``
  from creation, so no reader ever sees the content with a wider mode.
- ``fsync_dir(d)`` makes a rename/create/unlink in ``d`` durable (after ``os.replace``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DB_MODE = 0o600
STATUS_MODE = 0o640


def prepare_sqlite(path: Path, mode: int = DB_MODE) -> None:
    # a missing folder is left alone: SQLite then reports it as it always did
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o777 & ~mode:
                os.chmod(p, mode)


def write_private(path: Path, text: str, mode: int = STATUS_MODE) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # an older tmp file keeps its mode through O_CREAT
        f.write(text)
    os.replace(tmp, path)


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
