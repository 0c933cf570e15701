"""Fixtures: a simulated station on a free loopback port, and an opened driver for it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from edgegw import DeviceContext

from edgegw_weather import WeatherOptions, WeatherStationDriver
from edgegw_weather.simulator import StationSimulator


@pytest.fixture
def station() -> Iterator[StationSimulator]:
    with StationSimulator(port=0) as sim:  # port 0: the OS picks a free port
        yield sim


@pytest.fixture
async def driver(station: StationSimulator, tmp_path: Path) -> AsyncIterator[WeatherStationDriver]:
    drv = WeatherStationDriver(WeatherOptions(url=station.url, timeout=1.0))
    ctx = DeviceContext("roof", "weather", tmp_path, logging.getLogger("test.weather"))
    await drv.open(ctx)
    yield drv
    await drv.close()
