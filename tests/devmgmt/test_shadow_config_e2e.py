"""Device shadow and remote configuration end to end through a running daemon and a real
pymodbus server (device-management acceptance 3 and 4)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from runtime.helpers import poll_until
from uplink.conftest import Cloud, free_port

from edgegw.protocol.bundle import Bundle

from .rig import GW, Rig, unit_device


@pytest.fixture
def rig(cloud: Cloud, tmp_path: Path) -> Rig:
    r = Rig(cloud, tmp_path / "rig")
    yield r  # type: ignore[misc]
    r.close()


def test_shadow_converges_after_reconnect_and_follows_the_device(rig: Rig) -> None:
    rig.write_config(rig.config_doc([unit_device("boiler", 1, rig.plant.port)]))
    rig.set_register(1, 10)
    # desired set while the gateway is offline (never started yet)
    doc = rig.dm.shadow_set(GW, "boiler", {"setpoint": 33})
    assert doc["desired_version"] == 1 and doc["delta"] == {"setpoint": 33}
    rig.start()
    rig.wait_online()
    poll_until(lambda: rig.register(1) == 33, 15, "desired written to the device")
    poll_until(lambda: rig.dm.shadow_get(GW, "boiler")["reported"].get("setpoint") == 33, 15,
               "reported follows")
    shadow = rig.dm.shadow_get(GW, "boiler")
    assert shadow["delta"] == {} and shadow["desired"] == {"setpoint": 33}
    assert rig.writes(1) == 1
    r = rig.cli("shadow", "get", GW, "boiler")  # the same document through the CLI
    assert r.returncode == 0 and json.loads(r.stdout)["delta"] == {}, r.stderr

    # another client changes the register: reported follows, the delta shows the divergence,
    # the gateway does not fight it (each desired version is applied once)
    v = shadow["reported_version"]
    rig.set_register(1, 55)
    poll_until(lambda: rig.dm.shadow_get(GW, "boiler")["reported"].get("setpoint") == 55, 15,
               "reported follows a change made by another client")
    shadow = rig.dm.shadow_get(GW, "boiler")
    assert shadow["reported_version"] > v and shadow["delta"] == {"setpoint": 33}
    assert rig.writes(1) == 1

    # out-of-range desired: refused by the same checks as commands, never written
    rig.dm.shadow_set(GW, "boiler", {"setpoint": 500})
    poll_until(lambda: rig.dm.counts.get("shadow_applied", 0) >= 2, 10, "second apply")
    assert rig.writes(1) == 1 and rig.register(1) == 55

    # a restart re-reports everything; a stale desired version is refused
    assert rig.stop() == 0
    rig.dm.shadow_set(GW, "boiler", {"setpoint": 56})  # while offline again
    rig.start()
    rig.wait_online()
    poll_until(lambda: rig.dm.shadow_get(GW, "boiler")["delta"] == {}, 15, "converged again")
    assert rig.register(1) == 56
    doc = rig.dm.shadow_get(GW, "boiler")
    assert doc["desired_version"] == 3 and doc["reported"]["setpoint"] == 56


def _push(rig: Rig, doc: dict[str, object], within: float = 20.0) -> int:
    bundle = Bundle({"gateway.yaml": yaml.safe_dump(doc).encode()}).to_wire()
    return rig.dm.config_push(GW, bundle, confirm_within=within)


@pytest.mark.slow
def test_remote_config_add_device_invalid_and_revert(rig: Rig) -> None:
    base = rig.config_doc([unit_device("boiler", 1, rig.plant.port)])
    rig.write_config(base)
    original = rig.config_path.read_text()
    rig.start()
    rig.wait_online()
    poll_until(lambda: rig.stored("boiler", "temp"), 15, "first readings at the cloud")

    # 1. a valid push adding a device: it starts polling, boiler is not restarted
    added = copy.deepcopy(base)
    added["devices"].append(unit_device("chiller", 2, rig.plant.port))  # type: ignore[attr-defined]
    v1 = _push(rig, added)
    res = rig.dm.config_wait(GW, v1, 30)
    assert res["status"] == "confirmed", res
    assert '"added": ["chiller"]' in res["messages"][0]
    assert '"unchanged": ["boiler"]' in res["messages"][0]  # not restarted
    poll_until(lambda: rig.stored("chiller", "temp"), 15, "the new device's readings")
    assert yaml.safe_load(rig.config_path.read_text()) == added

    # 2. an invalid push: refused with the checker's file:line:col messages
    bad = copy.deepcopy(added)
    bad["devices"][0]["pol"] = "1s"  # type: ignore[index]
    v2 = _push(rig, bad)
    res = rig.dm.config_wait(GW, v2, 20)
    assert res["status"] == "refused"
    assert re.fullmatch(r"gateway\.yaml:\d+:\d+: devices\.0\.pol: unknown key 'pol' "
                        r"\(hint: did you mean 'poll'\?\)", res["messages"][0]), res
    bad = copy.deepcopy(added)
    bad["devices"][1]["driver"] = "modbuss"  # type: ignore[index]
    bad_file = rig.tmp / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(bad, sort_keys=False))
    r = rig.cli("config", "push", GW, str(bad_file), "--confirm-within", "20")
    assert r.returncode == 1 and ": refused" in r.stdout, (r.stdout, r.stderr)
    assert re.search(r"bad\.yaml:\d+:\d+: devices\.1\.driver: .*did you mean 'modbus'",
                     r.stdout), r.stdout
    r = rig.cli("config", "get", GW)  # the running config, from the gateway itself
    assert r.returncode == 0 and yaml.safe_load(r.stdout) == added, r.stderr
    assert yaml.safe_load(rig.config_path.read_text()) == added

    # 3. a push that cuts the uplink: never confirmed, reverted by itself, the gateway is back
    cut = copy.deepcopy(added)
    cut["uplink"]["broker"] = f"mqtts://127.0.0.1:{free_port()}"  # type: ignore[index]
    online = rig.online_count()
    v3 = _push(rig, cut, within=4.0)
    res = rig.dm.config_wait(GW, v3, 30)
    assert res["status"] == "reverted", res
    assert "not confirmed" in res["messages"][0]
    assert rig.online_count() > online
    assert yaml.safe_load(rig.config_path.read_text()) == added
    before = len(rig.stored("chiller", "temp"))
    poll_until(lambda: len(rig.stored("chiller", "temp")) > before, 15, "data flows again")

    # no reading lost: every poll the plant answered for boiler is stored at the cloud once
    assert rig.stop() == 0
    reads = rig.reads(1)
    rig.write_config(rig.config_doc([]))  # drain only: start without devices
    rig.start("--for", "60", "--drain-timeout", "30")
    rig.wait_online()
    poll_until(lambda: len(rig.stored("boiler", "temp")) >= reads, 30,
               f"all {reads} boiler readings at the cloud")
    stored = rig.stored("boiler", "temp")
    assert len(stored) == reads, (len(stored), reads)
    assert len({r.ts_ms for r in stored}) == reads  # no duplicates
    assert "chiller" not in original
