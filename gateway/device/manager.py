"""Device management wired into a running gateway: the handlers (commands, shadow, remote
config) on the downlink service, and the ``info`` report the cloud's fleet registry keeps.

``edgegw.runtime.devmgmt_service`` creates one ``DeviceManagement`` per enrolled gateway
(``start``/``stop``/``stats_sources``) over the supervisor's downlink service; everything else
lives in the feature modules. On every (re)connection the
gateway sends ``info`` (software version, config version/pending/last outcome, the devices as
configured with their state, its key id), then the full shadow reported state, then asks for a
confirmation of a pending config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgegw.device.commands import CommandHandler
from edgegw.device.downlink import DownlinkService
from edgegw.device.host import GatewayHost
from edgegw.device.remote_config import RemoteConfig
from edgegw.device.shadow import ShadowManager
from edgegw.protocol import downlink as dl


class DeviceManagement:
    def __init__(self, gateway: GatewayHost, downlink: DownlinkService) -> None:
        self.gw = gateway
        self.downlink = downlink
        self.commands = CommandHandler(gateway, self.downlink)
        self.shadow = ShadowManager(gateway, self.downlink, self.commands)
        self.config = RemoteConfig(gateway, self.downlink, on_change=self.config_changed)
        self.commands.reload_config = self.config.reload_from_disk
        self.downlink.register(dl.COMMAND, self.commands)
        self.downlink.register(dl.SHADOW, self.shadow)
        self.downlink.register(dl.CONFIG, self.config)
        gateway.sample_observers.append(self.shadow.observe)

    async def start(self) -> None:
        """Start the features (the downlink service itself is already running); the connect
        hooks run now if the session is already up, and on every later connection."""
        await self.shadow.start()
        await self.config.start()
        for hook in (self._hello, self.shadow.on_connect, self.config.on_connect):
            self.downlink.on_connect(hook, run_now_if_connected=True)

    async def stop(self) -> None:
        await self.config.stop()
        await self.shadow.stop()

    def stats_sources(self) -> dict[str, Callable[[], dict[str, Any]]]:
        return {
            "downlink": self.downlink.stats,
            "commands": lambda: dict(self.commands.counts),
            "shadow": self.shadow.stats,
            "remote_config": self.config.stats,
        }

    def info(self) -> dict[str, Any]:
        unavailable = self.gw.unavailable
        devices = [{"id": d.id, "driver": d.driver, "enabled": d.enabled,
                    "state": "unavailable" if d.id in unavailable else
                    ("running" if d.enabled else "disabled")} for d in self.gw.cfg.devices]
        return {"software_version": self.gw.software_version, **self.config.status(),
                "devices": devices,
                "key_id": self.downlink.down.key_id}

    async def _hello(self) -> None:
        self.downlink.reply(dl.INFO, None, self.info())

    def config_changed(self) -> None:
        """After a config was applied, reverted or confirmed: re-track, re-report."""
        self.shadow.retrack()
        self.downlink.reply(dl.INFO, None, self.info())
