"""Real (if tiny) drivers for the config tests: the options models are what is under test.

``DemoDriver`` has a ``Literal`` register kind per point, so a typo inside ``options`` must be
located inside ``options``. Its bus key groups devices by host:port like a Modbus TCP driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgegw.sdk import DriverOptions, PolledDriver, ReadResult


class DemoPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["holding", "input", "coil", "discrete"]
    address: int = Field(ge=0, le=65535)


class DemoOptions(DriverOptions):
    host: str
    port: int = Field(502, ge=1, le=65535)
    label: str | None = None
    points: list[DemoPoint] = Field(default_factory=list)


class DemoDriver(PolledDriver):
    Options = DemoOptions

    @classmethod
    def bus_key(cls, options: DriverOptions) -> str | None:
        assert isinstance(options, DemoOptions)
        return f"demo://{options.host}:{options.port}"

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, DemoOptions)
        return [p.name for p in options.points]

    async def read(self) -> ReadResult:
        return {}


DRIVERS: dict[str, type[PolledDriver]] = {"demo": DemoDriver}
