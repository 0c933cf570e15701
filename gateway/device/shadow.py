"""Device shadow, gateway side: desired -> checked writes; device values -> reported.

Per device: ``desired`` (from the cloud) and ``reported`` (from the device), each a flat
``{point: value}`` document with a version, persisted in ``devmgmt.db``.

Rules (docs/device-management.md):
- Desired versions are assigned by the cloud only, strictly increasing per device. The gateway
  applies a desired document only if its version is newer than the one it last applied; an
  older or equal one is refused as ``stale`` (the reply carries the gateway's version, the
  cloud then re-sends its newest). So the newest desired state always wins, and a re-delivered
  or reordered old one can never roll a device back.
- Applying = one checked write (same checks as commands, through the bus scheduler ahead of
  polls) per desired point whose reported value differs. Each desired version is applied once:
  if another client changes the device later, reported follows the device and the delta shows
  the divergence (the gateway does not fight the other client; set desired again to re-apply).
- Reported covers the device's writable points plus every point named in desired. It changes
  when the device's value changes (not on every poll) and is sent to the cloud at most every
  ``flush_every`` seconds, and in full on every (re)connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from edgegw.device.commands import CommandHandler, jsonable
from edgegw.device.downlink import DownlinkService
from edgegw.device.host import GatewayHost
from edgegw.model import Quality, Sample
from edgegw.protocol import downlink as dl

log = logging.getLogger("edgegw.shadow")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return bool(a == b)


class ShadowManager:
    """Kind ``shadow`` handler + sample observer. start()/stop()/stats()."""

    def __init__(self, gateway: GatewayHost, service: DownlinkService, commands: CommandHandler,
                 flush_every: float = 0.2) -> None:
        self.gw = gateway
        self.svc = service
        self.commands = commands
        self.flush_every = flush_every
        self.docs: dict[str, dict[str, Any]] = {}
        self._tracked: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.counts: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        state = self.svc.state
        assert state is not None
        for dev in await self.svc.db(state.shadow_devices):
            self.docs[dev] = await self.svc.db(state.shadow_get, dev)
        self.retrack()
        self._task = asyncio.create_task(self._flusher(), name="shadow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "devices": len(self.docs)}

    def retrack(self) -> None:
        """Recompute the points followed per device (after start and after a new config)."""
        tracked: dict[str, set[str]] = {}
        for dev in self.gw.cfg.devices:
            pts: set[str] = set(self.docs.get(dev.id, {}).get("desired", {}))
            entry = self.gw.drivers.get(dev.driver)
            if entry is not None and entry.cls is not None:
                try:
                    w = entry.cls.writable_points(entry.cls.Options.model_validate(
                        dev.options or {}))
                except Exception:
                    w = None
                pts.update(w or ())
            if pts:
                tracked[dev.id] = pts
        self._tracked = tracked

    def _doc(self, device: str) -> dict[str, Any]:
        doc = self.docs.get(device)
        if doc is None:
            doc = self.docs[device] = {"desired": {}, "desired_version": 0, "reported": {},
                                       "reported_version": 0}
        return doc

    # ------------------------------------------------------------------ reported
    def observe(self, samples: Sequence[Sample]) -> None:
        """Sample observer (event loop, hot path): cheap membership checks only."""
        tracked = self._tracked
        if not tracked:
            return
        for s in samples:
            pts = tracked.get(s.device)
            if pts is None or s.metric not in pts or s.quality != Quality.GOOD:
                continue
            doc = self._doc(s.device)
            old = doc["reported"].get(s.metric, _MISSING)
            value = jsonable(s.value)
            if old is _MISSING or not same(old, value):
                doc["reported"][s.metric] = value
                doc["reported_version"] += 1
                self._dirty.add(s.device)
                self._wake.set()

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(self.flush_every)  # rate limit of reports, not synchronisation

    async def flush(self, devices: Sequence[str] | None = None) -> None:
        state = self.svc.state
        assert state is not None
        todo = list(devices if devices is not None else self._dirty)
        if devices is None:
            self._dirty.clear()
        for dev in todo:
            doc = self.docs.get(dev)
            if doc is None:
                continue
            await self.svc.db(state.shadow_put, dev, _copy(doc))
            self.svc.reply(dl.SHADOW, None, {"op": "reported", "device": dev,
                                             "reported": doc["reported"],
                                             "reported_version": doc["reported_version"],
                                             "desired_version": doc["desired_version"]})
            self.counts["reports"] += 1

    async def on_connect(self) -> None:
        """Full report on every (re)connection, and ask the cloud for the desired state."""
        await self.flush(sorted(self.docs))
        self.svc.reply(dl.SHADOW, None, {"op": "sync", "desired_versions": {
            d: doc["desired_version"] for d, doc in self.docs.items()}})

    # ------------------------------------------------------------------ desired
    async def __call__(self, msg: dl.Message) -> None:
        body = msg.body
        if body.get("op") != "desired":
            self.counts["unknown_op"] += 1
            return
        device, desired, version = body.get("device"), body.get("desired"), body.get("version")
        if not isinstance(device, str) or not isinstance(desired, dict) or not isinstance(
            version, int
        ):
            self.counts["malformed"] += 1
            return
        async with self._lock:  # one desired document at a time: versions apply in order
            await self._apply(device, desired, version, msg.msg_id)

    async def _apply(self, device: str, desired: dict[str, Any], version: int,
                     msg_id: str) -> None:
        state = self.svc.state
        assert state is not None
        if not any(d.id == device for d in self.gw.cfg.devices):
            self.svc.reply(dl.SHADOW, msg_id, {"op": "desired_refused", "device": device,
                                               "version": version,
                                               "reason": f"unknown device {device!r}"})
            return
        doc = self._doc(device)
        if version <= doc["desired_version"]:
            self.counts["stale"] += 1
            self.svc.reply(dl.SHADOW, msg_id, {"op": "desired_refused", "device": device,
                                               "version": version, "reason": "stale",
                                               "current_version": doc["desired_version"]})
            return
        doc["desired"] = dict(desired)
        doc["desired_version"] = version
        await self.svc.db(state.shadow_put, device, _copy(doc))
        self.retrack()
        errors: dict[str, str] = {}
        for point, value in desired.items():
            if value is None:
                continue
            if point in doc["reported"] and same(doc["reported"][point], value):
                continue
            res = await self.commands.write(device, point, value)
            if res["status"] == "ok":
                self.counts["writes"] += 1
                # the device now holds it; the next poll confirms (reported follows the device)
            else:
                self.counts["write_errors"] += 1
                errors[point] = f"{res['status']}: {res.get('reason')}"
        self.counts["applied"] += 1
        self.svc.reply(dl.SHADOW, msg_id, {"op": "desired_applied", "device": device,
                                           "version": version, "errors": errors})


class _Missing:
    pass


_MISSING = _Missing()


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    return {"desired": dict(doc["desired"]), "desired_version": doc["desired_version"],
            "reported": dict(doc["reported"]), "reported_version": doc["reported_version"]}
