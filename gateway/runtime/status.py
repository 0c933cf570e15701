"""What a gateway is doing (``edgegw status``), whether it is running or stopped.

Reads the state dir only: ``status.json`` (written every second by the daemon: counters of every
component) and the outbox database itself (read-only), so it also works after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from edgegw.model import Lane


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def outbox_summary(db: Path) -> dict[str, Any]:
    if not db.exists():
        return {"exists": False}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        lanes = {
            Lane(int(lane)).name.lower(): {"batches": n, "bytes": b or 0, "readings": r or 0}
            for lane, n, b, r in con.execute(
                "SELECT lane, count(*), sum(length(envelope)), sum(count)"
                " FROM batches GROUP BY lane"
            )
        }
    except sqlite3.OperationalError:
        lanes = {}  # the daemon is creating the database right now
    finally:
        con.close()
    return {"exists": True, "file_bytes": _size_on_disk(db), "lanes": lanes}


def _size_on_disk(db: Path) -> int:
    """db + -wal + -shm; a -wal may vanish while we look (checkpoint), which is fine."""
    total = 0
    for p in db.parent.glob(db.name + "*"):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def collect(state_dir: Path, outbox_path: Path | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"state_dir": str(state_dir)}
    status_file = state_dir / "status.json"
    if status_file.exists():
        st = json.loads(status_file.read_text())
        age = time.time() - st["written_ms"] / 1000
        running = _alive(int(st["pid"])) and age < 10
        doc |= {
            "gateway_id": st["gateway_id"],
            "running": running,
            "pid": st["pid"] if running else None,
            "status_age_seconds": round(age, 1),
            "unavailable": st.get("unavailable", {}),
            "stats": st.get("stats", {}),
        }
    else:
        doc["running"] = False
    doc["outbox"] = outbox_summary(outbox_path or state_dir / "outbox.db")
    return doc


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"gateway {doc.get('gateway_id', '?')}: "
        + (f"running (pid {doc['pid']})" if doc.get("running") else "not running")
    ]
    ob = doc["outbox"]
    if ob.get("exists"):
        lines.append(f"outbox: {ob['file_bytes']} bytes on disk")
        for lane, v in ob["lanes"].items():
            lines.append(
                f"  {lane:<9} {v['batches']:>7} batches {v['readings']:>9} items {v['bytes']:>10} B"
            )
    stats = doc.get("stats", {})
    proc = stats.get("process", {})
    if proc:
        lines.append(
            f"runs: {proc.get('starts', 0)} starts, {proc.get('unclean_stops', 0)} unclean stops "
            f"(SIGKILL, power cut, crash); phase {proc.get('phase', '?')}"
        )
    pipe = stats.get("pipeline", {})
    if pipe:
        lines.append(
            f"pipeline: {pipe.get('readings_in', 0)} readings in, "
            f"{pipe.get('batches_sealed', 0)} batches sealed"
        )
    out = stats.get("outbox", {})
    if out:
        keys = ("appended", "delivered", "dropped_batches", "quarantined", "gaps", "given_up",
                "unclean_stops", "disk_low")
        lines.append("outbox counters: " + ", ".join(f"{k}={out[k]}" for k in keys if k in out))
    for bus, s in stats.get("scheduler", {}).get("buses", {}).items():
        for dev, d in s.get("devices", {}).items():
            lines.append(
                f"  device {dev:<16} bus {bus}: polls={d.get('polls', 0)} "
                f"failures={d.get('failures', 0)} state={d.get('state', '?')}"
            )
    for dev, why in doc.get("unavailable", {}).items():
        lines.append(f"  device {dev:<16} UNAVAILABLE: {why}")
    up = stats.get("uplink")
    if up:
        lines.append(
            "uplink: " + ", ".join(f"{k}={v}" for k, v in up.items() if isinstance(v, int | float))
        )
    return "\n".join(lines)
