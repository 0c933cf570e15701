"""OTA download over the mTLS MQTT session, with and without telemetry load (issue 11, acc. 7).

Setup, all real and on loopback: cloud data dir, managed Mosquitto (mTLS + ACL), the ingest, the
device manager that ``serve`` runs (rollout engine + chunk server, in this process), a
provisioned gateway running ``edgegw run`` (its OTA agent pulls the chunks: sealed ``request`` up,
sealed ``chunk`` down, each chunk hashed and fsynced with its bitmap). The release is a software
bundle of ``--size-mb`` MB (bundle.json + wheels of random bytes: incompressible, like wheels);
the gateway's maintenance window is closed (``0 0 1 1 *``), so after the download it verifies
and waits instead of installing. Runs:

- ``idle``: the gateway carries no telemetry;
- ``loaded``: the gateway carries ``--rate`` readings/s (10 ``sim`` push devices), and the
  telemetry latency (a batch's oldest sample -> its durable commit at the cloud) is taken
  before and during the download;
- ``ceiling``: raw MQTT QoS1 publishes of the same bytes in the same chunk-sized messages over
  the same broker and listeners (cloud identity -> a second gateway identity), with the same
  paho client class: stop-and-wait (one PUBACK at a time, as the chunk server sends) and
  pipelined (paho's window of 20).

Prints one JSON document. Figures depend on the machine's load: label them as measured.

    python bench/bench_ota.py [--size-mb 20] [--rate 10000] [--in-flight 4]
"""

from __future__ import annotations

import argparse
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

import paho.mqtt.client as mqtt
import yaml
from benchlib import background_devices, cloud_broker, pct, stop_process
from paho.mqtt.enums import CallbackAPIVersion

import edgegw
from edgegw import pki
from edgegw.ota import launcher
from edgegw.protocol.release import DEFAULT_CHUNK_SIZE
from edgegw.transport.mqtt_client import Client
from edgegw_cloud.devmgmt import DeviceManager
from edgegw_cloud.enrollment import provision_gateway
from edgegw_cloud.ingest import run_ingest
from edgegw_cloud.ota import ReleaseStore, publish_bundle
from edgegw_cloud.rollout import RolloutStore

ROOT = Path(__file__).resolve().parents[1]
GW = "bench-gw"
CEILING_GW = "bench-ceiling"
CLOSED_WINDOW = "0 0 1 1 *"  # 1 January 00:00 UTC: the install waits, the download does not


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": pct(values, 0.5, 1), "p99": pct(values, 0.99, 1),
            "max": round(max(values), 1) if values else None}


def make_bundle(d: Path, version: str, size: int) -> Path:
    (d / "wheels").mkdir(parents=True)
    (d / "bundle.json").write_text(json.dumps(
        {"name": "edgegw", "version": version, "requirement": f"edgegw=={version}"}))
    part = 1 << 20
    n = 0
    while n * part < size:
        name = (f"edgegw-{version}-py3-none-any.whl" if n == 0
                else f"dep{n:02d}-1.0-py3-none-any.whl")
        (d / "wheels" / name).write_bytes(os.urandom(min(part, size - n * part)))
        n += 1
    return d


def gateway_config(state: Path, identity: Path, broker: str, slots: Path, rate: int,
                   in_flight: int) -> dict[str, Any]:
    return {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "warning"},
        "metrics": {"enabled": False},
        "uplink": {"enabled": True, "broker": broker, "identity_dir": str(identity)},
        "ota": {"slots": str(slots), "window": CLOSED_WINDOW, "chunks_in_flight": in_flight},
        "devices": background_devices(rate) if rate else [],
    }


class Cloud:
    def __init__(self, tmp: Path) -> None:
        self.paths, self.broker, self.url = cloud_broker(tmp)
        self.port = self.broker.port
        self.broker.start()
        self.stop_ingest = threading.Event()
        threading.Thread(target=run_ingest, args=(self.paths, self.broker.service_url,
                                                  self.stop_ingest), daemon=True).start()
        self.dm = DeviceManager(self.paths, self.broker.service_url, ota=True).start()

    def publish(self, bundle: Path, chunk_size: int) -> tuple[str, int, int]:
        with ReleaseStore(self.paths.data_dir) as store:
            row = publish_bundle(store, bundle, chunk_size=chunk_size)
        return row.release_id, row.serial, row.payload_size

    def rollout(self, release: str, serial: int) -> int:
        with RolloutStore(self.paths.data_dir) as rs:
            return rs.create(release, serial, [GW], selector=GW, waves="100%",
                             max_failures="0", window=None, wave_timeout_s=None).id

    def close(self) -> None:
        self.dm.stop()
        self.stop_ingest.set()
        self.broker.stop()


def read_state(state: Path, release: str) -> dict[str, Any]:
    try:
        doc = json.loads((state / "ota" / release / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def held(doc: dict[str, Any]) -> int:
    return sum(bin(b).count("1") for b in bytes.fromhex(str(doc.get("have") or "")))


def download_run(cloud: Cloud, tmp: Path, name: str, rate: int, a: argparse.Namespace,
                 version: str) -> dict[str, Any]:
    state = tmp / f"gw-{name}"
    ident = tmp / "identity"
    slots = tmp / "slots"
    cfg = tmp / f"gateway-{name}.yaml"
    cfg.write_text(yaml.safe_dump(gateway_config(state, ident, cloud.url, slots, rate,
                                                 a.in_flight)))
    bundle = make_bundle(tmp / f"bundle-{name}", version, a.size_mb << 20)
    release, serial, size = cloud.publish(bundle, a.chunk_kb << 10)
    shutil.rmtree(bundle)
    infos = cloud.dm.counts.get("info", 0)
    log = open(tmp / f"gateway-{name}.log", "wb")  # noqa: SIM115 - the child keeps a copy
    gw = subprocess.Popen([sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg)], cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 60
        while cloud.dm.counts.get("info", 0) <= infos:  # the gateway said hello to the cloud
            if time.monotonic() > deadline or gw.poll() is not None:
                raise SystemExit(f"gateway did not come online (see {tmp}/gateway-{name}.log)")
            time.sleep(0.05)
        if rate:
            time.sleep(a.warmup)  # telemetry reaches steady state (a warm-up, not a sync)
        sent0 = cloud.dm.stats()["ota"].get("chunk_bytes_sent", 0)
        t_roll = time.time()
        cloud.rollout(release, serial)
        t_first = t_done = None
        doc: dict[str, Any] = {}
        total = -(-size // (a.chunk_kb << 10))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            doc = read_state(state, release)
            n = held(doc)
            if t_first is None and n > 0:
                t_first = time.time()
            if n == total or doc.get("state") in ("verifying", "waiting_window", "refused",
                                                  "failed"):
                t_done = time.time()
                break
            time.sleep(0.01)
        if t_done is None or t_first is None or doc.get("state") in ("refused", "failed"):
            raise SystemExit(f"{name}: download did not finish: {doc}")
        if rate:
            time.sleep(3)  # readings sampled during the download reach the cloud
        sent = cloud.dm.stats()["ota"].get("chunk_bytes_sent", 0) - sent0
        final = read_state(state, release)
    finally:
        stop_process(gw, 30)
    seconds = t_done - t_roll
    out: dict[str, Any] = {
        "payload_bytes": size, "chunks": total, "chunk_bytes": a.chunk_kb << 10,
        "chunks_in_flight": a.in_flight,
        "seconds_offer_to_complete": round(seconds, 2),
        "seconds_first_to_last_chunk": round(t_done - t_first, 2),
        "throughput_MB_s": round(size / seconds / 1e6, 2),
        "agent_network_bytes": final.get("bytes"), "cloud_chunk_bytes_sent": sent,
    }
    if rate:
        # before: the last seconds of the warm-up (telemetry at steady state, no download)
        out["telemetry"] = telemetry(cloud, (t_roll - a.warmup / 2, t_roll), (t_roll, t_done))
    return out


def telemetry(cloud: Cloud, before: tuple[float, float],
              during: tuple[float, float]) -> dict[str, Any]:
    """Telemetry stored and its latency in two time windows.

    Latency per batch: its oldest sample's timestamp -> the batch's durable commit at the cloud
    (``stored_ms``). The ``sim`` push devices emit a burst at once with timestamps spread over
    the next burst interval (up to 90 ms ahead at 10k readings/s), so a per-reading
    ``stored_ms - ts`` would be too low (even negative); the oldest sample of a batch was
    emitted when its timestamp says, and the rest of its burst at the same moment."""
    con = sqlite3.connect(cloud.paths.data_dir / "store.db")
    out: dict[str, Any] = {}
    try:
        for label, (t0, t1) in (("before_download", before), ("during_download", during)):
            rows = con.execute(
                "SELECT b.stored_ms - min(p.ts_ms), count(*) FROM points p JOIN batches b "
                "ON b.gateway = ? AND b.seq = p.seq WHERE p.ts_ms >= ? AND p.ts_ms < ? "
                "GROUP BY p.seq",
                (GW, int(t0 * 1000), int(t1 * 1000))).fetchall()
            lat = [float(r[0]) for r in rows]
            out[label] = {"seconds": round(t1 - t0, 2),
                          "readings_per_s": round(sum(r[1] for r in rows) / max(t1 - t0, 1e-9)),
                          "batches": len(rows),
                          "batch_latency_ms": summary(lat)}
    finally:
        con.close()
    return out


def ceiling(cloud: Cloud, tmp: Path, size: int, chunk: int) -> dict[str, Any]:
    """Raw QoS1 publishes of ``size`` bytes in ``chunk``-sized messages, cloud -> gateway
    identity, over the same broker (gateway listener for the receiver, service listener for the
    sender, like the chunk server), with the gateway's and the cloud's paho client class."""
    ident = tmp / "ceiling-identity"
    provision_gateway(cloud.paths, CEILING_GW, ident, broker=cloud.url)
    topic = f"gw/{CEILING_GW}/down/ceiling"
    n = -(-size // chunk)
    payload = os.urandom(chunk)
    got = threading.Semaphore(0)
    ready = threading.Semaphore(0)

    def client(cid: str, cert: Path, key: Path, ca: Path) -> mqtt.Client:
        c = Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.tls_set_context(pki.make_tls_context(ca, cert, key))
        return c

    rx = client(pki.client_id(CEILING_GW), ident / "gateway.crt", ident / "gateway.key",
                ident / "ca.crt")
    tx = client(pki.random_client_id("edgegw-ingest-bench"), cloud.paths.ingest_crt,
                cloud.paths.ingest_key, cloud.paths.ca_crt)
    rx.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    rx.on_subscribe = lambda *_a: ready.release()
    rx.on_message = lambda *_a: got.release()
    tx.on_connect = lambda *_a: ready.release()
    rx.connect("127.0.0.1", cloud.port)
    tx.connect("127.0.0.1", cloud.broker.service_port)
    for c in (rx, tx):
        c.loop_start()
    for _ in range(2):
        if not ready.acquire(timeout=15):
            raise SystemExit("ceiling clients did not connect")
    out: dict[str, Any] = {"payload_bytes": n * chunk, "messages": n, "message_bytes": chunk}
    try:
        for mode in ("stop_and_wait", "pipelined"):
            t0 = time.perf_counter()
            infos = []
            for _ in range(n):
                info = tx.publish(topic, payload, qos=1)
                if mode == "stop_and_wait":
                    info.wait_for_publish(10)
                else:
                    infos.append(info)
            for _ in range(n):
                if not got.acquire(timeout=60):
                    raise SystemExit(f"ceiling {mode}: messages lost")
            dt = time.perf_counter() - t0
            out[mode] = {"seconds": round(dt, 2), "throughput_MB_s": round(n * chunk / dt / 1e6,
                                                                           2)}
    finally:
        for c in (rx, tx):
            c.disconnect()
            c.loop_stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=int, default=20)
    p.add_argument("--rate", type=int, default=10_000, help="telemetry of the loaded run")
    p.add_argument("--in-flight", type=int, default=4, help="the gateway's chunks_in_flight")
    p.add_argument("--chunk-kb", type=int, default=DEFAULT_CHUNK_SIZE >> 10)
    p.add_argument("--warmup", type=float, default=8.0, help="telemetry before the download")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-bench-ota-"))
    os.chmod(tmp, 0o711)  # Mosquitto drops to its own user: the data dir must be enterable
    cloud = None
    try:
        cloud = Cloud(tmp)
        provision_gateway(cloud.paths, GW, tmp / "identity", broker=cloud.url)
        slots = tmp / "slots"
        slots.mkdir()
        launcher.write_boot(slots, {"committed": edgegw.__version__, "trial": None})
        idle = download_run(cloud, tmp, "idle", 0, a, "90.0.1")
        loaded = download_run(cloud, tmp, "loaded", a.rate, a, "90.0.2")
        ceil = ceiling(cloud, tmp, idle["payload_bytes"], a.chunk_kb << 10)
        print(json.dumps({
            "machine": "loaded 2-core machine (shared with other builds)",
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "download_idle": idle,
            f"download_with_{a.rate}_readings_s": loaded,
            "ceiling_raw_mqtt_qos1_same_broker": ceil,
        }, indent=1))
    finally:
        if cloud is not None:
            cloud.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
