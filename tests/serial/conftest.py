"""Fixtures of the serial driver tests (helpers live in serial_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from serial_harness import Sensor, SocatPair


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[SocatPair]:
    p = SocatPair(tmp_path)
    await p.start()
    try:
        yield p
    finally:
        await p.kill()


@pytest.fixture
async def sensor_factory(pair: SocatPair) -> AsyncIterator[Callable[[], Any]]:
    started: list[Sensor] = []

    async def start() -> Sensor:
        s = await Sensor.start(pair.sensor_end)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            await s.stop()
