"""Test rig: DevicePollers + BusSchedulers over real Modbus servers, with sample recording."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgegw import Quality, Sample
from edgegw.runtime.poller import DevicePoller
from edgegw.runtime.scheduler import BusScheduler


@dataclass
class Recorder:
    """The poller's sink: keeps (monotonic arrival time, sample) per device."""

    seen: dict[str, list[tuple[float, Sample]]] = field(default_factory=dict)

    def sink_for(self, device: str) -> Callable[[list[Sample]], None]:
        def sink(samples: list[Sample]) -> None:
            now = time.monotonic()
            self.seen.setdefault(device, []).extend((now, s) for s in samples)
        return sink

    def since(self, device: str, t0: float) -> list[Sample]:
        return [s for t, s in self.seen.get(device, []) if t >= t0]

    def first(self, device: str, t0: float, quality: Quality) -> float | None:
        for t, s in self.seen.get(device, []):
            if t >= t0 and s.quality is quality:
                return t
        return None


async def until(predicate: Callable[[], object], within: float, what: str) -> None:
    """Poll-until-deadline (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


def attach(bus: BusScheduler, rec: Recorder, device: str, driver: object, *, period: float,
           timeout: float = 2.0) -> DevicePoller:
    poller = DevicePoller(device, driver, period=period, timeout=timeout,  # type: ignore[arg-type]
                          sink=rec.sink_for(device))
    bus.add(poller)
    return poller
