"""Helpers for running the real daemon (`edgegw run`) in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

EDGEGW = [sys.executable, "-m", "edgegw.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(
    gw_id: str, state: Path, *, log_level: str = "warning", **sections: Any
) -> dict[str, Any]:
    """A gateway.yaml document: the gateway section, metrics off unless given, then sections."""
    doc: dict[str, Any] = {
        "gateway": {"id": gw_id, "state_dir": str(state), "log_level": log_level},
        "metrics": {"enabled": False},
    }
    return doc | sections


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_daemon(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*EDGEGW, "run", "-c", str(config), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def poll_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def outbox_seqs(db: Path) -> list[int]:
    """Sequences committed in the outbox (read-only; safe beside a running daemon)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [int(r[0]) for r in con.execute("SELECT seq FROM batches ORDER BY seq")]
    except sqlite3.OperationalError:
        return []  # tables not created yet
    finally:
        con.close()
