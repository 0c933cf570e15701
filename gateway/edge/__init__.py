"""Local intelligence on the gateway: rules with actions, aggregation, anomaly detection.

``build_stages(cfg, submit_blocking=...)`` returns the pipeline stages for a ``GatewayConfig`` in
their order: anomaly (so its scores reach the rules and the aggregation), rules, aggregate. Stages
for empty config sections are left out. Each stage implements ``Stage`` (``edgegw.edge.stage``:
process/tick/flush, the samples it holds, stats). The edge package never imports the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegw.edge.aggregate import AggregateStage
from edgegw.edge.anomaly import AnomalyStage, SubmitBlocking
from edgegw.edge.rules import RuleStage
from edgegw.edge.stage import HoldKey, Stage, StageOutput, WriteRequest

__all__ = [
    "AggregateStage",
    "AnomalyStage",
    "HoldKey",
    "RuleStage",
    "Stage",
    "StageOutput",
    "WriteRequest",
    "build_stages",
]


def build_stages(cfg: Any, *, submit_blocking: SubmitBlocking | None = None) -> list[Stage]:
    """The edge stages for ``cfg`` (anomaly, rules, aggregate; empty ones omitted)."""
    stages: list[Stage] = []
    base = getattr(cfg, "base_dir", None)
    if cfg.anomaly:
        anomaly = AnomalyStage(cfg.anomaly, base_dir=Path(base) if base else None)
        anomaly.start(submit_blocking)
        stages.append(anomaly)
    if any(r.enabled for r in cfg.rules):
        stages.append(RuleStage(cfg.rules))
    by_id = {d.id: d for d in cfg.devices}
    addresses: dict[str, str] = getattr(cfg, "addresses", None) or {d: d for d in by_id}
    # a device's aggregate applies to its sub-devices' samples too (config-time addressing)
    aggregates = {
        addr: by_id[owner].aggregate
        for addr, owner in addresses.items()
        if owner in by_id and getattr(by_id[owner], "aggregate", None) is not None
    }
    if aggregates:
        stages.append(AggregateStage(aggregates))
    return stages
