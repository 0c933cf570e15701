"""Side by side with ThingsBoard IoT Gateway on W1 and W2, both rows from the same run.

Workloads (issue 13): one Modbus TCP endpoint (``bench/register_plant.py``), unit ids 1..10, 100
holding registers each, every register changing every 100 ms; W1 polls at 1 s, W2 at 100 ms.

- ThingsBoard IoT Gateway 3.8.5 from PyPI, in its own venv made by this bench's set-up
  (``$EDGEGW_BENCH_CACHE``, default ``~/.cache/edgegw-bench/tb-3.8.5``; it pins an older pymodbus),
  memory storage, plain MQTT (QoS 1) to a plain Mosquitto on a free port, its Modbus connector
  with the same 10 slaves x 100 registers. The "cloud" is a paho client in this process that
  answers the gateway's ``getSessionLimits`` RPC (it sends no telemetry before) and receives
  ``v1/gateway/telemetry``; its start-up update check is pointed at a closed local port
  (``HTTPS_PROXY=http://127.0.0.1:9``). Lag = receive time - the reading's ``ts`` (PUBACK only:
  ThingsBoard has no end-to-end ack or durable store here).
- edgegw: ``bench_workloads.run_workload`` (mTLS, durable outbox, sealed, acked after the
  cloud's durable commit; lag measured at that commit), same plant, same window.

Delivered = readings received with ts in the window / devices x registers x window / period.
CPU % of one core and RSS/PSS/USS of the gateway process (psutil). Loaded 2-core machine.

    python bench/bench_thingsboard.py [--workloads W1,W2] [--seconds 15] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workloads import REGISTERS, UNITS, WORKLOADS, free_port, pct, run_workload

ROOT = Path(__file__).resolve().parents[1]
TB_VERSION = "3.8.5"
TB_PYMODBUS = "3.9.2"  # what its Modbus connector pins (it installs it at start otherwise)
SESSION_LIMITS = {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {},
                  "gatewayRateLimits": {}}


def tb_venv() -> Path:
    """The ThingsBoard gateway's own venv (created on first use: pip from PyPI)."""
    cache = Path(os.environ.get("EDGEGW_BENCH_CACHE", Path.home() / ".cache" / "edgegw-bench"))
    venv = cache / f"tb-{TB_VERSION}"
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import thingsboard_gateway, pymodbus, serial_asyncio"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the Modbus connector pip-installs its pinned pymodbus at start when missing: do it here
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"thingsboard-gateway=={TB_VERSION}",
                    f"pymodbus=={TB_PYMODBUS}", "pyserial", "pyserial-asyncio"], check=True)
    return venv


def tb_config(venv: Path, cfg_dir: Path, port: int, ports: list[int], period: float) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    shutil.copytree(site / "thingsboard_gateway" / "config", cfg_dir)
    gw = json.loads((cfg_dir / "tb_gateway.json").read_text())
    gw["thingsboard"].update({
        "host": "127.0.0.1", "port": port, "remoteShell": False, "remoteConfiguration": False,
        "security": {"type": "accessToken", "accessToken": "bench-token"}, "qos": 1,
    })
    gw["thingsboard"]["statistics"]["enable"] = False
    gw["storage"] = {"type": "memory", "read_records_count": 100, "max_records_count": 1_000_000}
    gw["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "bench_modbus.json"}]
    (cfg_dir / "tb_gateway.json").write_text(json.dumps(gw, indent=1))
    slaves = [
        {
            "host": "127.0.0.1", "port": p, "type": "tcp", "method": "socket", "unitId": u,
            "deviceName": f"e{e}-u{u}", "deviceType": "default", "timeout": 35,
            "byteOrder": "BIG", "wordOrder": "BIG", "retries": 3, "retryOnEmpty": True,
            "retryOnInvalid": True, "pollPeriod": int(period * 1000),
            "connectAttemptTimeMs": 5000, "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "attributes": [],
            # one block read of the 100 registers per poll, 100 keys: ThingsBoard's "wide
            # range" address (one key per register otherwise costs one request per register)
            "timeseries": [{"tag": "r${address}", "type": "16uint", "functionCode": 3,
                            "objectsCount": 1, "address": f"0-{REGISTERS - 1}",
                            "maxRegistersPerRequest": REGISTERS}],
            "attributeUpdates": [], "rpc": [],
        }
        for e, p in enumerate(ports)
        for u in range(1, UNITS + 1)
    ]
    (cfg_dir / "bench_modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}))


class Cloud:
    """Answers getSessionLimits, receives telemetry: (receive ms, ts ms, values) per entry."""

    def __init__(self, port: int) -> None:
        self.entries: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()
        self.limits_asked = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-cloud")
        c.on_connect = lambda cl, *_: cl.subscribe(
            [("v1/gateway/telemetry", 1), ("v1/devices/me/rpc/request/+", 1)])
        c.on_message = self._message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time_ns() // 1_000_000
        if msg.topic.startswith("v1/devices/me/rpc/request/"):
            req = json.loads(msg.payload)
            if req.get("method") == "getSessionLimits":
                self.limits_asked += 1
            rid = msg.topic.rsplit("/", 1)[1]
            client.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(SESSION_LIMITS), 1)
            return
        data = json.loads(msg.payload)
        rows = []
        for entries in data.values():
            for e in entries if isinstance(entries, list) else [entries]:
                if isinstance(e, dict) and "ts" in e:
                    rows.append((now, int(e["ts"]), len(e.get("values", {}))))
        with self.lock:
            self.entries.extend(rows)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_tb(name: str, seconds: float, warmup: float) -> dict[str, Any]:
    spec = WORKLOADS[name]
    venv = tb_venv()
    tmp = Path(tempfile.mkdtemp(prefix=f"edgegw-tb-{name}-"))
    os.chmod(tmp, 0o711)
    plant = broker = tb = None
    cloud: Cloud | None = None
    try:
        ports_file = tmp / "ports.json"
        plant = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "register_plant.py"), "--endpoints",
             str(spec["endpoints"]), "--units", str(UNITS), "--registers", str(REGISTERS),
             "--ports-file", str(ports_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 100000\nmax_inflight_messages 100\n"
                        "persistence false\nlog_dest none\n")
        os.chmod(conf, 0o644)
        broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                cloud = Cloud(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        while not ports_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("plant did not start")
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())["ports"]
        cfg_dir = tmp / "tb-config"
        tb_config(venv, cfg_dir, port, ports, spec["period"])
        env = os.environ | {"TB_GW_CONFIG_DIR": str(cfg_dir),
                            "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                            "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
        (tmp / "logs").mkdir()
        tb = subprocess.Popen(
            [str(venv / "bin" / "python"), "-c",
             "from thingsboard_gateway.tb_gateway import daemon; daemon()"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(tb.pid)
        deadline = time.monotonic() + 120
        while not cloud.entries:
            if time.monotonic() > deadline or tb.poll() is not None:
                raise RuntimeError(f"ThingsBoard gateway sent no telemetry (limits asked "
                                   f"{cloud.limits_asked}x); logs in {tmp / 'logs'}")
            time.sleep(0.1)
        time.sleep(warmup)  # warm-up of a benchmark, not synchronisation
        t_start = time.time_ns() // 1_000_000
        c0 = proc.cpu_times()
        time.sleep(seconds)  # the measurement window
        c1 = proc.cpu_times()
        t_end = time.time_ns() // 1_000_000
        mem = proc.memory_full_info()
        time.sleep(2)  # readings of the window still on their way (PUBACK-only path)
        with cloud.lock:
            rows = [(r, ts, n) for r, ts, n in cloud.entries if t_start <= ts < t_end]
        lags = [r - ts for r, ts, n in rows for _ in range(n)]
        got = sum(n for _, _, n in rows)
        devices = spec["endpoints"] * UNITS
        expected = round(devices * (t_end - t_start) / 1000 / spec["period"]) * REGISTERS
        cpu = 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / ((t_end - t_start) / 1000)
        return {
            "gateway": f"ThingsBoard IoT Gateway {TB_VERSION}, memory storage, plain MQTT QoS1",
            "workload": name, "readings_expected": expected, "readings_received": got,
            "delivered_percent": round(100 * got / expected, 1) if expected else None,
            "cpu_percent_one_core": round(cpu, 1),
            "rss_mb": round(mem.rss / 2**20, 1), "pss_mb": round(mem.pss / 2**20, 1),
            "uss_mb": round(mem.uss / 2**20, 1),
            "lag_ms_at_cloud_receive": {
                "mean": round(sum(lags) / len(lags), 1) if lags else None,
                "p50": pct(lags, 0.5), "p99": pct(lags, 0.99), "max": max(lags, default=None)},
        }
    finally:
        if cloud is not None:
            cloud.close()
        for p in (tb, plant, broker):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for w in (x.strip() for x in a.workloads.split(",") if x.strip()):
        rows.append(run_tb(w, a.seconds, a.warmup))
        e = run_workload(w, a.seconds, a.warmup, {})
        e["gateway"] = "edgegw (durable outbox, sealed, mTLS, e2e ack), defaults"
        rows.append(e)
    table = ["| workload | gateway | delivered | CPU (one core) | RSS / PSS / USS "
             "| lag mean / p99 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lag = r.get("lag_ms_at_cloud_receive") or r.get("lag_ms_at_durable_cloud_commit") or {}
        table.append(f"| {r['workload']} | {r['gateway']} | {r['delivered_percent']}% | "
                     f"{r['cpu_percent_one_core']}% | {r['rss_mb']} / {r['pss_mb']} / "
                     f"{r['uss_mb']} MB | {lag.get('mean')} / {lag.get('p99')} ms |")
    print(json.dumps({"load_avg": [round(x, 1) for x in os.getloadavg()],
                      "note": "loaded 2-core machine; edgegw lag at the cloud's durable commit, "
                              "ThingsBoard's at the cloud's receive (it has no durable ack)",
                      "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
