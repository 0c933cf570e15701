"""Config models of the edge stages (rules, aggregation, anomaly). Placeholder shapes, replaced
by the edge implementation; the root config imports these names."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="allow")


class AggregateConfig(BaseModel):
    model_config = ConfigDict(extra="allow")


class AnomalyConfig(BaseModel):
    model_config = ConfigDict(extra="allow")


def validate_edge(cfg: Any, points_by_device: dict[str, set[str] | None]) -> list[tuple[str, str, str | None]]:
    """Semantic checks of the edge sections: (dotted path, message, hint) per problem."""
    return []
