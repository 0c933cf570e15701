"""Prometheus text endpoint over the components' ``stats()`` dicts.

Components never import prometheus_client: each exposes ``stats() -> dict`` and this module
flattens them. Nested dicts under a key in ``LABEL_KEYS`` whose values are themselves dicts
become labels (``{"devices": {"boiler-1": {"polls": 3}}}`` ->
``edgegw_scheduler_polls_total{device="boiler-1"} 3``); other nested keys extend the metric name
(``{"rules": {"evaluations": 5}}`` is ``edgegw_edge_rules_evaluations_total``, not a label).
Non-numeric leaves are skipped.

Types: a leaf is a COUNTER (exposed with the ``_total`` suffix, so ``rate()`` works) unless its
key is in ``GAUGE_KEYS`` (current levels: queue sizes, bytes held, states, latencies, ages) or
matches ``GAUGE_PATTERN``. Components add counters freely; a new gauge must be listed here.

``/healthz`` answers 200 while the process serves HTTP (liveness). ``/readyz`` answers 200 only
when the gateway is ready: every configured device started (none unavailable), the outbox
writable (its last append did not fail; ``outbox_writable`` in the status), and the uplink
connected when it is enabled; otherwise 503 with the reasons as JSON.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from threading import Thread
from typing import Any

log = logging.getLogger("edgegw.metrics")

LABEL_KEYS = {
    "devices": "device",
    "lanes": "lane",
    "buses": "bus",
    "kinds": "kind",
    "rules": "rule",
    "refused": "reason",  # downlink refusals: edgegw_downlink_refused{reason="replay"}
}
LANE_NAMES = {"alert", "telemetry", "bulk"}
#: leaves that are levels, not running totals
GAUGE_KEYS = {
    "pending", "in_flight", "seals_in_flight", "used_bytes", "max_bytes", "file_bytes",
    "next_seq", "batches", "bytes", "quarantine_rows", "consecutive_failures", "state",
    "connected", "inflight", "held_back", "backoff_s", "last_ack_ms", "writes_queued",
    "uptime_seconds", "active", "rules", "detectors", "queued", "series", "open_windows",
    "unavailable", "certificate_days_left", "window", "backlog",
}
GAUGE_PATTERN = re.compile(r"(_lateness_[a-z0-9]+_s|_latency_s|_seconds|_ms|_days_left)$|_last_")
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")

StatsFn = Callable[[], Mapping[str, Any]]


def flatten(
    stats: Mapping[str, Any], prefix: str, labels: tuple[tuple[str, str], ...] = ()
) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
    for key, value in stats.items():
        name = f"{prefix}_{_NAME_OK.sub('_', key)}"
        if isinstance(value, int | float):  # bool is an int
            yield name, labels, float(value)
        elif isinstance(value, Mapping):
            # {"devices": {...}} and per-lane maps {"alert": 1, "telemetry": 5} become labels
            label = (
                LABEL_KEYS.get(key)
                if value and all(isinstance(v, Mapping) for v in value.values())
                else None
            ) or ("lane" if value and set(map(str, value)) <= LANE_NAMES else None)
            if label is None:
                yield from flatten(value, name, labels)
                continue
            for lv, sub in value.items():
                sub_labels = (*labels, (label, str(lv)))
                if isinstance(sub, Mapping):
                    yield from flatten(sub, prefix, sub_labels)
                elif isinstance(sub, int | float):
                    yield name, sub_labels, float(sub)


def is_gauge(name: str) -> bool:
    """``name`` is a flattened metric name; its last key decides (see the module doc)."""
    if any(name.endswith("_" + key) for key in GAUGE_KEYS):
        # ... but a running total of a level's unit is a counter: dropped_bytes, rejected_new
        prefixed = ("dropped_", "appended_", "delivered_", "sealed_", "rejected_")
        return not any(name.endswith("_" + p + k) for p in prefixed for k in GAUGE_KEYS)
    return bool(GAUGE_PATTERN.search(name))


class StatsCollector:
    """Gathers every component's stats; a prometheus_client collector by duck typing.

    prometheus_client is imported only when the endpoint is served (3-4 MB of resident memory
    that a gateway with ``metrics.enabled: false`` does not pay).
    """

    def __init__(self, sources: Mapping[str, StatsFn]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # lazy: ~4 MB RSS
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        families: dict[tuple[str, tuple[str, ...]], Any] = {}
        for component, fn in self._sources.items():
            try:
                stats = fn()
            except Exception:
                log.exception("stats of %s failed", component)
                continue
            for name, labels, value in flatten(stats, f"edgegw_{component}"):
                label_names = tuple(k for k, _ in labels)
                fam_key = (name, label_names)
                fam = families.get(fam_key)
                if fam is None:
                    gauge = is_gauge(name)
                    cls = GaugeMetricFamily if gauge else CounterMetricFamily
                    fam = cls(
                        name,
                        f"edgegw {component} {'level' if gauge else 'count'}",
                        labels=label_names,
                    )
                    families[fam_key] = fam
                fam.add_metric([v for _, v in labels], value)
        yield from families.values()

    def snapshot(self) -> dict[str, Any]:
        """All sources' raw stats (for status.json)."""
        out: dict[str, Any] = {}
        for component, fn in self._sources.items():
            try:
                out[component] = fn()
            except Exception as exc:
                out[component] = {"error": str(exc)}
        return out


def readiness(snapshot: Mapping[str, Any]) -> list[str]:
    """Why the gateway is not ready (empty list = ready), from a stats snapshot."""
    reasons: list[str] = []
    unavailable = [
        d for d, c in snapshot.get("devices", {}).get("devices", {}).items()
        if isinstance(c, Mapping) and c.get("unavailable")
    ]
    if unavailable:
        reasons.append("devices not started: " + ", ".join(sorted(unavailable)))
    if "error" in snapshot.get("devices", {}):
        reasons.append("devices: " + str(snapshot["devices"]["error"]))
    outbox = snapshot.get("outbox", {})
    if not outbox or "error" in outbox:
        reasons.append("outbox not open")
    elif outbox.get("writable") == 0:  # reported by an outbox that saw an append fail
        reasons.append("outbox not writable (disk full or read-only?)")
    uplink = snapshot.get("uplink")
    if uplink is not None and not uplink.get("connected"):
        reasons.append("uplink not connected")
    return reasons


def serve(listen: str, collector: StatsCollector) -> Any:
    """Start the HTTP endpoint on ``host:port`` (localhost by default); returns the server.

    Paths: ``/metrics`` (Prometheus text), ``/healthz`` (liveness), ``/readyz`` (readiness).
    """
    from http.server import (  # lazy: with html + socketserver ~0.6 MB; only with the endpoint
        BaseHTTPRequestHandler,
        ThreadingHTTPServer,
    )

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # lazy: ~4 MB RSS
    from prometheus_client.registry import CollectorRegistry  # lazy: ~4 MB RSS

    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/metrics", "/"):
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                reasons = readiness(collector.snapshot())
                body = json.dumps({"ready": not reasons, "reasons": reasons}).encode() + b"\n"
                self._send(503 if reasons else 200, body, "application/json")
            else:
                self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics http: " + format, *args)

    addr = host.strip("[]") or "127.0.0.1"
    if ":" in addr:

        class Server6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server: ThreadingHTTPServer = Server6((addr, int(port)), Handler)
    else:
        server = ThreadingHTTPServer((addr, int(port)), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
