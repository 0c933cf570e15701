"""Tests against real hardware; each is skipped unless an EDGEGW_HW_* variable names the device."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from edgegw.sdk import DeviceContext, discover_drivers

RTU = os.environ.get("EDGEGW_HW_MODBUS_RTU")
SERIAL = os.environ.get("EDGEGW_HW_SERIAL")


def _ctx(tmp_path: Path, name: str) -> DeviceContext:
    return DeviceContext(name, name, tmp_path, logging.getLogger(name))


@pytest.mark.skipif(not RTU, reason="set EDGEGW_HW_MODBUS_RTU=port:baud:unit to run")
def test_modbus_rtu_real_device(tmp_path: Path) -> None:
    port, baud, unit = (RTU or "::").rsplit(":", 2)
    cls = discover_drivers()["modbus"].cls
    assert cls is not None
    opts = cls.Options.model_validate(
        {
            "transport": "rtu",
            "port": port,
            "baudrate": int(baud),
            "unit_id": int(unit),
            "points": [
                {"name": f"hr{i}", "kind": "holding", "address": i, "type": "uint16"}
                for i in range(10)
            ],
        }
    )
    drv = cls(opts)

    async def go() -> dict[str, object]:
        await drv.open(_ctx(tmp_path, "rtu"))
        try:
            return dict(await drv.read())  # type: ignore[attr-defined]
        finally:
            await drv.close()

    values = asyncio.run(go())
    assert set(values) == {f"hr{i}" for i in range(10)}


@pytest.mark.skipif(not SERIAL, reason="set EDGEGW_HW_SERIAL=port:baud to run")
def test_serial_port_opens(tmp_path: Path) -> None:
    import serial

    port, baud = (SERIAL or ":").rsplit(":", 1)
    with serial.Serial(port, int(baud), timeout=2) as s:
        line = s.readline()
    assert line.endswith(b"\n"), f"no complete line within 2 s from {port}: {line!r}"
