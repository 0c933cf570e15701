"""The OTA agent (``edgegw.ota.agent``) as a supervisor service, on the downlink service.

Created for an enrolled gateway with ``ota.enabled`` (after device management: config releases
go through its commit-confirmed remote config). ``OtaAccess`` is the agent's narrow view of the
gateway: its id and state dir, the config file, firmware updates through the running
``DeviceManager`` (bus traffic of the device held), and ``request_exit``: a clean stop with
exit status 0 so that systemd (``Restart=always``) starts the launcher again, which then runs
the freshly installed slot on trial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgegw.device.downlink import DownlinkService
from edgegw.device.remote_config import RemoteConfig
from edgegw.ota.agent import OtaAgent
from edgegw.sdk import FirmwareImage

__all__ = ["OtaAccess", "OtaService"]


class OtaAccess:
    """``edgegw.ota.agent.OtaHost`` over the running gateway (``supervisor.Gateway``)."""

    def __init__(self, gateway: Any) -> None:
        self._gw = gateway
        self.gateway_id: str = gateway.gateway_id
        self.state_dir: Path = gateway.state_dir

    @property
    def config_file(self) -> Path | None:
        f = self._gw.cfg.file
        return Path(f) if f else None

    async def update_firmware(self, device_id: str, image: FirmwareImage,
                              progress: Callable[[int, int], None]) -> None:
        await self._gw.update_firmware(device_id, image, progress)

    def device_driver(self, device_id: str) -> str | None:
        for dev in self._gw.cfg.devices:
            if dev.id == device_id:
                return str(dev.driver)
        return None

    def request_exit(self, why: str) -> bool:
        fn = getattr(self._gw, "request_exit", None)
        if fn is None:
            return False
        fn(why)
        return True


class OtaService:
    name = "ota"

    def __init__(self, gateway: Any, downlink: DownlinkService, identity_dir: Path,
                 remote_config: RemoteConfig | None) -> None:
        self.agent = OtaAgent(OtaAccess(gateway), downlink, gateway.cfg.ota, identity_dir,
                              remote_config)

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self) -> None:
        await self.agent.stop()

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        return {"ota": self.agent.stats()}
