"""The real daemon against a real pymodbus TCP server in its own process.

Gateway core acceptance 2: >= 3 unit ids, every register kind and data type, both word orders:
the decoded outbox equals the server's values, and the server's request counts prove coalescing.
Edge acceptance 1 (end to end): a rule's write action changes a register on the server and the
result is reported in the gateway's status; the rule's alert reaches the outbox's alert lane.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from modbus.modbus_sim import driver_points, layout
from modbus.simproc import SimServer

from edgegw.model import Quality
from edgegw.runtime.outbox_reader import read_outbox

from .helpers import free_port, poll_until, start_daemon, stop_daemon, write_config

UNITS = (1, 2, 3)


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = SimServer("--tcp", "0", "--units", ",".join(map(str, UNITS)), log_dir=tmp_path)
    yield srv
    srv.close()


def _metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return text if "edgegw_scheduler_polls_total{" in text else None


def _equal(expected: Any, got: Any) -> bool:
    if isinstance(expected, float) or isinstance(got, float):
        return math.isclose(float(expected), float(got), rel_tol=1e-6, abs_tol=1e-9)
    return bool(expected == got)


def test_outbox_equals_server_values_and_rule_write(tmp_path: Path, server: SimServer) -> None:
    state = tmp_path / "state"
    metrics_port = free_port()
    devices = []
    for u in UNITS:
        points = driver_points(u)
        if u == 1:
            points.append(
                {"name": "target", "kind": "holding", "address": 60, "type": "uint16",
                 "writable": True}
            )
        devices.append(
            {
                "id": f"unit{u}",
                "driver": "modbus",
                "poll": "300ms",
                "timeout": "1s",
                "options": {"transport": "tcp", "host": "127.0.0.1", "port": server.port,
                            "unit_id": u, "points": points},
            }
        )
    cfg = write_config(
        tmp_path / "gateway.yaml",
        {
            "gateway": {"id": "e2e-gw", "state_dir": str(state), "log_level": "info"},
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
            "batch": {"max_age": "100ms"},
            "devices": devices,
            "rules": [
                {
                    "name": "unit1-counter-high",
                    "device": "unit1",
                    "when": "h_uint16_1 > 40000",
                    "severity": "critical",
                    "actions": [
                        {"type": "alert"},
                        {"type": "write", "point": "target", "value": 1234},
                    ],
                }
            ],
        },
    )
    proc = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        # Let it poll several times, and until the rule's write reached the server.
        poll_until(
            lambda: server.cmd(op="get", unit=1, table="h", address=60, count=1)["values"]
            == [1234],
            20,
            "the rule's write to reach the server",
        )
        status_file = state / "status.json"
        poll_until(
            lambda: status_file.exists()
            and json.loads(status_file.read_text())["stats"]["writes"].get("ok", 0) >= 1,
            20,
            "the write result in status.json",
        )
        metrics = poll_until(
            lambda: _metrics(metrics_port), 20, "the Prometheus endpoint"
        )
        poll_until(
            lambda: len(read_outbox(state, gateway_id="e2e-gw")[0]) > 0
            and min(
                sum(1 for s in read_outbox(state, gateway_id="e2e-gw")[0] if s.device == f"unit{u}"
                    and s.metric == "h_int16_0")
                for u in UNITS
            ) >= 3,
            20,
            "three polls of every unit in the outbox",
        )
    finally:
        assert stop_daemon(proc) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    samples, alerts, _ = read_outbox(state, gateway_id="e2e-gw")
    by_point: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for s in samples:
        by_point[(s.device, s.metric)].append(s)
    for u in UNITS:
        for p in layout(u):
            got = by_point[(f"unit{u}", p["name"])]
            assert got, f"unit{u}.{p['name']} never reached the outbox"
            for s in got:
                if p.get("max") is not None and p["value"] > p["max"]:
                    assert s.quality is Quality.OUT_OF_RANGE
                    continue
                assert s.quality is Quality.GOOD, (u, p["name"], s)
                assert _equal(p["value"], s.value), (u, p["name"], p["value"], s.value)
    # Coalescing: one poll takes one request per coalesced group (the planner's own tests pin the
    # exact grouping), not one per point. The server counts what it really received; the daemon
    # may have sent one more poll after the last one stored, hence polls + 1.
    polls = len(by_point[("unit2", "h_int16_0")])
    requests = sum(server.counts(2).values())
    points = len(layout(2))
    assert polls >= 3
    assert requests <= (polls + 1) * points / 5, f"{requests} requests for {polls} polls"
    # The Prometheus endpoint exports per-device polls and the outbox's per-lane counters.
    polled = [
        line for line in metrics.splitlines()
        if line.startswith("edgegw_scheduler_polls_total{") and 'device="unit2"' in line
    ]
    assert polled and float(polled[0].rsplit(" ", 1)[1]) >= 1, metrics[:2000]
    assert 'edgegw_outbox_batches{lane="telemetry"}' in metrics
    assert "edgegw_pipeline_readings_sealed_total " in metrics
    fired = [a for a in alerts if a.rule == "unit1-counter-high" and a.active]
    assert len(fired) == 1, "one alert per episode"
    assert fired[0].device == "unit1"
