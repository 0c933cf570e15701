"""Weak links (issue 15): bytes on the wire, lag, alerts first, catch-up, through an emulated link.

Everything real, on loopback: the cloud (managed Mosquitto with mTLS + ACL, the ingest, its
store), a plant of pymodbus TCP servers (bench/plant.py), ``edgegw run`` polling them, and
between the gateway and the broker the link emulator (tests/linkemu.py: rate each way, one-way
delay, a modem buffer, no loss). Bytes are the TCP payload crossing the emulated link (TLS
records, MQTT framing, envelope and batch: everything above TCP/IP; IP+TCP headers, ~52 bytes
per segment, are not counted for either side). Byte counts are deterministic; latencies come
from a shared, loaded 2-core machine.

Beside each edgegw figure, measured in the same run through the same link settings:
- ``raw_payload``: the register bytes themselves (2 bytes per uint16 reading, no timestamp);
- ``json_peer``: plain JSON over MQTT the way ThingsBoard IoT Gateway sends it (one QoS1
  publish per device poll, ``{"plcNN": [{"ts": .., "values": {"hr000": .., ...}}]}``, mTLS to
  the same broker), polling its own identical plant with pymodbus; delivered = PUBACKed.

Scenarios (``--scenario``):
- ``w1``: W1 (10 devices x 100 holding registers at 1 s, constant steps) over 64 kbit/s,
  300 ms RTT: delivered, lag p50/p99 at steady state (after ``--warmup``), bytes/reading.
- ``curve``: bytes/reading for W1, W2 (100 ms polling) and noisy analog data at 16, 64, 256
  kbit/s and 10 Mbit/s (the JSON peer at 64 kbit/s and 10 Mbit/s; its bytes do not depend on
  the link).
- ``tls``: one reconnect's bytes on the link and time to CONNACK, full mTLS handshake vs a
  resumed TLS session (``--connections`` each).
- ``catchup``: W1 plus alarm devices whose rules raise an alert every few seconds; after the
  warm-up the link is cut for ``--cut`` seconds (600 = the issue's 10 minutes), then restored:
  drain time of the backlog while live readings keep flowing, bytes/reading of the drain vs
  live, and the alert latency (reading -> cloud durable store) while the backlog saturates the
  link.

    python bench/bench_weaklink.py --scenario w1 [--seconds 90]
    python bench/bench_weaklink.py --scenario curve [--seconds 45]
    python bench/bench_weaklink.py --scenario catchup [--cut 600] [--alarms 8 --backoff-max 3]
    python bench/bench_weaklink.py --scenario tls [--connections 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import free_port, pct, stop_process  # noqa: E402
from linkemu import LinkEmulator  # noqa: E402

from edgegw_cloud.broker import ManagedBroker  # noqa: E402
from edgegw_cloud.enrollment import provision_gateway  # noqa: E402
from edgegw_cloud.ingest import run_ingest  # noqa: E402
from edgegw_cloud.pki_setup import init_data_dir  # noqa: E402

GW = "weak-gw"
PEER = "json-peer"
WORKLOADS = {  # name: (poll seconds, plant kind)
    "W1": (1.0, "stepping"),
    "W2": (0.1, "stepping"),
    "noisy": (1.0, "noisy"),
}


class Plant:
    """bench/plant.py in a subprocess."""

    def __init__(self, kind: str, devices: int = 10, registers: int = 100) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "plant.py"), "--devices", str(devices),
             "--registers", str(registers), "--kind", kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ports: list[int] = json.loads(self.proc.stdout.readline())["ports"]

    def reads(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["reads"])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


class CloudRig:
    """Cloud data dir, managed Mosquitto, the ingest thread."""

    def __init__(self, tmp: Path) -> None:
        self.paths = init_data_dir(tmp / "cloud")
        self.port = free_port()
        self.broker = ManagedBroker(self.paths, self.port)
        self.broker.start()
        self.url = f"mqtts://127.0.0.1:{self.port}"
        self.stop_ev = threading.Event()
        # the ingest is a cloud service: it connects on the broker's service listener
        self.ingest = threading.Thread(target=run_ingest, daemon=True, args=(
            self.paths, self.broker.service_url, self.stop_ev))
        self.ingest.start()

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.paths.data_dir / 'store.db'}?mode=ro", uri=True)

    def stop(self) -> None:
        self.stop_ev.set()
        self.ingest.join(30)
        self.broker.stop()


def gateway_config(state: Path, identity: Path, broker: str, ports: list[int], poll: float,
                   kind: str, alarms: int = 0, backoff_max: float = 10.0) -> dict[str, Any]:
    points = [{"name": f"hr{r:03d}", "kind": "holding", "address": r,
               "type": "uint16" if kind == "stepping" else "int16",
               **({} if kind == "stepping" else {"scale": 0.01})} for r in range(100)]
    devices: list[dict[str, Any]] = [
        {"id": f"plc{d:02d}", "driver": "modbus", "poll": f"{int(poll * 1000)}ms",
         "options": {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
                     "timeout": "1s", "retries": 0, "points": points}}
        for d, port in enumerate(ports)
    ]
    rules = []
    for a in range(alarms):
        devices.append({"id": f"alarm{a}", "driver": "sim", "poll": "100ms", "options": {
            "points": [{"name": "level", "signal": "sine", "period": 6.0 + a,
                        "amplitude": 10.0, "offset": 50.0}]}})
        rules.append({"name": f"level-high-{a}", "device": f"alarm{a}", "when": "level > 55",
                      "clear": "level < 45", "severity": "critical"})
    return {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "warning"},
        "metrics": {"enabled": False},
        "uplink": {"enabled": True, "broker": broker, "identity_dir": str(identity),
                   "keepalive": "60s", "ack_timeout": "60s",
                   "backoff_max": f"{backoff_max:g}s"},
        "devices": devices,
        "rules": rules,
    }


def start_gateway(tmp: Path, cloud: CloudRig, emu: LinkEmulator, plant: Plant, poll: float,
                  kind: str, alarms: int = 0, drain: float = 120,
                  backoff_max: float = 10.0) -> subprocess.Popen[bytes]:
    state = tmp / "gw"
    provision_gateway(cloud.paths, GW, state / "identity", broker=cloud.url)
    cfg = tmp / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(gateway_config(
        state, state / "identity", f"mqtts://127.0.0.1:{emu.port}", plant.ports, poll, kind,
        alarms, backoff_max)))
    return subprocess.Popen(
        [sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg), "--drain-timeout", str(drain)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "gw.log", "wb"))


def stop_gateway(gw: subprocess.Popen[bytes]) -> None:
    stop_process(gw, 200)  # it drains its backlog over the slow link first


# --------------------------------------------------------------------------- edgegw runs
def edgegw_run(kind: str, poll: float, rate_bps: float, rtt: float, seconds: float,
               warmup: float, drain: float = 120) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-weak-"))
    os.chmod(tmp, 0o711)
    cloud = CloudRig(tmp)
    plant = Plant(kind)
    emu = LinkEmulator(cloud.port, rate=rate_bps / 8, delay=rtt / 2, buffer=64 * 1024).start()
    gw = start_gateway(tmp, cloud, emu, plant, poll, kind, drain=drain)
    try:
        time.sleep(warmup)  # measurement windows of a benchmark, not synchronisation
        c0, t0, r0 = emu.counters(), time.time(), plant.reads()
        time.sleep(seconds)
        c1, t1, r1 = emu.counters(), time.time(), plant.reads()
        stop_gateway(gw)
        r_end = plant.reads()
        con = cloud.db()
        try:
            t0ms, t1ms = int(t0 * 1000), int(t1 * 1000)
            carried = con.execute(
                "SELECT coalesce(sum(readings), 0) FROM batches WHERE gateway=? AND "
                "received_ms >= ? AND received_ms < ?", (GW, t0ms, t1ms)).fetchone()[0]
            lag = [r[0] for r in con.execute(
                "SELECT b.stored_ms - p.ts_ms FROM points p JOIN batches b ON b.seq = p.seq "
                "WHERE p.ts_ms >= ? AND p.ts_ms < ?", (t0ms, t1ms))]
            window_produced = (r1 - r0) * 100
            stored_total = con.execute("SELECT count(*) FROM points").fetchone()[0]
            distinct = con.execute("SELECT count(*) FROM (SELECT DISTINCT series, ts_ms "
                                   "FROM points)").fetchone()[0]
        finally:
            con.close()
        up = c1["up_bytes"] - c0["up_bytes"]
        return {
            "readings_per_s": round(window_produced / (t1 - t0)),
            "up_bytes_per_s": round(up / (t1 - t0)),
            "bytes_per_reading_up": round(up / carried, 3) if carried else None,
            "down_bytes_per_s": round((c1["down_bytes"] - c0["down_bytes"]) / (t1 - t0)),
            "link_utilisation": round(up / (t1 - t0) / (rate_bps / 8), 3),
            "lag_ms_steady": {"p50": pct(lag, 0.5), "p99": pct(lag, 0.99),
                              "max": max(lag, default=None)},
            # readings that reached the cloud during the window / produced during it
            "delivered_in_window": round(carried / window_produced, 4)
            if window_produced else None,
            "produced_total": r_end * 100,
            "stored_total": stored_total,
            "duplicates": stored_total - distinct,
            "delivered_total": round(stored_total / (r_end * 100), 4) if r_end else None,
            "connections": c1["connections"],
        }
    finally:
        if gw.poll() is None:
            gw.kill()
        emu.stop()
        plant.stop()
        cloud.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- JSON peer
def peer_child(args: argparse.Namespace) -> None:
    """The plain-JSON peer, in its own process: prints its counters as JSON at the end."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from pymodbus.client import AsyncModbusTcpClient

    from edgegw import pki

    ident = Path(args.identity)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=pki.client_id(PEER), protocol=mqtt.MQTTv5)
    client.tls_set_context(pki.make_tls_context(ident / "ca.crt", ident / "gateway.crt",
                                                ident / "gateway.key"))
    sent: dict[int, tuple[int, int]] = {}  # mid -> (ts_ms, readings)
    acked: list[tuple[int, int, int]] = []  # (ts_ms, readings, puback_ms)
    lock = threading.Lock()

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any = None) -> None:
        now = time.time_ns() // 1_000_000
        with lock:
            item = sent.pop(mid, None)
            if item is not None:
                acked.append((item[0], item[1], now))

    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    topic = f"gw/{PEER}/up/json"
    ports = json.loads(args.ports)
    produced = [0]

    async def poll(d: int, port: int, stop_at: float) -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        await mb.connect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + d * args.poll / len(ports)
        while loop.time() < stop_at:
            deadline += args.poll
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            rr = await mb.read_holding_registers(0, count=100, device_id=1)
            ts = time.time_ns() // 1_000_000
            regs = rr.registers
            values = {f"hr{r:03d}": (regs[r] if args.kind == "stepping"
                                     else round((regs[r] - 65536 * (regs[r] > 32767)) * 0.01, 2))
                      for r in range(100)}
            payload = json.dumps({f"plc{d:02d}": [{"ts": ts, "values": values}]},
                                 separators=(",", ":"))
            with lock:
                info = client.publish(topic, payload, qos=1)
                sent[info.mid] = (ts, 100)
            produced[0] += 100
        mb.close()

    async def main() -> None:
        stop_at = asyncio.get_running_loop().time() + args.seconds
        await asyncio.gather(*(poll(d, p, stop_at) for d, p in enumerate(ports)))

    t0 = time.time_ns() // 1_000_000
    asyncio.run(main())
    time.sleep(1.0)  # let the last PUBACKs in (the window end is what is reported)
    client.loop_stop()
    print(json.dumps({"t0": t0, "produced": produced[0], "acked": acked}))


def peer_run(kind: str, poll: float, rate_bps: float, rtt: float, seconds: float,
             warmup: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-weak-peer-"))
    os.chmod(tmp, 0o711)
    cloud = CloudRig(tmp)
    plant = Plant(kind)
    emu = LinkEmulator(cloud.port, rate=rate_bps / 8, delay=rtt / 2, buffer=64 * 1024).start()
    try:
        provision_gateway(cloud.paths, PEER, tmp / "peer", broker=cloud.url)
        samples: list[dict[str, int]] = []

        def sample() -> None:
            time.sleep(warmup)
            samples.append(emu.counters() | {"t": int(time.time() * 1000)})
            time.sleep(seconds)
            samples.append(emu.counters() | {"t": int(time.time() * 1000)})

        th = threading.Thread(target=sample)
        th.start()
        out = subprocess.run(
            [sys.executable, __file__, "--peer-child", "--identity", str(tmp / "peer"),
             "--port", str(emu.port), "--ports", json.dumps(plant.ports), "--poll", str(poll),
             "--kind", kind, "--seconds", str(warmup + seconds)],
            capture_output=True, text=True, timeout=warmup + seconds + 120, check=True)
        th.join()
        res = json.loads(out.stdout.strip().splitlines()[-1])
        c0, c1 = samples
        up = c1["up_bytes"] - c0["up_bytes"]
        in_window = [a for a in res["acked"] if c0["t"] <= a[2] < c1["t"]]
        carried = sum(a[1] for a in in_window)
        lag = [a[2] - a[0] for a in res["acked"] if c0["t"] <= a[0] < c1["t"]]
        produced_window = (seconds / poll) * 100 * len(plant.ports)
        return {
            "bytes_per_reading_up": round(up / carried, 3) if carried else None,
            "up_bytes_per_s": round(up / seconds),
            "link_utilisation": round(up / seconds / (rate_bps / 8), 3),
            # readings PUBACKed during the window / readings produced during it
            "delivered_in_window": round(carried / produced_window, 4),
            "lag_ms_steady_puback": {"p50": pct(lag, 0.5), "p99": pct(lag, 0.99)},
        }
    finally:
        emu.stop()
        plant.stop()
        cloud.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- catch-up
def catchup_run(rate_bps: float, rtt: float, warmup: float, cut: float,
                limit: float, alarms: int = 2, backoff_max: float = 10.0) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-weak-cut-"))
    os.chmod(tmp, 0o711)
    cloud = CloudRig(tmp)
    plant = Plant("stepping")
    emu = LinkEmulator(cloud.port, rate=rate_bps / 8, delay=rtt / 2, buffer=64 * 1024).start()
    gw = start_gateway(tmp, cloud, emu, plant, 1.0, "stepping", alarms=alarms,
                       backoff_max=backoff_max)
    try:
        time.sleep(warmup)
        live0, tl0 = emu.counters(), time.time()
        time.sleep(min(30.0, warmup))
        live1, tl1 = emu.counters(), time.time()
        emu.cut()
        t_cut = time.time()
        time.sleep(cut)
        emu.restore()
        t_restore = time.time()
        d0 = emu.counters()
        con = cloud.db()
        drained_at = None
        plc = "(SELECT id FROM series WHERE device LIKE 'plc%')"
        try:
            deadline = time.monotonic() + limit
            want = 0.995 * 1000 * (t_restore - t_cut)
            while time.monotonic() < deadline:
                time.sleep(1.0)  # poll until the backlog has arrived (bounded by --limit)
                n = con.execute(f"SELECT count(*) FROM points WHERE ts_ms >= ? AND ts_ms < ? "
                                f"AND series IN {plc}", (int(t_cut * 1000),
                                                         int(t_restore * 1000))).fetchone()[0]
                if n >= want:
                    drained_at = con.execute(
                        f"SELECT max(b.stored_ms) FROM points p JOIN batches b ON b.seq = p.seq "
                        f"WHERE p.ts_ms >= ? AND p.ts_ms < ? AND p.series IN {plc}",
                        (int(t_cut * 1000), int(t_restore * 1000))).fetchone()[0] / 1000
                    break
            d1, td1 = emu.counters(), time.time()
            time.sleep(5)
        finally:
            con.close()
        try:  # the gateway's own view of its alerts (written every second)
            gw_uplink = json.loads((tmp / "gw" / "status.json").read_text())["stats"]["uplink"]
        except (OSError, ValueError, KeyError):
            gw_uplink = {}
        stop_gateway(gw)
        con = cloud.db()
        try:
            rs, rd = int(t_restore * 1000), int((drained_at or td1) * 1000)
            alerts = [r[0] for r in con.execute(
                "SELECT b.stored_ms - a.ts_ms FROM alerts a JOIN batches b ON "
                "a.gateway = b.gateway AND a.seq = b.seq WHERE a.gateway=? AND a.ts_ms >= ? "
                "AND a.ts_ms < ?", (GW, rs, rd))]
            alerts_live = [r[0] for r in con.execute(
                "SELECT b.stored_ms - a.ts_ms FROM alerts a JOIN batches b ON "
                "a.gateway = b.gateway AND a.seq = b.seq WHERE a.gateway=? AND a.ts_ms < ?",
                (GW, int(t_cut * 1000)))]

            def carried(t0: float, t1: float) -> int:
                return int(con.execute(
                    "SELECT coalesce(sum(readings), 0) FROM batches WHERE gateway=? AND "
                    "received_ms >= ? AND received_ms < ?", (GW, int(t0 * 1000),
                                                             int(t1 * 1000))).fetchone()[0])

            reconnect = con.execute("SELECT min(received_ms) FROM batches WHERE received_ms >= ?",
                                    (rs,)).fetchone()[0]
            drain_readings = carried(t_restore, drained_at or td1)
            rc = reconnect or rs
            connected_rows = con.execute(
                "SELECT b.stored_ms - a.ts_ms, b.received_ms - a.ts_ms, b.stored_ms - "
                "b.received_ms FROM alerts a JOIN batches b ON a.gateway = b.gateway AND "
                "a.seq = b.seq WHERE a.gateway=? AND a.ts_ms >= ? AND a.ts_ms < ?",
                (GW, rc, rd)).fetchall()
            alerts_connected = [r[0] for r in connected_rows]
            # where the time goes: reading -> ingest received (gateway + link), received ->
            # stored (ingest queue + decode + commit)
            to_ingest = [r[1] for r in connected_rows]
            in_ingest = [r[2] for r in connected_rows]
            # the alerts raised during the cut are a backlog of their own (FIFO in the alert
            # lane, ~150 bytes each on the wire): alerts raised after it was delivered, while
            # the telemetry backlog still saturates the link
            old_done = con.execute(
                "SELECT max(b.stored_ms) FROM alerts a JOIN batches b ON a.gateway = b.gateway "
                "AND a.seq = b.seq WHERE a.gateway=? AND a.ts_ms < ?", (GW, rc)).fetchone()[0]
            alerts_after_old = [r[0] for r in con.execute(
                "SELECT b.stored_ms - a.ts_ms FROM alerts a JOIN batches b ON "
                "a.gateway = b.gateway AND a.seq = b.seq WHERE a.gateway=? AND a.ts_ms >= ? "
                "AND a.ts_ms < ?", (GW, max(rc, old_done or 0), rd))]
            live_readings = carried(tl0, tl1)
            live_lag_after = [r[0] for r in con.execute(
                f"SELECT b.stored_ms - p.ts_ms FROM points p JOIN batches b ON b.seq = p.seq "
                f"WHERE p.ts_ms >= ? AND p.ts_ms < ? AND p.series IN {plc}", (rs, rd))]
            stored = con.execute(f"SELECT count(*) FROM points WHERE series IN {plc}"
                                 ).fetchone()[0]
            distinct = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT series, ts_ms FROM "
                                   f"points WHERE series IN {plc})").fetchone()[0]
        finally:
            con.close()
        produced = plant.reads() * 100
        drain_s = (drained_at - t_restore) if drained_at else None
        drain_bytes = (d1["up_bytes"] - d0["up_bytes"])
        live_bytes = live1["up_bytes"] - live0["up_bytes"]
        return {
            "cut_s": cut,
            "backlog_readings": round((t_restore - t_cut) * 1000),
            "drain_s": round(drain_s, 1) if drain_s else None,
            "drain_readings_per_s": round(drain_readings / drain_s) if drain_s else None,
            "reconnected_after_restore_s": round((reconnect - rs) / 1000, 1)
            if reconnect else None,
            "drain_bytes_per_reading": round(drain_bytes / drain_readings, 3)
            if drain_readings else None,
            "drain_link_utilisation": round(drain_bytes / (td1 - t_restore) / (rate_bps / 8), 3),
            "live_bytes_per_reading": round(live_bytes / live_readings, 3)
            if live_readings else None,
            "live_readings_lag_during_drain_ms": {"p50": pct(live_lag_after, 0.5),
                                                  "p99": pct(live_lag_after, 0.99)},
            "alert_latency_ms_while_backlog_saturates_link": {
                "what": "alerts raised after the reconnect, until the backlog had drained",
                "n": len(alerts_connected), "p50": pct(alerts_connected, 0.5),
                "p99": pct(alerts_connected, 0.99), "max": max(alerts_connected, default=None),
                "reading_to_ingest_ms": {"p50": pct(to_ingest, 0.5),
                                         "p99": pct(to_ingest, 0.99)},
                "ingest_to_store_ms": {"p50": pct(in_ingest, 0.5),
                                       "p99": pct(in_ingest, 0.99)},
                "gateway_reading_to_publish": gw_uplink.get("alert_publish")},
            "gateway_link_estimate": {k: gw_uplink.get(k) for k in (
                "link_rate_bps", "link_base_rtt_ms", "cwnd_bytes", "tls_full_handshakes",
                "tls_resumed_handshakes")},
            "alert_latency_ms_after_the_cut_alerts_delivered": {
                "what": "alerts raised once the alerts of the cut had reached the store, until "
                        "the backlog had drained (the link still saturated by telemetry)",
                "cut_alerts_delivered_after_reconnect_s": round((old_done - rc) / 1000, 1)
                if old_done else None,
                "n": len(alerts_after_old), "p50": pct(alerts_after_old, 0.5),
                "p99": pct(alerts_after_old, 0.99), "max": max(alerts_after_old, default=None)},
            "alert_latency_ms_from_restore": {"n": len(alerts), "p50": pct(alerts, 0.5),
                                              "p99": pct(alerts, 0.99),
                                              "max": max(alerts, default=None)},
            "alert_latency_ms_before_cut": {"n": len(alerts_live), "p50": pct(alerts_live, 0.5),
                                            "p99": pct(alerts_live, 0.99)},
            "produced": produced,
            "stored": stored,
            "duplicates": stored - distinct,
        }
    finally:
        if gw.poll() is None:
            gw.kill()
        emu.stop()
        plant.stop()
        cloud.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- TLS resumption
def tls_run(rate_bps: float, rtt: float, n: int) -> dict[str, Any]:
    """Bytes on the link and time to CONNACK of a connection (TCP payload both ways: TLS
    handshake, MQTT CONNECT/CONNACK, DISCONNECT, TLS close), mTLS with our certificates: a
    full handshake (a new TLS context each time, as before issue 15) vs a resumed one (the
    uplink's ``TlsSessions``: the session of the previous connection offered again)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgegw import pki
    from edgegw.transport.mqtt_client import Client, TlsSessions

    tmp = Path(tempfile.mkdtemp(prefix="edgegw-weak-tls-"))
    os.chmod(tmp, 0o711)
    cloud = CloudRig(tmp)
    emu = LinkEmulator(cloud.port, rate=rate_bps / 8, delay=rtt / 2, buffer=64 * 1024).start()
    ident = tmp / "gw"
    provision_gateway(cloud.paths, GW, ident, broker=cloud.url)

    def context() -> TlsSessions:
        return TlsSessions(pki.make_tls_context(ident / "ca.crt", ident / "gateway.crt",
                                                ident / "gateway.key"))

    def connect_once(tls: TlsSessions) -> tuple[int, int, float, bool]:
        c0 = emu.counters()
        connected = threading.Event()
        client = Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=pki.client_id(GW), protocol=mqtt.MQTTv5)
        client.tls_set_context(tls.context)
        client.tls_sessions = tls
        client.on_connect = lambda *_a: connected.set()
        resumed0 = tls.resumed
        t0 = time.monotonic()
        client.connect("127.0.0.1", emu.port, keepalive=60)
        client.loop_start()
        if not connected.wait(30):
            raise RuntimeError("no CONNACK through the link emulator")
        took = time.monotonic() - t0
        client.disconnect()
        client.loop_stop()
        time.sleep(2 * rtt + 0.5)  # let the last bytes cross the link before counting
        c1 = emu.counters()
        return (c1["up_bytes"] - c0["up_bytes"], c1["down_bytes"] - c0["down_bytes"], took,
                tls.resumed > resumed0)

    try:
        out: dict[str, Any] = {}
        shared = context()
        for mode in ("full", "resumed"):
            rows = []
            connect_once(shared)  # warm-up (and, for "resumed", the session to resume)
            for _ in range(n):
                rows.append(connect_once(context() if mode == "full" else shared))
            out[mode] = {
                "connections": n,
                "resumed": sum(r[3] for r in rows),
                "up_bytes": round(sum(r[0] for r in rows) / n),
                "down_bytes": round(sum(r[1] for r in rows) / n),
                "connack_ms_p50": round(1000 * sorted(r[2] for r in rows)[n // 2]),
            }
        full, res = out["full"], out["resumed"]
        out["saved_bytes_per_reconnect"] = (full["up_bytes"] + full["down_bytes"]
                                            - res["up_bytes"] - res["down_bytes"])
        return out
    finally:
        emu.stop()
        cloud.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=["w1", "curve", "catchup", "tls"], default="w1")
    p.add_argument("--connections", type=int, default=5, help="tls: connections per mode")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--cut", type=float, default=600.0)
    p.add_argument("--limit", type=float, default=900.0, help="catch-up: give up after")
    p.add_argument("--links", default="16,64,256,10000", help="kbit/s, for --scenario curve")
    p.add_argument("--workloads", default="W1,W2,noisy")
    p.add_argument("--rtt", type=float, default=0.3)
    p.add_argument("--alarms", type=int, default=2, help="catch-up: alarm devices (alerts)")
    p.add_argument("--backoff-max", type=float, default=10.0,
                   help="catch-up: the gateway's uplink.backoff_max (seconds)")
    # the JSON peer's child process
    p.add_argument("--peer-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--identity", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--kind", default="stepping", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peer_child:
        peer_child(a)
        return
    out: dict[str, Any] = {"scenario": a.scenario, "rtt_s": a.rtt, "modem_buffer": 65536,
                           "note": "bytes = TCP payload on the emulated link (TLS + MQTT + "
                           "envelope + batch); latencies on a shared, loaded 2-core machine"}
    if a.scenario == "w1":
        out["edgegw"] = edgegw_run("stepping", 1.0, 64_000, a.rtt, a.seconds, a.warmup)
        out["json_peer"] = peer_run("stepping", 1.0, 64_000, a.rtt, a.seconds, a.warmup)
        out["raw_payload_bytes_per_reading"] = 2.0
        out["goal"] = {"delivered": 1.0, "lag_p99_ms": 5000, "bytes_per_reading": 2.0}
    elif a.scenario == "curve":
        curve: dict[str, Any] = {}
        for wl in a.workloads.split(","):
            poll, kind = WORKLOADS[wl]
            row: dict[str, Any] = {"raw_payload_bytes_per_reading": 2.0}
            for kbit in (float(x) for x in a.links.split(",")):
                r = edgegw_run(kind, poll, kbit * 1000, a.rtt, a.seconds, a.warmup, drain=5)
                row[f"edgegw_{kbit:g}k"] = {k: r[k] for k in (
                    "bytes_per_reading_up", "readings_per_s", "link_utilisation",
                    "delivered_in_window", "lag_ms_steady")}
                print(json.dumps({wl: {f"edgegw_{kbit:g}k": row[f"edgegw_{kbit:g}k"]}}),
                      file=sys.stderr, flush=True)
            for kbit in (64.0, 10000.0):
                try:
                    r = peer_run(kind, poll, kbit * 1000, a.rtt, a.seconds, a.warmup)
                except subprocess.SubprocessError as exc:  # the peer could not keep the pace
                    r = {"error": f"{type(exc).__name__}: the JSON peer did not finish"}
                row[f"json_peer_{kbit:g}k"] = r
                print(json.dumps({wl: {f"json_peer_{kbit:g}k": r}}), file=sys.stderr, flush=True)
            curve[wl] = row
        out["curve"] = curve
    elif a.scenario == "tls":
        out["tls_reconnect"] = tls_run(64_000, a.rtt, a.connections)
    else:
        out["catchup"] = catchup_run(64_000, a.rtt, a.warmup, a.cut, a.limit, a.alarms,
                                     a.backoff_max)
        out["goal"] = {"alert_p99_ms": 2000}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
