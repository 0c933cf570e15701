"""The example configs and the README document options that really validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgegw.drivers.modbus import ModbusDriver, ModbusOptions

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["modbus-tcp.yaml", "modbus-rtu.yaml"])
def test_example_devices_validate(name: str) -> None:
    config = yaml.safe_load((ROOT / "examples" / name).read_text())
    devices = [d for d in config["devices"] if d["driver"] == "modbus"]
    assert devices
    for device in devices:
        options = ModbusOptions.model_validate(device["options"])
        assert ModbusDriver(options).groups  # plans at least one request
        names = [p["name"] for p in device["options"]["points"]]
        assert list(ModbusDriver.points(options)) == names


def test_readme_mentions_every_option() -> None:
    readme = (ROOT / "drivers" / "modbus" / "README.md").read_text()
    from edgegw.drivers.modbus import ModbusPoint

    for field in [*ModbusOptions.model_fields, *ModbusPoint.__pydantic_fields__]:
        assert f"`{field}`" in readme, f"README does not document {field}"
