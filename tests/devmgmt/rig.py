"""A whole device-management rig on loopback: the cloud (managed Mosquitto with our mTLS + ACL,
ingest, DeviceManager), a real pymodbus server in its own process (the plant), and the real
daemon (`edgegw run`) in a subprocess with its uplink enabled. Nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from modbus.simproc import SimServer
from runtime.helpers import poll_until
from uplink.conftest import Cloud, Identity

from edgegw_cloud.devmgmt import DeviceManager, record_broker_url
from edgegw_cloud.ingest import Ingest
from edgegw_cloud.store import CloudStore

GW = "gw-dm"
SETPOINT_ADDR = 60


def unit_device(dev_id: str, unit: int, port: int, poll: str = "200ms") -> dict[str, Any]:
    """Two contiguous holding registers: one poll = one read request (countable at the plant)."""
    return {
        "id": dev_id, "driver": "modbus", "poll": poll, "timeout": "1s",
        "options": {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit_id": unit,
                    "points": [
                        {"name": "setpoint", "kind": "holding", "address": SETPOINT_ADDR,
                         "type": "uint16", "writable": True, "min": 0, "max": 100},
                        {"name": "temp", "kind": "holding", "address": SETPOINT_ADDR + 1,
                         "type": "uint16"},
                    ]},
    }


class Rig:
    def __init__(self, cloud: Cloud, tmp: Path, *, units: str = "1,2") -> None:
        self.cloud = cloud
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.plant = SimServer("--tcp", "0", "--units", units, log_dir=tmp)
        self.ident: Identity = cloud.gateway(GW, tmp / "identity")
        self.ingest: Ingest = cloud.ingest()
        # the cloud's services use the broker's service listener; gateways the gateway one
        record_broker_url(cloud.paths, cloud.broker.service_url)
        self.dm = DeviceManager(cloud.paths, cloud.broker.service_url, resend_every=1.0).start()
        self.config_path = tmp / "etc" / "gateway.yaml"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.state = tmp / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "gateway.log"

    # ------------------------------------------------------------------ config
    def config_doc(self, devices: list[dict[str, Any]], **uplink: Any) -> dict[str, Any]:
        return {
            "gateway": {"id": GW, "state_dir": str(self.state), "log_level": "info"},
            "metrics": {"enabled": False},
            "batch": {"max_age": "100ms"},
            "uplink": {"enabled": True, "broker": self.cloud.url,
                       "identity_dir": str(self.ident.dir), "backoff_min": "0.1s",
                       "backoff_max": "1s", "ack_timeout": "3s", **uplink},
            "devices": devices,
        }

    def write_config(self, doc: dict[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.config_path

    # ------------------------------------------------------------------ daemon
    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        self.stopped_online = self.online_count()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgegw.cli", "run", "-c", str(self.config_path), *extra],
                stdout=out, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            )

    def wait_online(self, timeout: float = 20) -> None:
        """Until the gateway has said hello (info) to the cloud after this start."""
        before = self.stopped_online
        poll_until(lambda: self.online_count() > before, timeout,
                   f"gateway hello (log: {self.log_text()[-2000:]})")

    def online_count(self) -> int:
        return int(self.dm.counts.get("info", 0))

    def stop(self, drain: float = 0.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if drain:
                self.proc.send_signal(signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30 + drain)
        self.proc = None
        return rc

    def gateway_stats(self) -> dict[str, Any]:
        """The daemon's stats from its status file (written once a second)."""
        try:
            return dict(json.loads((self.state / "status.json").read_text())["stats"])
        except (FileNotFoundError, ValueError):
            return {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # ------------------------------------------------------------------ plant / cloud
    def register(self, unit: int, address: int = SETPOINT_ADDR) -> int:
        return int(self.plant.cmd(op="get", unit=unit, table="h", address=address,
                                  count=1)["values"][0])

    def set_register(self, unit: int, value: int, address: int = SETPOINT_ADDR) -> None:
        self.plant.cmd(op="set", unit=unit, table="h", address=address, values=[value])

    def writes(self, unit: int) -> int:
        return self.plant.counts(unit).get(6, 0)

    def reads(self, unit: int) -> int:
        return self.plant.counts(unit).get(3, 0)

    def stored(self, device: str, metric: str) -> list[Any]:
        store = CloudStore(self.cloud.paths.store_db, readonly=True)
        try:
            return list(store.readings(gateway=GW, device=device, metric=metric))
        finally:
            store.close()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgegw_cloud.cli", *args, "--data-dir",
             str(self.cloud.paths.data_dir)],
            capture_output=True, text=True, timeout=timeout,
        )

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            self.dm.stop()
            self.ingest.stop()
            self.plant.close()


def dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)
