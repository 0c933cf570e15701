"""The device-management service: the authenticated downlink with commands, device shadow and
remote configuration (``edgegw.device``), wired into the running gateway.

It is the last service (started after the data path, the uplink, the downlink service it
registers its handlers with, and the devices; stopped first), and exists only for an enrolled
gateway (uplink enabled). ``GatewayAccess`` is the
narrow interface the device package gets (``edgegw.device.host.GatewayHost``): device calls on
the bus schedulers, the config checker, and ``reconfigure``, which applies a new config without
disturbing what did not change:

- devices are compared one by one (their whole entry and their bus settings); only added,
  removed or changed devices are stopped/started, the others keep polling on the same schedule
  with the same open connection;
- a rules/anomaly change rebuilds the edge stages; an ``uplink`` change replaces the MQTT
  session (everything unacknowledged stays in the outbox and is sent again);
- other sections (gateway, outbox, batch, metrics, breaker) take effect at the next start and
  are reported as ``restart_needed``; ``gateway.id`` and ``gateway.state_dir`` cannot change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from edgegw.config import (
    ConfigError,
    GatewayConfig,
    check_loaded,
    drivers_from_registry,
    load_config,
)
from edgegw.device.downlink import DownlinkService
from edgegw.device.manager import DeviceManagement
from edgegw.model import Sample
from edgegw.runtime.datapath import DataPath
from edgegw.runtime.devices import DeviceManager
from edgegw.runtime.uplink_service import UplinkService
from edgegw.sdk import Driver, DriverEntry, discover_drivers

log = logging.getLogger("edgegw.devmgmt")

__all__ = ["DeviceManagementService", "GatewayAccess"]

_RESTART_SECTIONS = ("outbox", "batch", "metrics", "breaker")


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json") if model is not None else None


def software_version() -> str:
    try:
        return metadata.version("edgegw")
    except metadata.PackageNotFoundError:
        return "unknown"


class GatewayAccess:
    """``GatewayHost`` over the gateway's services (see the module doc)."""

    def __init__(self, gateway: Any, devices: DeviceManager, uplink: UplinkService,
                 datapath: DataPath) -> None:
        self._gw = gateway
        self._devices = devices
        self._uplink = uplink
        self._datapath = datapath
        self.gateway_id: str = gateway.gateway_id
        self.state_dir: Path = gateway.state_dir
        self.software_version = software_version()
        self.sample_observers: list[Callable[[Sequence[Sample]], None]] = (
            devices.sample_observers
        )
        self._all_drivers: dict[str, DriverEntry] | None = None

    @property
    def cfg(self) -> GatewayConfig:
        return self._gw.cfg

    @property
    def config_file(self) -> Path | None:
        f = self._gw.cfg.file
        return Path(f) if f else None

    @property
    def drivers(self) -> Mapping[str, DriverEntry]:
        return self._devices.drivers

    @property
    def unavailable(self) -> Mapping[str, str]:
        return self._devices.unavailable

    async def device_call(self, device_id: str, fn: Callable[[Driver], Awaitable[Any]]) -> Any:
        return await self._devices.device_call(device_id, fn)

    def request_restart(self) -> bool:
        restart = getattr(self._gw, "request_restart", None)
        if restart is None:
            return False
        restart()
        return True

    # ------------------------------------------------------------------ config
    def _entries(self) -> dict[str, DriverEntry]:
        if self._all_drivers is None:  # every installed driver: a new device may need one
            self._all_drivers = {**discover_drivers(), **dict(self._devices.drivers)}
        return self._all_drivers

    def check_config_file(self, path: Path) -> list[str]:
        ok, broken = drivers_from_registry(self._entries())
        try:
            check_loaded(load_config(path), ok, unavailable=broken)
        except ConfigError as exc:
            return [str(i) for i in exc.issues if i.severity == "error"]
        return []

    def load_config_file(self, path: Path) -> GatewayConfig:
        ok, broken = drivers_from_registry(self._entries())
        return check_loaded(load_config(path), ok, unavailable=broken)

    async def reconfigure(self, new: GatewayConfig) -> dict[str, Any]:
        old: GatewayConfig = self._gw.cfg
        if new.gateway.id != old.gateway.id or Path(new.gateway.state_dir) != Path(
            old.gateway.state_dir
        ):
            raise ValueError("gateway.id and gateway.state_dir cannot change remotely")

        def bus_of(cfg: GatewayConfig, dev: Any) -> Any:
            return _dump(cfg.buses.get(dev.bus)) if dev.bus else None

        old_devs = {d.id: (_dump(d), bus_of(old, d)) for d in old.devices}
        new_devs = {d.id: (_dump(d), bus_of(new, d)) for d in new.devices}
        removed = [d for d in old_devs if d not in new_devs]
        added = [d for d in new_devs if d not in old_devs]
        changed = [d for d in new_devs if d in old_devs and new_devs[d] != old_devs[d]]
        for dev_id in removed + changed:
            await self._devices.remove_device(dev_id)
        entries = self._entries()
        drivers = dict(self._devices.drivers)
        for dev in new.devices:  # a new device may use a driver the daemon had not loaded
            if dev.driver not in drivers and dev.driver in entries:
                drivers[dev.driver] = entries[dev.driver]
        self._devices.drivers = drivers
        self._gw.cfg = self._devices.cfg = self._datapath.cfg = new
        for dev in new.devices:
            if dev.id in added or dev.id in changed:
                self._devices.add_device(dev)
        report: dict[str, Any] = {
            "added": added, "removed": removed, "changed": changed,
            "unchanged": [d for d in new_devs if d not in added and d not in changed],
        }
        if _dump(new.uplink) != _dump(old.uplink):
            await self._uplink.restart(new.uplink)
            report["uplink"] = "restarted"
        # rules, anomaly, and every device's aggregate (an added, removed or changed device
        # with `aggregate:` too): only the stages whose configuration changed are rebuilt,
        # after the old ones are flushed out (nothing they hold is lost)
        edge = self._datapath.rebuild_stages()
        if edge["built"] or edge["flushed"]:
            report["edge"] = edge
        report["restart_needed"] = [
            s for s in ("gateway", *_RESTART_SECTIONS)
            if _dump(getattr(new, s, None)) != _dump(getattr(old, s, None))
        ]
        log.info("configuration applied: %s", report)
        return report


class DeviceManagementService:
    """Service: downlink + commands + shadow + remote config (enrolled gateways only)."""

    name = "devmgmt"

    def __init__(self, gateway: Any, devices: DeviceManager, uplink: UplinkService,
                 datapath: DataPath, downlink: DownlinkService) -> None:
        self.access = GatewayAccess(gateway, devices, uplink, datapath)
        # the downlink service (started earlier, attached to every uplink session) carries it
        self.dm = DeviceManagement(self.access, downlink)

    async def start(self) -> None:
        await self.dm.start()

    async def stop(self) -> None:
        await self.dm.stop()

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        return {name: fn() for name, fn in self.dm.stats_sources().items() if name != "downlink"}
