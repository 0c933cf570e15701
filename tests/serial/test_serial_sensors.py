"""Several sensors on one serial line are sub-devices: each frame names its sensor.

On a real pty pair (socat) with the sensor simulator: frames of two listed sensors come out under
their sub-device ids without the address field, a frame from an unlisted address is a counted bad
frame; and `edgegw check` resolves the sub-devices (a rule on one is accepted, a rule on a metric
of the line device itself is refused: its readings carry the sensors' ids).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serial_harness import Recorder, SocatPair, make_ctx, make_driver, running

from edgegw.config import ConfigError, load_and_check
from edgegw.drivers.serial import SerialDriver

LINE = {
    "regex": r"^A=(?P<addr>\d+);T=(?P<temp>-?\d+\.\d+)$",
    "types": {"addr": "str", "temp": "float"},
    "terminator": "\r\n",
}
SENSORS = {"field": "addr", "ids": {"01": "tank-a", "02": "tank-b"}}


async def test_frames_are_routed_to_their_sensor(
    pair: SocatPair, sensor_factory: Callable[[], Any], tmp_path: Path
) -> None:
    driver = make_driver({"port": pair.driver_end, "line": LINE, "sensors": SENSORS})
    ctx, rec = make_ctx(tmp_path, device_id="line1"), Recorder()
    async with running(driver, ctx, rec):
        await rec.wait(lambda r: driver.link.is_open, what="port open")
        sensor = await sensor_factory()
        await sensor.write(
            [b"A=01;T=21.50\r\n", b"A=02;T=19.25\r\n", b"A=07;T=1.00\r\n", b"A=01;T=22.00\r\n"],
            pause=0.02,
        )
        await rec.wait(lambda r: len(r.metric("temp")) == 3, what="three routed readings")
    got = [(s.device, s.metric, s.value) for s in rec.samples if s.metric != "_status"]
    assert got == [
        ("tank-a", "temp", 21.5), ("tank-b", "temp", 19.25), ("tank-a", "temp", 22.0)
    ]
    assert dict(ctx.counters) == {"unknown_sensor": 1}


def _check(tmp_path: Path, rule: dict[str, Any]) -> list[str]:
    cfg = {
        "gateway": {"id": "s-gw"},
        "devices": [{"id": "line1", "driver": "serial",
                     "options": {"port": "/dev/ttyUSB0", "line": LINE, "sensors": SENSORS}}],
        "rules": [rule],
    }
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(cfg))
    try:
        load_and_check(path, {"serial": SerialDriver})
    except ConfigError as exc:
        return [str(i) for i in exc.issues if i.severity == "error"]
    return []


def test_check_resolves_serial_sensors(tmp_path: Path) -> None:
    rule = {"name": "warm", "device": "tank-a", "when": "temp > 30"}
    assert _check(tmp_path, rule) == []
    unknown_metric = _check(tmp_path, {**rule, "when": "tmep > 30"})
    assert len(unknown_metric) == 1 and "did you mean 'temp'" in unknown_metric[0]
    on_line = _check(tmp_path, {**rule, "device": "line1"})
    assert len(on_line) == 1 and "unknown metric 'temp' of device 'line1'" in on_line[0]


def test_sensor_routing_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"sensors\.field 'adr' is not a field"):
        make_driver({"port": "/dev/x", "line": LINE, "sensors": {**SENSORS, "field": "adr"}})
    with pytest.raises(ValueError, match="need mode=stream"):
        make_driver({"port": "/dev/x", "line": LINE, "sensors": SENSORS, "mode": "request",
                     "request": "?"})
