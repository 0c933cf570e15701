"""CoAP constrained devices are addressable sub-devices (resolved once at config time).

- ``edgegw check`` accepts a rule and an aggregation on a constrained device behind the CoAP
  server, and refuses a rule on a device name nothing produces and a rule on a metric the CoAP
  server device itself never produces (its readings carry the constrained device's id).
- End to end through the real daemon and a real aiocoap client (OSCORE): the rule on the
  constrained device raises its alert and the server device's aggregation closes windows of the
  constrained device's readings; the durable emit answers 2.04 once the aggregate is sealed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from coap_harness import (
    AiocoapClient,
    free_udp_port,
    oscore_device,
    wait_serving,
    write_client_context,
)

from edgegw.config import ConfigError, load_and_check
from edgegw.drivers.coap import CoapDriver
from edgegw.runtime.outbox_reader import read_outbox

EDGEGW = Path(sys.executable).with_name("edgegw")


def _config(state: Path, port: int, dev: dict[str, Any], rules: list[dict[str, Any]]) -> dict:
    return {
        "gateway": {"id": "gw-sub", "state_dir": str(state)},
        "metrics": {"enabled": False},
        "batch": {"max_age": "100ms"},
        "devices": [
            {
                "id": "coap-server",
                "driver": "coap",
                "options": {"listen": f"127.0.0.1:{port}", "devices": [dev]},
                "aggregate": {
                    "window": "1s",
                    "lateness": "0s",
                    "functions": ["count", "max"],
                    "metrics": {"battery": {"raw": True}},
                },
            }
        ],
        "rules": rules,
    }


HOT = {"name": "therm-hot", "device": "therm", "when": "temp > 30", "message": "hot {temp}"}


def _check(tmp_path: Path, rules: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "gw.yaml"
    dev = oscore_device("therm", 7)
    path.write_text(json.dumps(_config(tmp_path / "s", free_udp_port(), dev, rules)))
    try:
        load_and_check(path, {"coap": CoapDriver})
    except ConfigError as exc:
        return [str(i) for i in exc.issues if i.severity == "error"]
    return []


def test_check_resolves_sub_devices(tmp_path: Path) -> None:
    assert _check(tmp_path, [HOT]) == []
    ghost = _check(tmp_path, [{**HOT, "device": "ghost"}])
    assert len(ghost) == 1 and "unknown device 'ghost'" in ghost[0] and "gw.yaml:" in ghost[0]
    on_server = _check(tmp_path, [{**HOT, "device": "coap-server"}])
    assert len(on_server) == 1
    assert "unknown metric 'temp' of device 'coap-server'" in on_server[0]
    write = _check(tmp_path, [{**HOT, "actions": [{"type": "write", "point": "led", "value": 1}]}])
    assert len(write) == 1 and "'therm' is a sub-device of 'coap-server'" in write[0]


def test_sub_device_id_colliding_with_a_device_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    doc = _config(tmp_path / "s", free_udp_port(), oscore_device("therm", 7), [])
    doc["devices"].append({"id": "therm", "driver": "coap", "options": {
        "listen": f"127.0.0.1:{free_udp_port()}", "devices": [oscore_device("other", 8)]}})
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="sub-device 'therm' of device 'coap-server' has the id"):
        load_and_check(path, {"coap": CoapDriver})


async def test_rule_and_aggregation_on_a_coap_sub_device_end_to_end(tmp_path: Path) -> None:
    port = free_udp_port()
    dev = oscore_device("therm", 7)
    state = tmp_path / "state"
    cfg_path = tmp_path / "gw.yaml"
    cfg_path.write_text(json.dumps(_config(state, port, dev, [HOT])))
    proc = await asyncio.create_subprocess_exec(
        str(EDGEGW), "run", "-c", str(cfg_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_serving(port, proc)
        async with AiocoapClient.connect(port, write_client_context(tmp_path / "c", dev)) as c:
            # one request: three temperatures inside one window and a raw battery reading
            base = 1_790_000_000_000
            body = [
                {"ts": base + 100, "values": {"temp": 25.0, "battery": 3.1}},
                {"ts": base + 200, "values": {"temp": 36.5}},
                {"ts": base + 300, "values": {"temp": 31.0}},
            ]
            reply = await c.post("/d/therm", json.dumps(body).encode())
            assert reply.code.dotted == "2.04", reply
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    samples, alerts, _ = read_outbox(state, gateway_id="gw-sub")
    got = {(s.device, s.metric): s.value for s in samples if s.device == "therm"}
    assert got == {("therm", "temp.count"): 3, ("therm", "temp.max"): 36.5,
                   ("therm", "battery"): 3.1}
    raised = [a for a in alerts if a.rule == "therm-hot" and a.active]
    assert [(a.device, a.value) for a in raised] == [("therm", 36.5)]
