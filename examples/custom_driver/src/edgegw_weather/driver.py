"""The ``weather`` driver: polls an HTTP/JSON weather station, and can switch its heater.

Invariants:
- ``read()`` returns every configured point on every poll: a point the station did not send,
  or sent with the wrong type, comes back with quality ``bad_data``; a value outside the
  sensor's physical range comes back with quality ``out_of_range`` (never silently dropped).
- A failed poll raises the SDK's typed errors (see client.py); the gateway owns retries,
  backoff and scheduling, so this driver never sleeps or loops.
- The only writable point is ``heater`` (bool).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar, Literal

from edgegw import (
    DeviceContext,
    DriverOptions,
    FirmwareImage,
    FirmwareProgress,
    PermanentError,
    PointValue,
    PolledDriver,
    Quality,
    ReadResult,
    Value,
)
from pydantic import Field

from edgegw_weather.client import StationClient

Point = Literal[
    "temperature", "humidity", "pressure", "wind_speed", "wind_direction", "rain", "heater"
]

ALL_POINTS: list[Point] = [
    "temperature",
    "humidity",
    "pressure",
    "wind_speed",
    "wind_direction",
    "rain",
    "heater",
]

# point -> (JSON field, expected type, valid range or None)
FIELDS: dict[str, tuple[str, type, tuple[float, float] | None]] = {
    "temperature": ("temperature_c", float, (-60.0, 70.0)),
    "humidity": ("humidity_pct", float, (0.0, 100.0)),
    "pressure": ("pressure_hpa", float, (500.0, 1100.0)),
    "wind_speed": ("wind_speed_ms", float, (0.0, 75.0)),
    "wind_direction": ("wind_dir_deg", float, (0.0, 360.0)),
    "rain": ("rain_mm", float, (0.0, 1000.0)),
    "heater": ("heater", bool, None),
}


class WeatherOptions(DriverOptions):
    """The ``options:`` of a ``driver: weather`` device in gateway.yaml."""

    url: str = Field(pattern=r"^https?://", description="station base URL, e.g. http://10.0.0.7")
    token: str | None = Field(default=None, description="bearer token; use ${ENV} in the YAML")
    timeout: float = Field(default=2.0, gt=0, le=60, description="seconds per HTTP request")
    points: list[Point] = Field(
        default_factory=lambda: list(ALL_POINTS), min_length=1, description="points to report"
    )


class WeatherStationDriver(PolledDriver):
    Options: ClassVar[type[DriverOptions]] = WeatherOptions

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        assert isinstance(options, WeatherOptions)
        self.opts = options
        self.client = StationClient(options.url, timeout=options.timeout, token=options.token)

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, WeatherOptions)
        return tuple(options.points)

    @classmethod
    def writable_points(cls, options: DriverOptions) -> Sequence[str]:
        return ("heater",)

    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)  # keeps ctx as self.ctx; nothing to connect for HTTP

    async def read(self) -> ReadResult:
        data = await self.ctx.run_blocking(self.client.current)
        return {point: self._point(point, data) for point in self.opts.points}

    def _point(self, point: str, data: dict[str, object]) -> Value | PointValue:
        key, kind, valid = FIELDS[point]
        value = data.get(key)
        if kind is bool:
            ok = isinstance(value, bool)
        else:  # JSON numbers; bool is an int in Python and is not a temperature
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            self.ctx.count("bad_field")
            return PointValue(None, Quality.BAD_DATA)
        assert isinstance(value, bool | int | float)
        if valid is not None and not valid[0] <= value <= valid[1]:
            return PointValue(value, Quality.OUT_OF_RANGE)
        return float(value) if kind is float else value

    async def update_firmware(self, image: FirmwareImage, progress: FirmwareProgress) -> None:
        """The SDK's optional firmware hook: upload the image in 64 KiB pieces over HTTP.

        The runtime holds this device's polls while it runs; cancelling the task stops between
        pieces (the station keeps running its old firmware until the last piece arrived).
        A network failure is a TransientError from the client: the runtime retries it.
        """
        total = len(image.data)
        reply: dict[str, object] = {}
        for offset in range(0, max(total, 1), 64 * 1024):
            piece = image.data[offset : offset + 64 * 1024]
            reply = await self.ctx.run_blocking(self.client.firmware_chunk, offset, total, piece)
            progress(offset + len(piece), total)
        want = hashlib.sha256(image.data).hexdigest()
        if reply.get("sha256") != want:
            raise PermanentError(f"the station flashed {reply.get('sha256')}, not {want}")
        self.ctx.count("firmware_updates")

    async def write(self, point: str, value: Value) -> None:
        if point != "heater":
            raise PermanentError(f"point {point!r} is read-only; only 'heater' can be written")
        if not isinstance(value, bool):
            raise PermanentError(f"heater takes true or false, not {value!r}")
        result = await self.ctx.run_blocking(self.client.settings, {"heater": value})
        if result.get("heater") is not value:
            raise PermanentError(f"the station did not apply heater={value} (answered {result})")
