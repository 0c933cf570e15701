"""What a gateway is doing (``edgegw status``), whether it is running or stopped.

Reads the state dir only: ``status.json`` (written every second by the daemon: counters of every
component), the outbox database itself (read-only) and the OTA agent's state files
(``state_dir/ota/``: current release, state, chunks received/total, bytes), so it also works
after a crash.
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
from edgegw.ota.transfer import status_summary as ota_status_summary


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
    ota = ota_status_summary(state_dir)  # from the agent's files: stopped gateways too
    live = doc.get("stats", {}).get("ota") if doc.get("running") else None
    if ota is not None and isinstance(live, dict) and live.get("release") == ota["release"]:
        ota |= {k: live[k] for k in ("state", "received", "bytes", "reason", "detail")
                if k in live}
    doc["ota"] = ota
    return doc


def ota_line(ota: dict[str, Any] | None) -> str | None:
    """``ota: RELEASE STATE received/total chunks (n%), bytes`` (+ reason/detail)."""
    if not ota:
        return None
    total = int(ota.get("total") or 0)
    received = int(ota.get("received") or 0)
    pct = f" ({100 * received // total}%)" if total else ""
    line = (f"ota: {ota['release']} {ota.get('state')}, {received}/{total} chunks{pct}, "
            f"{_bytes(int(ota.get('bytes') or 0))} received")
    if ota.get("reason"):
        line += f", reason {ota['reason']}"
    if ota.get("detail"):
        line += f": {ota['detail']}"
    return line


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _ago(ms: float | None) -> str:
    if not ms:
        return "never"
    s = max(0.0, time.time() - ms / 1000)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago"


def device_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configured device: polled ones (bus, polls, failures, state) and push ones."""
    stats = doc.get("stats", {})
    rows: dict[str, dict[str, Any]] = {}
    for bus, b in stats.get("scheduler", {}).get("buses", {}).items():
        for dev, d in b.get("devices", {}).items():
            rows[dev] = {
                "device": dev, "kind": "polled", "bus": bus, "state": d.get("state", "?"),
                "polls": d.get("polls", 0), "failures": d.get("failures", 0),
                "latency_ms": round(1000 * float(d.get("last_latency_s", 0.0)), 1),
            }
    for dev, counters in stats.get("devices", {}).get("devices", {}).items():
        if dev in rows:
            continue
        c = counters if isinstance(counters, dict) else {}
        rows[dev] = {"device": dev, "kind": "push", "bus": None,
                     "state": "unavailable" if c.get("unavailable") else (
                         "running" if doc.get("running") else "stopped"),
                     "polls": None, "failures": c.get("failures"), "latency_ms": None}
    for dev, why in doc.get("unavailable", {}).items():
        row = rows.setdefault(dev, {"device": dev, "kind": "?", "bus": None, "polls": None,
                                    "failures": None, "latency_ms": None})
        row["state"] = "UNAVAILABLE"
        row["reason"] = why
    return sorted(rows.values(), key=lambda r: r["device"])


def render(doc: dict[str, Any]) -> str:
    """The human view: a header, then tables (devices, outbox lanes), then counters."""
    head = f"gateway {doc.get('gateway_id', '?')}: " + (
        f"running (pid {doc['pid']})" if doc.get("running") else "not running"
    )
    if "status_age_seconds" in doc:
        head += f", status written {doc['status_age_seconds']} s ago"
    lines = [head]
    stats = doc.get("stats", {})
    up = stats.get("uplink")
    if up:
        lines.append(
            f"uplink: {'connected' if up.get('connected') else 'NOT CONNECTED'}, "
            f"{up.get('inflight', 0)} batches in flight, delivered "
            f"{up.get('batches_delivered', 0)} batches / {up.get('readings_delivered', 0)} "
            f"readings, last ack {_ago(up.get('last_ack_ms'))}, reconnects "
            f"{max(0, up.get('connects', 0) - 1)}"
        )
    elif doc.get("running"):
        lines.append("uplink: disabled")
    devices = device_rows(doc)
    if devices:
        rows = [["DEVICE", "KIND", "BUS", "STATE", "POLLS", "FAILURES", "LATENCY"]]
        for d in devices:
            rows.append([
                d["device"], d["kind"], d["bus"] or "-", d["state"] + (
                    f" ({d['reason']})" if d.get("reason") else ""),
                "-" if d["polls"] is None else str(d["polls"]),
                "-" if d["failures"] is None else str(d["failures"]),
                "-" if d["latency_ms"] is None else f"{d['latency_ms']} ms",
            ])
        lines += ["", *_table(rows)]
    ob = doc["outbox"]
    out = stats.get("outbox", {})
    if ob.get("exists"):
        dropped = out.get("dropped_readings", {}) if isinstance(out, dict) else {}
        rows = [["OUTBOX LANE", "BATCHES", "ITEMS", "BYTES", "DROPPED READINGS"]]
        for lane in ("alert", "telemetry", "bulk"):
            v = ob["lanes"].get(lane, {"batches": 0, "readings": 0, "bytes": 0})
            rows.append([lane, str(v["batches"]), str(v["readings"]), _bytes(v["bytes"]),
                         str(dropped.get(lane, 0) if isinstance(dropped, dict) else 0)])
        lines += ["", *_table(rows), f"outbox file: {_bytes(ob['file_bytes'])} on disk"]
    ota = ota_line(doc.get("ota"))
    if ota:
        lines.append(ota)
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
            f"{pipe.get('readings_sealed', 0)} sealed in {pipe.get('batches_sealed', 0)} batches"
        )
    if out:
        keys = ("appended", "delivered", "dropped_batches", "quarantined", "gaps", "given_up",
                "unclean_stops", "disk_low")
        parts = []
        for k in keys:
            v = out.get(k)
            if isinstance(v, dict):
                v = sum(x for x in v.values() if isinstance(x, int | float))
            if v is not None:
                parts.append(f"{k}={v}")
        lines.append("outbox counters: " + ", ".join(parts))
    rules = stats.get("edge", {}).get("rules")
    if isinstance(rules, dict) and "active" in rules:
        lines.append(f"rules: {rules.get('rules', 0)} rules, {rules['active']} active alerts, "
                     f"{rules.get('raised', 0)} raised, {rules.get('cleared', 0)} cleared")
    return "\n".join(lines)
