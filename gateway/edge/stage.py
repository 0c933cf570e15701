"""The Stage API: what an edge stage (rules, anomaly, aggregation) promises the pipeline.

The types live here, in the edge package, and the runtime's pipeline imports them (never the
other way round: edge does not import the runtime).

A stage sees samples in arrival order on the event loop and returns what goes on
(``StageOutput``: samples for the next stage, alerts, write requests). Some stages *hold* input
samples for a while (the aggregation stage keeps them in open windows until the window closes);
the durability promise of the pipeline covers them:

- ``held()`` is the number of input samples the stage holds right now.
- ``take_holds()``, called right after ``process``, names the holds (opaque, hashable keys, e.g.
  one per aggregation window) that the samples of that call went into; ``take_released()`` names
  the holds whose result the stage emitted since the last call (in the output of that same
  ``process``/``tick``/``flush`` call). A durable emit whose samples went into a hold completes
  when the output that released the hold is sealed in the outbox ("the aggregate that contains
  them is sealed"); when that output is empty (e.g. suppressed by report-by-exception) it
  completes at the release.
- ``flush(now_ms)`` releases everything the stage holds (an aggregation window is closed early
  and emits its partial aggregate). The runtime calls it on shutdown (SIGTERM), so a clean stop
  seals every reading that reached the pipeline, raw or inside an aggregate.

Stages that hold nothing return 0 / empty sets and ``flush`` returns what ``tick`` returns.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from edgegw.model import Alert, Sample

__all__ = ["HoldKey", "Stage", "StageOutput", "WriteRequest"]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A stage asks the runtime to write ``value`` to ``device.point`` (via the bus scheduler)."""

    device: str
    point: str
    value: float | int | bool | str
    reason: str = ""


StageOutput = tuple[list[Sample], list[Alert], list[WriteRequest]]
HoldKey = Hashable


class Stage(Protocol):
    """One edge stage; see the module doc for the hold/flush contract."""

    name: str

    def process(self, samples: list[Sample], now_ms: int) -> StageOutput: ...

    def tick(self, now_ms: int) -> StageOutput: ...

    def flush(self, now_ms: int) -> StageOutput: ...

    def held(self) -> int: ...

    def take_holds(self) -> frozenset[HoldKey]: ...

    def take_released(self) -> frozenset[HoldKey]: ...

    def stats(self) -> dict[str, Any]: ...


class NoHolds:
    """Mixin for stages that never hold a sample: the hold half of the protocol, empty."""

    def tick(self, now_ms: int) -> StageOutput:  # pragma: no cover - overridden
        return [], [], []

    def flush(self, now_ms: int) -> StageOutput:
        return self.tick(now_ms)

    def held(self) -> int:
        return 0

    def take_holds(self) -> frozenset[HoldKey]:
        return frozenset()

    def take_released(self) -> frozenset[HoldKey]:
        return frozenset()
