"""What the device-management features need from the running gateway (implemented by
``edgegw.runtime.devmgmt_service``): the device package never imports the runtime or the config
module, it gets this narrow interface instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgegw.model import Sample
from edgegw.sdk import Driver, DriverEntry


class GatewayHost(Protocol):
    gateway_id: str
    state_dir: Path
    software_version: str
    sample_observers: list[Callable[[Sequence[Sample]], None]]

    @property
    def cfg(self) -> Any:
        """The running ``GatewayConfig``."""

    @property
    def config_file(self) -> Path | None:
        """The main config file the daemon was started with (None: built in code)."""

    @property
    def drivers(self) -> Mapping[str, DriverEntry]: ...

    @property
    def unavailable(self) -> Mapping[str, str]: ...

    async def device_call(self, device_id: str, fn: Callable[[Driver], Awaitable[Any]]) -> Any:
        """``await fn(driver)`` on the device's bus ahead of polls; LookupError if not running."""

    def check_config_file(self, path: Path) -> list[str]:
        """The ``edgegw check`` checker on ``path``: [] when valid, else its error lines."""

    def load_config_file(self, path: Path) -> Any:
        """Load + check ``path`` into a GatewayConfig (raises on errors)."""

    async def reconfigure(self, new_cfg: Any) -> dict[str, Any]:
        """Apply ``new_cfg`` to the running gateway; returns what changed."""

    def request_restart(self) -> bool:
        """Restart the daemon cleanly (False if this gateway cannot)."""
