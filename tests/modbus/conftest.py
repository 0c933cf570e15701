"""Fixtures: a real pymodbus TCP server subprocess with units 1, 2, 3 and a driver opener."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .simproc import Devices, SimServer


@pytest.fixture
def tcp_server(tmp_path: Path) -> Iterator[SimServer]:
    server = SimServer("--tcp", "0", "--units", "1,2,3", log_dir=tmp_path)
    yield server
    server.close()


@pytest.fixture
async def devices(tmp_path: Path) -> AsyncIterator[Devices]:
    devs = Devices(tmp_path)
    yield devs
    await devs.close()
