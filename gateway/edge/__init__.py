"""Local intelligence on the gateway: rules with actions, aggregation, anomaly detection.

``build_stages(cfg, submit_blocking=...)`` returns the pipeline stages for a ``GatewayConfig`` in
their order: anomaly (so its scores reach the rules and the aggregation), rules, aggregate. Stages
for empty config sections are left out. Each stage implements ``Stage`` (``edgegw.edge.stage``:
process/tick/flush, the samples it holds, stats). The edge package never imports the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegw.edge.stage import HoldKey, Stage, StageOutput, WriteRequest

if TYPE_CHECKING:
    from edgegw.edge.aggregate import AggregateStage
    from edgegw.edge.anomaly import AnomalyStage, SubmitBlocking
    from edgegw.edge.rules import RuleStage

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


def __getattr__(name: str) -> Any:
    """The stage classes, imported on first use (see ``build_stages``)."""
    if name == "AggregateStage":
        from edgegw.edge.aggregate import AggregateStage  # lazy: a stage is imported when used

        return AggregateStage
    if name in ("AnomalyStage", "SubmitBlocking"):
        from edgegw.edge import anomaly  # lazy: a stage is imported when used

        return getattr(anomaly, name)
    if name == "RuleStage":
        from edgegw.edge.rules import RuleStage  # lazy: a stage is imported when used

        return RuleStage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_stages(cfg: Any, *, submit_blocking: SubmitBlocking | None = None) -> list[Stage]:
    """The edge stages for ``cfg`` (anomaly, rules, aggregate; empty ones omitted).

    A stage's module is imported only when the config uses the stage: a gateway without
    ``anomaly:``, ``rules:`` or ``aggregate:`` does not keep their code resident (~0.6 MB)."""
    stages: list[Stage] = []
    base = getattr(cfg, "base_dir", None)
    if cfg.anomaly:
        from edgegw.edge.anomaly import AnomalyStage  # lazy: only a config with `anomaly:`

        anomaly = AnomalyStage(cfg.anomaly, base_dir=Path(base) if base else None)
        anomaly.start(submit_blocking)
        stages.append(anomaly)
    if any(r.enabled for r in cfg.rules):
        from edgegw.edge.rules import RuleStage  # lazy: only a config with enabled `rules:`

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
        from edgegw.edge.aggregate import AggregateStage  # lazy: only with `aggregate:`

        stages.append(AggregateStage(aggregates))
    return stages
