"""Commands end to end: `edgegw-cloud command` -> broker -> running daemon -> bus scheduler ->
real pymodbus server, and back; refusals printed; at-most-once across a forced duplicate and a
gateway SIGKILLed between execute and reply (device-management acceptance 1 and 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime.helpers import poll_until
from uplink.conftest import Cloud

from edgegw_cloud.registry import Registry, RegistryError

from .rig import GW, Rig, unit_device


@pytest.fixture
def rig(cloud: Cloud, tmp_path: Path) -> Rig:
    r = Rig(cloud, tmp_path / "rig")
    yield r  # type: ignore[misc]
    r.close()


def _sim_device() -> dict[str, object]:
    return {"id": "meter", "driver": "sim", "poll": "500ms",
            "options": {"points": [{"name": "count", "signal": "counter", "step": 1}]}}


def test_cli_commands_reach_the_plant_and_refusals_are_printed(rig: Rig) -> None:
    rig.write_config(rig.config_doc([unit_device("boiler", 1, rig.plant.port), _sim_device()]))
    rig.start()
    rig.wait_online()

    r = rig.cli("command", GW, "boiler", "write", "setpoint=42")
    assert (r.returncode, r.stdout.strip()) == (0, "ok 42"), r.stderr
    assert rig.register(1) == 42
    r = rig.cli("command", GW, "boiler", "read", "setpoint")
    assert (r.returncode, r.stdout.strip()) == (0, 'ok {"setpoint": 42}'), r.stderr

    writes = rig.writes(1)
    refusals = {
        "out of range": (["boiler", "write", "setpoint=150"], "outside [0.0, 100.0]"),
        "not writable": (["boiler", "write", "temp=5"], "not writable"),
        "unknown device": (["pump9", "write", "setpoint=1"], "unknown device 'pump9'"),
    }
    for what, (args, reason) in refusals.items():
        r = rig.cli("command", GW, *args)
        assert r.returncode == 1, (what, r.stdout, r.stderr)
        assert r.stdout.startswith("refused: ") and reason in r.stdout, (what, r.stdout)
    # the same through the Python API (what the CLI calls)
    dm = rig.dm
    res = dm.command(GW, "boiler", "explode")
    assert res["status"] == "refused" and "has no action 'explode'" in res["reason"]
    res = dm.command(GW, "meter", "reset", {"to": -1})  # the driver's typed argument model
    assert res["status"] == "refused" and "to: Input should be greater than or" in res["reason"]
    assert rig.writes(1) == writes, "a refused write reached the device"
    assert rig.register(1) == 42

    # a driver-declared action with its typed argument model, and the gateway's own ping
    res = dm.command(GW, "meter", "reset", {"to": 5})
    assert (res["status"], res["value"]) == ("ok", {"count": 5})
    res = dm.command(GW, "-", "ping")
    assert res["status"] == "ok" and res["value"]["gateway"] == GW
    # every command has exactly one stored final result
    cmds = rig.dm.store.commands(GW)
    assert len(cmds) == 9 and all(c["status"] in ("ok", "refused") for c in cmds)


    # fleet basics at the registry: labels, online, versions, devices as reported
    r = rig.cli("gateways", "label", GW, "site=north", "tier=canary")
    assert (r.returncode, r.stdout.strip()) == (0, "site=north tier=canary"), r.stderr
    with Registry(rig.cloud.paths.registry_db) as reg:
        assert reg.set_labels(GW, {}, remove=["tier"]) == {"site": "north"}
        with pytest.raises(RegistryError, match="id grammar"):
            reg.set_labels(GW, {"bad key": "1"})
    r = rig.cli("gateways", "fleet")
    (row,) = json.loads(r.stdout)
    assert row["id"] == GW and row["labels"] == {"site": "north"} and row["online"] is True
    assert row["software_version"] and row["last_seen_ms"]
    assert [(d["id"], d["state"]) for d in row["devices"]] == [("boiler", "running"),
                                                               ("meter", "running")]
    with Registry(rig.cloud.paths.registry_db) as reg:
        assert reg.select({"site": "north"}) == [GW] and reg.select({"site": "south"}) == []
    assert rig.stop() == 0
    with Registry(rig.cloud.paths.registry_db) as reg:
        poll_until(lambda: reg.fleet()[0].online is False, 10, "offline after the stop")


def test_unavailable_device_and_expired_command_are_not_executed(rig: Rig) -> None:
    rig.write_config(rig.config_doc([unit_device("boiler", 1, rig.plant.port)]))
    rig.start()
    rig.wait_online()
    rig.plant.mode("silent", unit=1)  # the device stops answering
    res = rig.dm.command(GW, "boiler", "write", {"point": "setpoint", "value": 3}, timeout=8)
    assert res["status"] in ("unavailable", "timed_out"), res
    rig.plant.mode("normal", unit=1)
    # a command whose deadline passes before the gateway gets it: stop the gateway, queue one
    # with a short deadline, start again after it expired
    assert rig.stop() == 0
    writes = rig.writes(1)
    cid = rig.dm.command_send(GW, "boiler", "write", {"point": "setpoint", "value": 4},
                              timeout=0.5)
    res = rig.dm.command_wait(cid)
    assert res["status"] == "timed_out"
    rig.start()
    rig.wait_online()
    r = rig.dm.command(GW, "boiler", "read", {"points": ["setpoint"]})
    assert r["status"] == "ok" and r["value"]["setpoint"] != 4
    assert rig.writes(1) == writes

    # reload_config: an operator edited the file on the box; only the new device starts
    rig.write_config(rig.config_doc([unit_device("boiler", 1, rig.plant.port),
                                     unit_device("chiller", 2, rig.plant.port)]))
    r = rig.dm.command(GW, "-", "reload_config")
    assert r["status"] == "ok", r
    assert r["value"]["added"] == ["chiller"] and r["value"]["unchanged"] == ["boiler"]
    poll_until(lambda: rig.reads(2) > 0, 10, "the reloaded device polled")

    # restart: a clean stop, then the daemon re-executes itself (same pid) and says hello
    assert rig.proc is not None
    pid, online = rig.proc.pid, rig.online_count()
    r = rig.dm.command(GW, "-", "restart")
    assert (r["status"], r["value"]) == ("ok", "restarting")
    poll_until(lambda: rig.online_count() > online, 30, "hello after the restart")
    assert rig.proc.poll() is None and rig.proc.pid == pid
    assert "restarting (requested by a cloud command)" in rig.log_text()


@pytest.mark.slow
def test_at_most_once_across_duplicates_and_sigkill(rig: Rig) -> None:
    rig.write_config(rig.config_doc([unit_device("boiler", 1, rig.plant.port)]))
    rig.start()
    rig.wait_online()
    dm = rig.dm

    # forced duplicates: the same command id published twice back to back (two envelopes),
    # and once more after its result came back (a redelivery after the reply)
    w0 = rig.writes(1)
    cid = dm.command_send(GW, "boiler", "write", {"point": "setpoint", "value": 7}, timeout=20)
    dm._send_command(cid)
    res = dm.command_wait(cid)
    assert (res["status"], res["value"]) == ("ok", 7)
    dm._send_command(cid)  # pending no more: the manager refuses to re-send a finished one...
    c = dm.store.command(cid)
    assert c is not None
    dm.down.send(GW, "command", {"device": "boiler", "action": "write",  # ...so force it
                                 "args": {"point": "setpoint", "value": 7}},
                 msg_id=cid, expires_ms=c["deadline_ms"])
    poll_until(lambda: dm.counts.get("command_results_repeated", 0) >= 1, 10,
               "the duplicate answered from memory")
    poll_until(lambda: rig.gateway_stats().get("commands", {}).get("duplicates", 0) >= 2, 10,
               "the gateway counting both duplicates")
    assert rig.writes(1) == w0 + 1 and rig.register(1) == 7
    assert dm.store.command(cid)["status"] == "ok"  # type: ignore[index]

    # SIGKILL between execute (result durably recorded) and the reply
    assert rig.stop() == 0
    rig.start(env={"EDGEGW_CRASHPOINT": "command.before_reply"})
    rig.wait_online()
    w1 = rig.writes(1)
    cid = dm.command_send(GW, "boiler", "write", {"point": "setpoint", "value": 9}, timeout=40)
    assert rig.proc is not None
    assert rig.proc.wait(20) == -9  # killed itself at the crash point
    rig.proc = None
    assert rig.register(1) == 9 and rig.writes(1) == w1 + 1
    assert dm.store.command(cid)["status"] == "pending"  # type: ignore[index]
    rig.start()  # no crash point: the cloud re-sends, the gateway answers from memory
    res = dm.command_wait(cid)
    assert (res["status"], res["value"]) == ("ok", 9), res
    assert rig.writes(1) == w1 + 1, "the command ran twice"
    assert res["sends"] >= 2

    # SIGKILL after the device call, before its result was recorded: never executed again,
    # and the one final result says the outcome is unknown
    assert rig.stop() == 0
    rig.start(env={"EDGEGW_CRASHPOINT": "command.after_execute"})
    rig.wait_online()
    w2 = rig.writes(1)
    cid = dm.command_send(GW, "boiler", "write", {"point": "setpoint", "value": 11}, timeout=40)
    assert rig.proc is not None and rig.proc.wait(20) == -9
    rig.proc = None
    rig.start()
    res = dm.command_wait(cid)
    assert res["status"] == "refused" and "interrupted" in res["reason"], res
    assert rig.writes(1) == w2 + 1 and rig.register(1) == 11
