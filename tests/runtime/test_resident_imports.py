"""A daemon keeps resident only the code its config uses (docs/performance.md, section 3).

The daemon's start (config load and check, driver discovery, the data path with its edge stages)
runs in a fresh interpreter on a Modbus-only config; the subsystems that config leaves off must
not be imported. A config that names the stages imports them (the lazy path still works).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.runtime.helpers import gateway_config, write_config

#: modules a Modbus-only daemon with the metrics endpoint off must not import
LEFT_OFF = {
    "edgegw.edge.aggregate",
    "edgegw.edge.anomaly",
    "edgegw.edge.online",
    "edgegw.edge.fit",
    "edgegw.edge.rules",
    "http.server",
    "prometheus_client",
    "difflib",
    "numpy",
}

_PROBE = """
import json, sys
from pathlib import Path
from edgegw.runtime.daemon import load
from edgegw.edge import build_stages
cfg, drivers = load(Path(sys.argv[1]))
stages = build_stages(cfg)
print(json.dumps({"stages": [type(s).__name__ for s in stages], "modules": sorted(sys.modules)}))
"""


def _start(tmp_path: Path, **sections: object) -> dict[str, list[str]]:
    device = {
        "id": "plc1",
        "driver": "modbus",
        "poll": "1s",
        "options": {
            "host": "127.0.0.1",
            "port": 1502,
            "points": [{"name": "t", "kind": "holding", "address": 1, "type": "uint16"}],
        },
    }
    doc = gateway_config("gw1", tmp_path / "state", devices=[device], **sections)
    cfg = write_config(tmp_path / "gateway.yaml", doc)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def test_a_modbus_only_daemon_does_not_import_what_its_config_leaves_off(tmp_path: Path) -> None:
    started = _start(tmp_path)
    modules = set(started["modules"])
    assert "edgegw.drivers.modbus.driver" in modules  # the probe did load the config's driver
    assert started["stages"] == []
    assert sorted(modules & LEFT_OFF) == []


def test_a_config_with_edge_stages_imports_them(tmp_path: Path) -> None:
    started = _start(
        tmp_path,
        rules=[{"name": "hot", "device": "plc1", "when": "t > 5", "message": "t {t}"}],
    )
    assert started["stages"] == ["RuleStage"]
    assert "edgegw.edge.rules" in set(started["modules"])
