"""The supervisor's parts: the ordered service list and the device manager's breakers from config.

- ``Gateway.services`` is the typed extension point: every part satisfies ``Service`` and they
  are started in order and stopped in reverse (a recording service appended with one line sees
  the others running on both sides of its own lifetime).
- Circuit breakers come from ``breaker:`` and ``buses.NAME.breaker`` (not hard-wired).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from edgegw.config import load_and_check
from edgegw.drivers.sim import SimDriver
from edgegw.model import Sample
from edgegw.runtime.devices import DeviceManager
from edgegw.runtime.service import Service
from edgegw.runtime.supervisor import Gateway
from edgegw.sdk import discover_drivers


def _cfg(tmp_path: Path, **extra: Any) -> Any:
    doc = {
        "gateway": {"id": "svc-gw", "state_dir": str(tmp_path / "state")},
        "metrics": {"enabled": False},
        "breaker": {"failure_threshold": 5, "backoff_min": "2s", "backoff_max": "8s"},
        "buses": {"slow": {"breaker": {"failure_threshold": 1, "backoff_min": "10s",
                                       "backoff_max": "60s", "jitter": 0}}},
        "devices": [
            {"id": "a", "driver": "sim", "options": {"points": [{"name": "x"}]}},
            {"id": "b", "driver": "sim", "bus": "slow", "options": {"points": [{"name": "y"}]}},
        ],
        **extra,
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_and_check(path, {"sim": SimDriver})


async def test_breakers_come_from_the_config(tmp_path: Path) -> None:
    got: list[Sample] = []

    async def sink(samples: Sequence[Sample]) -> None:
        got.extend(samples)

    dm = DeviceManager(_cfg(tmp_path), discover_drivers(only={"sim"}), tmp_path, sink, sink)
    await dm.start()
    try:
        by_bus = {name: s.policy for name, s in dm._schedulers.items()}
    finally:
        await dm.stop()
    assert by_bus["device:a"].failure_threshold == 5
    assert (by_bus["device:a"].backoff_min, by_bus["device:a"].backoff_max) == (2.0, 8.0)
    assert by_bus["slow"].failure_threshold == 1
    assert (by_bus["slow"].backoff_min, by_bus["slow"].jitter) == (10.0, 0.0)


class Recording:
    """A service appended with one line: records what the others look like around it."""

    name = "recording"

    def __init__(self, gw: Gateway, log: list[str]) -> None:
        self.gw, self.log = gw, log

    async def start(self) -> None:
        assert self.gw.datapath.pipeline is not None  # earlier services are running
        self.log.append("start")

    async def stop(self) -> None:
        assert self.gw.datapath.outbox is not None  # the data path stops after us
        self.log.append("stop")

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        return {"recording": {"events": len(self.log)}}


async def test_services_start_in_order_and_stop_in_reverse(tmp_path: Path) -> None:
    gw = Gateway(_cfg(tmp_path), discover_drivers(only={"sim"}))
    assert all(isinstance(s, Service) for s in gw.services)
    assert [s.name for s in gw.services] == ["datapath", "devices", "housekeeping"]
    log: list[str] = []
    gw.services.append(Recording(gw, log))
    await gw.start()
    await gw.stop()
    assert log == ["start", "stop"]
    assert gw.datapath.outbox is None  # closed, after every other service stopped
    status = yaml.safe_load((tmp_path / "state" / "status.json").read_text())
    assert status["stats"]["recording"] == {"events": 2}
