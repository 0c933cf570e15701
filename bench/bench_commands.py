"""Command round trip through the real daemon while it carries 10k readings/s of telemetry.

Device-management acceptance 6: latency of ``DeviceManager.command`` (the Python API behind
``edgegw-cloud command``): cloud -> broker -> gateway (verify, replay check, durable command id)
-> bus scheduler -> a real pymodbus server -> durable result -> broker -> cloud (result stored).

Setup, all real and on loopback: cloud data dir, managed Mosquitto (mTLS + ACL), the ingest,
a provisioned gateway, a pymodbus TCP server in its own process (tests/modbus/modbus_sim.py),
and ``edgegw run`` with 10 ``sim`` push devices producing ``--rate`` readings/s in total plus
one Modbus device polled every 100 ms. Commands alternate ``write`` and ``read``, one at a
time. Peers measured in the same run: a raw MQTT QoS1 round trip cloud -> echo client -> cloud
through the same broker (a second gateway identity), and a raw pymodbus write from this process.
Prints one JSON document.

    python bench/bench_commands.py [--commands 300] [--rate 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from benchlib import background_devices, cloud_broker, pct
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient

from edgegw import pki
from edgegw.transport.mqtt_client import Client
from edgegw_cloud.devmgmt import DeviceManager
from edgegw_cloud.enrollment import provision_gateway
from edgegw_cloud.ingest import run_ingest

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "modbus" / "modbus_sim.py"
GW = "bench-gw"


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": pct(values, 0.5, 2), "p99": pct(values, 0.99, 2),
            "max": round(max(values), 2) if values else None}


def config(state: Path, identity: Path, broker: str, rate: int, port: int) -> dict[str, Any]:
    devices = background_devices(rate)
    devices.append({
        "id": "boiler", "driver": "modbus", "poll": "100ms", "timeout": "1s",
        "options": {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
                    "points": [{"name": "setpoint", "kind": "holding", "address": 60,
                                "type": "uint16", "writable": True, "min": 0, "max": 1000},
                               {"name": "temp", "kind": "holding", "address": 61,
                                "type": "uint16"}]},
    })
    return {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "warning"},
        "metrics": {"enabled": False},
        "uplink": {"enabled": True, "broker": broker, "identity_dir": str(identity)},
        "devices": devices,
    }


def raw_mqtt_round_trip(paths: Any, port: int, service_port: int, ident_dir: Path,
                        n: int) -> list[float]:
    """cloud (ingest identity) -> gw/echo/down/x -> echo client -> gw/echo/up/x -> cloud,
    with the same paho client class (and socket options) as the gateway and the cloud."""
    got = threading.Event()
    ready = threading.Semaphore(0)

    def client(cid: str, cert: Path, key: Path, ca: Path) -> mqtt.Client:
        c = Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.tls_set_context(pki.make_tls_context(ca, cert, key))
        c.on_subscribe = lambda *_a: ready.release()
        return c

    echo = client(pki.client_id("bench-echo"), ident_dir / "gateway.crt", ident_dir / "gateway.key",
                  ident_dir / "ca.crt")
    cloud = client(pki.random_client_id("edgegw-ingest-bench"), paths.ingest_crt, paths.ingest_key,
                   paths.ca_crt)
    echo.on_connect = lambda c, *_a: c.subscribe("gw/bench-echo/down/x", qos=1)
    echo.on_message = lambda c, _u, m: c.publish("gw/bench-echo/up/x", m.payload, qos=1)
    cloud.on_connect = lambda c, *_a: c.subscribe("gw/bench-echo/up/x", qos=1)
    cloud.on_message = lambda *_a: got.set()
    echo.connect("127.0.0.1", port)  # a gateway on the gateway listener
    cloud.connect("127.0.0.1", service_port)  # the cloud on the service listener
    for c in (echo, cloud):
        c.loop_start()
    for _ in range(2):
        ready.acquire(timeout=10)
    out = []
    try:
        for _ in range(n):
            got.clear()
            t0 = time.perf_counter()
            cloud.publish("gw/bench-echo/down/x", b"x" * 200, qos=1)
            if got.wait(5):
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        for c in (echo, cloud):
            c.disconnect()
            c.loop_stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commands", type=int, default=300)
    p.add_argument("--rate", type=int, default=10_000)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    os.chmod(tmp, 0o711)  # Mosquitto drops to its own user: the data dir must be enterable
    stop = threading.Event()
    broker = plant = gw = None
    try:
        paths, broker, url = cloud_broker(tmp)
        broker.start()
        service = broker.service_url  # the cloud's services connect on the service listener
        threading.Thread(target=run_ingest, args=(paths, service, stop), daemon=True).start()
        plant = subprocess.Popen([sys.executable, str(SIM), "--tcp", "0", "--units", "1"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert plant.stdout is not None
        mport = int(json.loads(plant.stdout.readline())["port"])
        state = tmp / "gw"
        provision_gateway(paths, GW, state / "identity", broker=url)
        provision_gateway(paths, "bench-echo", tmp / "echo", broker=url)
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(config(state, state / "identity", url, a.rate, mport)))
        gw = subprocess.Popen([sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dm = DeviceManager(paths, service).start()
        deadline = time.monotonic() + 30
        while dm.command(GW, "-", "ping", timeout=2)["status"] != "ok":
            if time.monotonic() > deadline:
                raise SystemExit("gateway did not answer a ping within 30 s")
        time.sleep(3)  # telemetry reaches steady state (a warm-up, not synchronisation)
        lat: dict[str, list[float]] = {"write": [], "read": []}
        failed: dict[str, int] = {}
        t_start = time.monotonic()
        for i in range(a.commands):
            action = "write" if i % 2 == 0 else "read"
            args = {"point": "setpoint", "value": i} if action == "write" else {
                "points": ["setpoint"]}
            t0 = time.perf_counter()
            res = dm.command(GW, "boiler", action, args, timeout=10)
            if res["status"] == "ok":
                lat[action].append((time.perf_counter() - t0) * 1000)
            else:
                failed[res["status"]] = failed.get(res["status"], 0) + 1
        elapsed = time.monotonic() - t_start
        dm.stop()
        raw_mqtt = raw_mqtt_round_trip(paths, broker.port, broker.service_port, tmp / "echo", 200)
        client = ModbusTcpClient("127.0.0.1", port=mport)
        client.connect()
        raw_mb = []
        for i in range(200):
            t0 = time.perf_counter()
            client.write_register(60, i, device_id=1)
            raw_mb.append((time.perf_counter() - t0) * 1000)
        client.close()
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        stop.set()
        con = sqlite3.connect(paths.data_dir / "store.db")
        readings = con.execute("SELECT count(*) FROM readings").fetchone()[0]
        span = con.execute("SELECT (max(received_ms) - min(received_ms)) / 1000.0 FROM "
                           "batches").fetchone()[0] or 1.0
        con.close()
        print(json.dumps({
            "commands": a.commands, "seconds": round(elapsed, 1), "failed": failed,
            "background_rate_target": a.rate,
            "readings_stored_per_s": round(readings / span),
            "command_round_trip_ms": {"write": summary(lat["write"]),
                                      "read": summary(lat["read"]),
                                      "all": summary(lat["write"] + lat["read"])},
            "raw_mqtt_qos1_round_trip_ms": summary(raw_mqtt),
            "raw_pymodbus_write_ms": summary(raw_mb),
            "load": os.getloadavg(),
        }, indent=1))
    finally:
        stop.set()
        for proc in (gw, plant):
            if proc is not None and proc.poll() is None:
                proc.kill()
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
