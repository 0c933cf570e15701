"""End-to-end latency through the real daemon: reading -> rule -> alert -> cloud store.

Edge acceptance 4: an alert travels reading -> rule -> cloud store with p99 < 100 ms while the
gateway also sends 10k readings/s of background telemetry (goal for telemetry: p99 < 500 ms).

Setup, all real and on loopback: `edgegw-cloud` pieces (init, managed Mosquitto with mTLS + ACL,
the ingest), a provisioned gateway identity, and `edgegw run` with
- background: ``sim`` push devices emitting ``--rate`` readings/s in total;
- alarms: ``sim`` devices polled every 100 ms whose sine crosses a rule's threshold each period,
  so each raises and clears an alert once per period.
Latency = the cloud's batch receive time - the reading's (or alert's) own timestamp (both wall
clock, same machine). Prints one JSON document.

    python bench/bench_alert_latency.py [--seconds 30] [--rate 10000] [--alarms 10]
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

import yaml
from benchlib import background_devices, cloud_broker, pct

from edgegw_cloud.enrollment import provision_gateway
from edgegw_cloud.ingest import run_ingest

ROOT = Path(__file__).resolve().parents[1]
GW = "bench-gw"


def config(state: Path, identity: Path, broker: str, rate: int, alarms: int) -> dict[str, Any]:
    devices = background_devices(rate)
    rules = []
    for a in range(alarms):
        devices.append(
            {
                "id": f"alarm{a}",
                "driver": "sim",
                "poll": "100ms",
                "options": {
                    "points": [
                        {
                            "name": "level",
                            "signal": "sine",
                            "period": 2.0 + 0.1 * a,
                            "amplitude": 10.0,
                            "offset": 50.0,
                        }
                    ]
                },
            }
        )
        rules.append(
            {
                "name": f"level-high-{a}",
                "device": f"alarm{a}",
                "when": "level > 55",
                "clear": "level < 45",
                "severity": "critical",
            }
        )
    return {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "warning"},
        "metrics": {"enabled": False},
        "uplink": {"enabled": True, "broker": broker, "identity_dir": str(identity)},
        "devices": devices,
        "rules": rules,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--alarms", type=int, default=10)
    a = p.parse_args()
    # Mosquitto drops to its own user when started as root: the data dir must be enterable.
    tmp = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    os.chmod(tmp, 0o711)
    stop = threading.Event()
    broker = None
    try:
        paths, broker, url = cloud_broker(tmp)
        broker.start()
        ingest = threading.Thread(
            target=run_ingest, args=(paths, broker.service_url, stop), daemon=True
        )
        ingest.start()
        state = tmp / "gw"
        provision_gateway(paths, GW, state / "identity", broker=url)
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(config(state, state / "identity", url, a.rate, a.alarms)))
        gw = subprocess.Popen(
            [sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg), "--drain-timeout", "30"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cpu0 = time.monotonic()
        time.sleep(a.seconds)  # the measurement window of a benchmark, not synchronisation
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        elapsed = time.monotonic() - cpu0
        stop.set()
        ingest.join(30)
        con = sqlite3.connect(paths.data_dir / "store.db")
        # Skip the first 3 s: start-up (imports, TLS handshake) is not steady state.
        since = con.execute("SELECT min(ts_ms) + 3000 FROM readings").fetchone()[0] or 0
        alert_lat = [
            r[0]
            for r in con.execute(
                "SELECT b.received_ms - a.ts_ms FROM alerts a JOIN batches b"
                " ON a.gateway = b.gateway AND a.seq = b.seq WHERE a.ts_ms >= ?",
                (since,),
            )
        ]
        tele_lat = [
            r[0]
            for r in con.execute(
                "SELECT b.received_ms - r.ts_ms FROM readings r JOIN batches b"
                " ON r.gateway = b.gateway AND r.seq = b.seq WHERE r.ts_ms >= ?"
                " AND r.device LIKE 'bg%'",
                (since,),
            )
        ]
        readings = con.execute("SELECT count(*) FROM readings").fetchone()[0]
        con.close()
        print(
            json.dumps(
                {
                    "seconds": round(elapsed, 1),
                    "background_rate_target": a.rate,
                    "readings_stored": readings,
                    "readings_per_s_stored": round(readings / a.seconds),
                    "alerts": len(alert_lat),
                    "alert_latency_ms": {
                        "p50": pct(alert_lat, 0.5),
                        "p99": pct(alert_lat, 0.99),
                        "max": max(alert_lat, default=None),
                        "goal_p99": 100,
                    },
                    "telemetry_latency_ms": {
                        "p50": pct(tele_lat, 0.5),
                        "p99": pct(tele_lat, 0.99),
                        "max": max(tele_lat, default=None),
                        "goal_p99": 500,
                    },
                },
                indent=1,
            )
        )
    finally:
        stop.set()
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
