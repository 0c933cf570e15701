"""`edgegw check` flags rule write actions aimed at points the driver cannot write."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.config import ConfigError, load_and_check
from edgegw.drivers.modbus import ModbusDriver
from edgegw.drivers.serial import SerialDriver
from edgegw.drivers.sim import SimDriver

CONFIG = """\
gateway: {id: wr-gw}
devices:
  - id: boiler
    driver: modbus
    options:
      host: 127.0.0.1
      unit_id: 1
      points:
        - {name: temp, kind: holding, address: 0, type: int16}
        - {name: setpoint, kind: holding, address: 1, type: int16, writable: true}
  - id: synth
    driver: sim
    options: {points: [{name: level}]}
rules:
  - name: hot
    device: boiler
    when: "temp > 90"
    actions:
      - {type: alert}
      - {type: write, point: setpoint, value: 50}
      - {type: write, point: setpoin, value: 50}
      - {type: write, point: temp, value: 1}
      - {type: write, device: synth, point: level, value: 1}
"""
DRIVERS = {"modbus": ModbusDriver, "sim": SimDriver, "serial": SerialDriver}


def test_write_actions_checked_against_writable_points(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG)
    with pytest.raises(ConfigError) as info:
        load_and_check(cfg, DRIVERS)
    lines = [str(i) for i in info.value.issues]
    assert lines == [
        f"{cfg}:{_at('point: setpoin,')}: rules.0.actions.2.point: point 'setpoin' of device "
        "'boiler' is not writable (hint: did you mean 'setpoint'?)",
        f"{cfg}:{_at('point: temp,')}: rules.0.actions.3.point: point 'temp' of device "
        "'boiler' is not writable (hint: writable points of 'boiler': setpoint)",
        f"{cfg}:{_at('point: level,')}: rules.0.actions.4.point: point 'level' of device "
        "'synth' is not writable (hint: mark the point writable in the driver options "
        "(e.g. Modbus writable: true))",
    ]


def _at(snippet: str) -> str:
    """line:col of the value after ``point: `` in ``snippet``'s line (found by text search)."""
    for n, line in enumerate(CONFIG.splitlines(), 1):
        if snippet in line:
            return f"{n}:{line.index(snippet) + len('point: ') + 1}"
    raise AssertionError(snippet)


def test_valid_write_action_passes(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG.split("      - {type: write, point: setpoin")[0])
    assert load_and_check(cfg, DRIVERS).rules[0].name == "hot"
