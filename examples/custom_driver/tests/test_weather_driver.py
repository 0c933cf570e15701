"""The weather driver against the simulated station over real HTTP on loopback."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from edgegw import (
    BadDataError,
    DeviceContext,
    PermanentError,
    PointValue,
    Quality,
    TransientError,
)
from edgegw.sdk import discover_drivers
from pydantic import ValidationError

from edgegw_weather import WeatherOptions, WeatherStationDriver
from edgegw_weather.simulator import StationSimulator


async def test_read_returns_every_point(
    driver: WeatherStationDriver, station: StationSimulator
) -> None:
    values = await driver.read()
    assert set(values) == {
        "temperature",
        "humidity",
        "pressure",
        "wind_speed",
        "wind_direction",
        "rain",
        "heater",
    }
    assert isinstance(values["temperature"], float)
    assert -60 <= values["temperature"] <= 70
    assert values["heater"] is False
    assert station.requests["GET /api/v1/current"] == 1


async def test_write_heater_round_trip(
    driver: WeatherStationDriver, station: StationSimulator
) -> None:
    await driver.write("heater", True)
    assert station.heater is True
    assert (await driver.read())["heater"] is True


@pytest.mark.parametrize(("point", "value"), [("temperature", 3.0), ("heater", "on")])
async def test_bad_writes_are_permanent_errors(
    driver: WeatherStationDriver, point: str, value: object
) -> None:
    with pytest.raises(PermanentError):
        await driver.write(point, value)  # type: ignore[arg-type]


async def test_out_of_range_and_missing_fields_are_flagged(
    driver: WeatherStationDriver, station: StationSimulator
) -> None:
    station.overrides = {"humidity_pct": 140.0, "pressure_hpa": "n/a"}
    values = await driver.read()
    assert values["humidity"] == PointValue(140.0, Quality.OUT_OF_RANGE)
    assert values["pressure"] == PointValue(None, Quality.BAD_DATA)
    assert driver.ctx.counters["bad_field"] == 1
    station.overrides = {}
    station.behaviour = "missing_field"
    assert (await driver.read())["temperature"] == PointValue(None, Quality.BAD_DATA)


@pytest.mark.parametrize(
    ("behaviour", "error", "quality"),
    [
        ("garbage", BadDataError, Quality.BAD_DATA),
        ("error500", TransientError, Quality.COMM_ERROR),
    ],
)
async def test_misbehaving_station(
    driver: WeatherStationDriver,
    station: StationSimulator,
    behaviour: str,
    error: type[Exception],
    quality: Quality,
) -> None:
    station.behaviour = behaviour
    with pytest.raises(error) as info:
        await driver.read()
    assert info.value.quality is quality  # type: ignore[attr-defined]


async def test_silent_station_times_out(
    driver: WeatherStationDriver, station: StationSimulator
) -> None:
    station.behaviour = "silent"
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        await driver.read()
    assert time.monotonic() - started < 10  # bounded by options.timeout (1 s), not the peer


async def test_nobody_listening_is_transient(tmp_path: Path) -> None:
    with StationSimulator(port=0) as sim:
        url = sim.url  # the port is free again once the simulator stops
    drv = WeatherStationDriver(WeatherOptions(url=url))
    await drv.open(DeviceContext("roof", "weather", tmp_path, logging.getLogger("t")))
    with pytest.raises(TransientError, match="refused"):
        await drv.read()


async def test_token(tmp_path: Path) -> None:
    with StationSimulator(port=0, token="s3cret") as sim:
        ctx = DeviceContext("roof", "weather", tmp_path, logging.getLogger("t"))
        wrong = WeatherStationDriver(WeatherOptions(url=sim.url, token="nope"))
        await wrong.open(ctx)
        with pytest.raises(PermanentError, match="token"):
            await wrong.read()
        right = WeatherStationDriver(WeatherOptions(url=sim.url, token="s3cret"))
        await right.open(ctx)
        assert "temperature" in await right.read()


async def test_wrong_path_is_permanent(station: StationSimulator, tmp_path: Path) -> None:
    drv = WeatherStationDriver(WeatherOptions(url=station.url + "/nothing-here"))
    await drv.open(DeviceContext("roof", "weather", tmp_path, logging.getLogger("t")))
    with pytest.raises(PermanentError, match="404"):
        await drv.read()


def test_options_validation() -> None:
    with pytest.raises(ValidationError, match="should match pattern"):
        WeatherOptions(url="ftp://station")
    with pytest.raises(ValidationError, match="Input should be 'temperature'"):
        WeatherOptions(url="http://s", points=["temprature"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        WeatherOptions.model_validate({"url": "http://s", "colour": "red"})
    opts = WeatherOptions(url="http://s", points=["temperature", "heater"])
    assert WeatherStationDriver.points(opts) == ("temperature", "heater")


def test_registered_as_entry_point() -> None:
    entry = discover_drivers()["weather"]
    assert entry.ok, entry.error
    assert entry.cls is WeatherStationDriver
    assert (entry.distribution, entry.version) == ("edgegw-weather", "0.1.0")


async def test_firmware_hook_uploads_the_image(
    driver: WeatherStationDriver, station: StationSimulator
) -> None:
    from edgegw import FirmwareImage

    image = bytes(range(256)) * 700  # 175 KiB: three pieces
    seen: list[int] = []
    assert WeatherStationDriver.supports_firmware_update()
    await driver.update_firmware(FirmwareImage("ws.bin", "2.1", image), lambda n, t: seen.append(n))
    assert station.firmware == image
    assert seen == sorted(seen) and seen[-1] == len(image)
