"""Prometheus text endpoint over the components' ``stats()`` dicts.

Components never import prometheus_client: each exposes ``stats() -> dict`` and this module
flattens them. Nested dicts under a key in ``LABEL_KEYS`` become labels
(``{"devices": {"boiler-1": {"polls": 3}}}`` -> ``edgegw_scheduler_polls{device="boiler-1"} 3``);
other nested keys extend the metric name. Non-numeric leaves are skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
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
            label = LABEL_KEYS.get(key) or (
                "lane" if value and set(map(str, value)) <= LANE_NAMES else None
            )
            if label is None:
                yield from flatten(value, name, labels)
                continue
            for lv, sub in value.items():
                sub_labels = (*labels, (label, str(lv)))
                if isinstance(sub, Mapping):
                    yield from flatten(sub, prefix, sub_labels)
                elif isinstance(sub, int | float):
                    yield name, sub_labels, float(sub)


class StatsCollector:
    """Gathers every component's stats; a prometheus_client collector by duck typing.

    prometheus_client is imported only when the endpoint is served (3-4 MB of resident memory
    that a gateway with ``metrics.enabled: false`` does not pay).
    """

    def __init__(self, sources: Mapping[str, StatsFn]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily  # lazy: ~4 MB RSS

        families: dict[tuple[str, tuple[str, ...]], GaugeMetricFamily] = {}
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
                    fam = GaugeMetricFamily(
                        name, f"edgegw {component} statistic", labels=label_names
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


def serve(listen: str, collector: StatsCollector) -> Any:
    """Start the HTTP endpoint on ``host:port`` (localhost by default); returns the server."""
    from prometheus_client import start_http_server  # lazy: ~4 MB RSS
    from prometheus_client.registry import CollectorRegistry  # lazy: ~4 MB RSS

    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(collector)
    server, _thread = start_http_server(
        int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry
    )
    return server
