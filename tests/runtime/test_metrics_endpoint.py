"""The gateway's metrics listener: Prometheus types and labels, /healthz and /readyz.

The stats sources are plain functions returning the dicts the components return (the same
shapes as a running gateway's status.json); the HTTP side is the real listener on loopback.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edgegw.runtime.metrics import StatsCollector, serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_counters_labels_health_and_readiness() -> None:
    state: dict[str, Any] = {
        "devices": {"devices": {"boiler1": {}, "meter1": {}}},
        "uplink": {"connected": 1, "published": 10, "inflight": 2},
    }
    sources = {
        "pipeline": lambda: {"readings_in": 66, "pending": {"alert": 0, "telemetry": 3,
                                                            "bulk": 0}},
        "outbox": lambda: {"appended": 12, "batches": {"alert": 1, "telemetry": 11, "bulk": 0},
                           "dropped_bytes": {"alert": 0, "telemetry": 5, "bulk": 0},
                           "used_bytes": 2170},
        "scheduler": lambda: {"buses": {"line1": {"devices": {"boiler1": {
            "polls": 31, "state": "ok", "lateness_p99_s": 0.004}}}}},
        "edge": lambda: {"rules": {"evaluations": 31, "raised": 1, "active": 1}},
        "devices": lambda: state["devices"],
        "uplink": lambda: state["uplink"],
    }
    port = _free_port()
    server = serve(f"127.0.0.1:{port}", StatsCollector(sources))
    try:
        status, text = _get(port, "/metrics")
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["edgegw_outbox_appended"].type == "counter"
        assert "edgegw_outbox_appended_total 12.0" in text
        assert fams["edgegw_outbox_used_bytes"].type == "gauge"
        assert fams["edgegw_outbox_batches"].type == "gauge"
        assert fams["edgegw_outbox_dropped_bytes"].type == "counter"
        assert 'edgegw_outbox_dropped_bytes_total{lane="telemetry"} 5.0' in text
        assert 'edgegw_scheduler_polls_total{bus="line1",device="boiler1"} 31.0' in text
        assert fams["edgegw_scheduler_lateness_p99_s"].type == "gauge"
        # a stage's counters are names, not label values (no rule="evaluations")
        assert "edgegw_edge_rules_evaluations_total 31.0" in text and 'rule="' not in text
        assert fams["edgegw_edge_rules_active"].type == "gauge"
        assert fams["edgegw_uplink_connected"].type == "gauge"
        assert _get(port, "/healthz") == (200, "ok\n")
        status, body = _get(port, "/readyz")
        assert status == 200 and json.loads(body) == {"ready": True, "reasons": []}
        # a device that did not start and a lost uplink: not ready, and why
        state["devices"] = {"devices": {"boiler1": {}, "meter1": {"unavailable": 1}}}
        state["uplink"] = {"connected": 0}
        status, body = _get(port, "/readyz")
        doc = json.loads(body)
        assert status == 503 and doc["ready"] is False
        assert doc["reasons"] == ["devices not started: meter1", "uplink not connected"]
        assert _get(port, "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
