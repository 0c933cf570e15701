"""The operator guide's two-machine set-up, run as written on two network namespaces.

The cloud runs in one namespace and listens on its veth address; the gateway runs in another,
whose loopback has no broker, so enrollment and delivery can only go over the non-loopback
address. The commands are those of docs/operator-guide.md "Two machines" (paths and the address
substituted); the test ends by counting: readings sealed at the gateway == stored at the cloud.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegw_cloud.store import CloudStore

from .netns import TwoHosts

BIN = Path(sys.executable).parent
GW_ID = "plant1-gw1"


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    h = TwoHosts.create()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="edgegw-2hosts-"))
    os.chmod(d, 0o711)  # mosquitto (dropped to its own user) must reach the data dir
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run(argv: list[str], timeout: float = 60) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _gateway_yaml(state: Path, broker: str) -> str:
    return f"""\
gateway:
  id: {GW_ID}
  state_dir: {state}
metrics:
  enabled: false
batch:
  max_age: 200ms
uplink:
  enabled: true
  broker: {broker}
devices:
  - id: boiler1
    driver: sim
    poll: 100ms
    options:
      points:
        - {{name: temperature, signal: sine}}
        - {{name: pressure, signal: walk}}
"""


def test_gateway_enrolls_and_delivers_over_a_non_loopback_address(
    hosts: TwoHosts, workdir: Path
) -> None:
    cloud, ip = workdir / "cloud", hosts.cloud_ip
    on_cloud = lambda *a: hosts.cmd(hosts.cloud_ns, *a)  # noqa: E731
    on_gw = lambda *a: hosts.cmd(hosts.gw_ns, *a)  # noqa: E731
    # --- on the cloud host
    out = _run(on_cloud(str(BIN / "edgegw-cloud"), "init", "--data-dir", str(cloud),
                        "--broker-host", ip))
    assert ip in out
    err_log = workdir / "serve.stderr"
    with open(err_log, "w") as err:
        serve = subprocess.Popen(
            on_cloud(str(BIN / "edgegw-cloud"), "serve", "--data-dir", str(cloud),
                     "--listen", ip, "--port", "8883"),
            stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        assert first.startswith("serving mqtts://127.0.0.1:8883"), first + err_log.read_text()
        assert serve.stdout.readline().startswith("enrollment mqtts://127.0.0.1:8884")
        assert f"gateways dial mqtts://{ip}:8883, enroll at port 8884" in serve.stdout.readline()
        token = _run(on_cloud(str(BIN / "edgegw-cloud"), "token", "create", GW_ID,
                              "--data-dir", str(cloud), "--ttl", "10m")).strip()
        # --- copy the bootstrap files to the gateway host (scp in real life)
        boot = workdir / "gw" / "bootstrap"
        boot.mkdir(parents=True)
        for name in ("ca.crt", "bootstrap.crt", "bootstrap.key"):
            shutil.copy2(cloud / "pki" / name, boot / name)
        # --- on the gateway host: loopback there has no broker; only the cloud's address works
        state = workdir / "gw" / "state"
        cfg = workdir / "gw" / "gateway.yaml"
        cfg.write_text(_gateway_yaml(state, f"mqtts://{ip}:8883"))
        _run(on_gw(str(BIN / "edgegw"), "enroll", "-c", str(cfg), f"--token={token}",
                   "--bootstrap-dir", str(boot)))
        _run(on_gw(str(BIN / "edgegw"), "run", "-c", str(cfg), "--for", "3",
                   "--drain-timeout", "30"), timeout=90)
        sealed = json.loads((state / "status.json").read_text())["stats"]["pipeline"][
            "readings_sealed"
        ]
        assert sealed > 0
        # --- back on the cloud host: everything the gateway sealed is stored, once
        deadline = time.monotonic() + 20
        stored = -1
        while time.monotonic() < deadline:
            store = CloudStore(cloud / "store.db", readonly=True)
            try:
                stored = store.count_readings(GW_ID)
            finally:
                store.close()
            if stored >= sealed:
                break
            time.sleep(0.2)
        assert stored == sealed
        csv = _run(on_cloud(str(BIN / "edgegw-cloud"), "query", "--data-dir", str(cloud),
                            "--gateway", GW_ID, "--format", "csv"))
        assert len(csv.strip().splitlines()) == sealed + 1  # header + one line per reading
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        if serve.stdout is not None:
            serve.stdout.close()
