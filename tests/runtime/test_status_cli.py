"""`edgegw status` for a running and for a stopped gateway (reads only the state dir)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .helpers import gateway_config, poll_until, start_daemon, stop_daemon, write_config


def _status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgegw.cli", "status", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _doc(cfg: Path) -> dict[str, Any]:
    proc = _status(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_status_running_then_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "g.yaml",
        gateway_config(
            "st-gw",
            state,
            devices=[
                {
                    "id": "s1",
                    "driver": "sim",
                    "poll": "50ms",
                    "options": {"points": [{"name": "a"}, {"name": "b"}]},
                },
                {   # a push device: listed by status too (no bus, no polls)
                    "id": "p1",
                    "driver": "sim",
                    "options": {"push_rate": 5, "burst": 1, "points": [{"name": "x"}]},
                },
            ],
        ),
    )
    proc = start_daemon(cfg, tmp_path / "d.log")
    try:
        doc = poll_until(
            lambda: (
                (d := _doc(cfg)).get("running")
                and d["stats"]["pipeline"].get("readings_sealed", 0) > 0
                and d
            ),
            30,
            "a running status with sealed readings",
        )
        assert doc["gateway_id"] == "st-gw" and doc["pid"] == proc.pid
        text = _status(cfg).stdout
        assert f"gateway st-gw: running (pid {proc.pid})" in text
        row = next(ln for ln in text.splitlines() if ln.startswith("s1 "))
        assert row.split()[1] == "polled" and "DEVICE" in text
        push = next(ln for ln in text.splitlines() if ln.startswith("p1 "))
        assert push.split()[1:4] == ["push", "-", "running"]
        devices = json.loads(_status(cfg, "--json").stdout)["devices"]
        assert [(d["device"], d["kind"]) for d in devices] == [("p1", "push"), ("s1", "polled")]
    finally:
        assert stop_daemon(proc) == 0
    doc = _doc(cfg)
    assert doc["running"] is False
    lanes = doc["outbox"]["lanes"]
    assert lanes["telemetry"]["readings"] == doc["stats"]["pipeline"]["readings_sealed"]
    assert "not running" in _status(cfg).stdout
