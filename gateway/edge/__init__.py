"""Local intelligence on the gateway: rules with actions, aggregation, anomaly detection.

``build_stages(cfg, submit_blocking=...)`` returns the pipeline stages for a ``GatewayConfig`` in
their order: anomaly (so its scores reach the rules and the aggregation), rules, aggregate. Stages
for empty config sections are left out. Each stage implements ``Stage`` (``edgegw.edge.stage``:
process/tick/flush, the samples it holds, stats). The edge package never imports the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
    "stage_configs",
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


def _dump(x: Any) -> Any:
    dump = getattr(x, "model_dump", None)
    return dump(mode="json") if dump is not None else x


def _aggregates(cfg: Any) -> dict[str, Any]:
    """Each sample address's aggregate settings (a device's apply to its sub-devices too)."""
    by_id = {d.id: d for d in cfg.devices}
    addresses: dict[str, str] = getattr(cfg, "addresses", None) or {d: d for d in by_id}
    return {
        addr: by_id[owner].aggregate
        for addr, owner in addresses.items()
        if owner in by_id and getattr(by_id[owner], "aggregate", None) is not None
    }


def stage_configs(cfg: Any) -> dict[str, str]:
    """What each stage of ``cfg`` is built from, as comparable text, by stage name (stages an
    empty section leaves out are absent): a stage whose text did not change between two configs
    can be kept as it is (``build_stages(..., reuse=)``), with its learnt state and open windows."""
    out: dict[str, str] = {}
    if cfg.anomaly:
        base = getattr(cfg, "base_dir", None)
        out["anomaly"] = json.dumps([str(base), [_dump(a) for a in cfg.anomaly]], sort_keys=True)
    if any(r.enabled for r in cfg.rules):
        out["rules"] = json.dumps([_dump(r) for r in cfg.rules], sort_keys=True)
    aggregates = _aggregates(cfg)
    if aggregates:
        out["aggregate"] = json.dumps({k: _dump(v) for k, v in aggregates.items()},
                                      sort_keys=True)
    return out


def build_stages(
    cfg: Any,
    *,
    submit_blocking: SubmitBlocking | None = None,
    reuse: Mapping[str, Stage] | None = None,
    previous: Mapping[str, Stage] | None = None,
) -> list[Stage]:
    """The edge stages for ``cfg`` (anomaly, rules, aggregate; empty ones omitted).

    ``reuse``: stages to keep instead of building them anew, by name (the caller decides they
    fit ``cfg``: ``stage_configs``). ``previous``: the running stages, by name; a new rules
    stage carries on the episodes of the rules that did not change (``RuleStage(previous=)``).
    A stage's module is imported only when the config uses the stage: a gateway without
    ``anomaly:``, ``rules:`` or ``aggregate:`` does not keep their code resident (~0.6 MB)."""
    keep = reuse or {}
    stages: list[Stage] = []
    base = getattr(cfg, "base_dir", None)
    if cfg.anomaly:
        if "anomaly" in keep:
            stages.append(keep["anomaly"])
        else:
            from edgegw.edge.anomaly import AnomalyStage  # lazy: only a config with `anomaly:`

            anomaly = AnomalyStage(cfg.anomaly, base_dir=Path(base) if base else None)
            anomaly.start(submit_blocking)
            stages.append(anomaly)
    if any(r.enabled for r in cfg.rules):
        if "rules" in keep:
            stages.append(keep["rules"])
        else:
            from edgegw.edge.rules import RuleStage  # lazy: only a config with enabled `rules:`

            old = (previous or {}).get("rules")
            stages.append(
                RuleStage(cfg.rules, previous=old if isinstance(old, RuleStage) else None)
            )
    aggregates = _aggregates(cfg)
    if aggregates:
        if "aggregate" in keep:
            stages.append(keep["aggregate"])
        else:
            from edgegw.edge.aggregate import AggregateStage  # lazy: only with `aggregate:`

            stages.append(AggregateStage(aggregates))
    return stages
