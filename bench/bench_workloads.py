"""Issue 13's end-to-end workloads through the real daemon at DEFAULT batch/uplink settings.

W1: one Modbus TCP endpoint, unit ids 1..10, 100 holding registers each, all changing every
    100 ms (``bench/register_plant.py``), polled at 1 s (1k readings/s).
W2: the same polled at 100 ms (10k readings/s).
W3: 10 endpoints x 10 unit ids x 100 registers at 100 ms (100k readings/s).
M:  memory (goal 4): 10 endpoints x 10 unit ids x 20 registers at 1 s (100 devices x 20 points).
``--imports`` also prints the import floor: RSS after each import group of the daemon's path,
in a fresh interpreter (RSS includes shared libraries; USS/PSS of the daemon are reported too).

Everything is real and on loopback: the cloud stub (managed Mosquitto with mTLS + ACL, the
ingest in a thread of this process, the SQLite cloud store), a provisioned gateway identity,
``edgegw run`` (durable outbox, sealed, mTLS, end-to-end acks).

Honest timestamps: a reading's ``ts_ms`` is the gateway's wall clock when its poll's response
arrived (the Modbus driver), and the lag is measured at the cloud's DURABLE commit: this bench
wraps ``CloudStore.commit_statuses`` and notes the wall clock after it returned (after COMMIT
and its fsync) for every (gateway, seq) it stored. Lag = that time - ts_ms, over the readings
whose ts_ms falls in the measurement window (after ``--warmup``).
Delivered = readings stored with ts_ms in the window / readings the polls should have produced
in the window (devices x registers x window / period, give or take one poll per device at the
window's edges); a missed poll counts as undelivered.
CPU and memory are the gateway process's own (psutil): CPU % of one core over the window, and
RSS/PSS/USS at the end of it. Timings: loaded 2-core machine (several sessions share it).

    python bench/bench_workloads.py [--workloads W1,W2] [--seconds 20] [--warmup 5]
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

import psutil
import yaml
from benchlib import free_port, pct, time_commits

from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.enrollment import provision_gateway
from edgegw_cloud.ingest import run_ingest, tune_gc
from edgegw_cloud.pki_setup import init_data_dir

ROOT = Path(__file__).resolve().parents[1]
GW = "bench-gw"
WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {"endpoints": 1, "period": 1.0, "goal_lag_p99_ms": 100, "goal_cpu_percent": 2.0},
    "W2": {"endpoints": 1, "period": 0.1, "goal_lag_p99_ms": 100, "goal_cpu_percent": 8.0,
           "goal_rss_mb": 45},
    # W3's plant: the minimal responder (register_plant.py --fast): pymodbus' server cannot
    # answer 1000 requests/s of 100 registers here
    "W3": {"endpoints": 10, "period": 0.1, "goal_cpu_percent": 60.0, "goal_rss_mb": 80,
           "fast_plant": True},
    "M": {"endpoints": 10, "period": 1.0, "registers": 20, "goal_cpu_percent": 100.0,
          "goal_rss_mb": 45},
    # the fixed cost of a running gateway (timers, housekeeping, the uplink's loop): one device,
    # one register, polled at 1 s; no goal of its own, it explains W1's
    "IDLE": {"endpoints": 1, "units": 1, "period": 1.0, "registers": 1,
             "goal_cpu_percent": 100.0},
    # W1's poll and batch rate (10 polls, 10 round-seal batches per second) with one register
    # per device: (R10 - IDLE) / 9 is the cost of one poll + one batch, without W1's readings
    "R10": {"endpoints": 1, "period": 1.0, "registers": 1, "goal_cpu_percent": 100.0},
}
#: the import group after which every third-party dependency of the daemon is in (and used)
DEPS_DONE = "pydantic model machinery (one one-field model)"
IMPORT_GROUPS = [
    ("asyncio + ssl (OpenSSL)", "asyncio, ssl"),
    ("sqlite3", "sqlite3"),
    ("pydantic", "pydantic"),
    ("yaml", "yaml"),
    ("cryptography AESGCM", "cryptography.hazmat.primitives.ciphers.aead"),
    ("cryptography x509", "cryptography.x509"),
    ("paho-mqtt", "paho.mqtt.client"),
    ("snappy (cramjam)", "snappy"),
    ("pymodbus client", "pymodbus.client"),
    # the first model class builds pydantic's schema machinery and runs its plugin loader
    # (importlib.metadata): a cost of using pydantic at all, not of edgegw's models
    (DEPS_DONE, "exec:from pydantic import BaseModel\nclass _One(BaseModel):\n    x: int = 0\n"
     "_One(x=1)"),
    ("edgegw.config (models, edge config)", "edgegw.config"),
    ("edgegw runtime (supervisor)", "edgegw.runtime.supervisor"),
    ("edgegw run command", "edgegw.commands.run"),
    ("modbus driver", "edgegw.drivers.modbus"),
]
_IMPORT_PROBE = """
import json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
out = [('python', round(rss(), 1))]
for label, mods in json.loads(sys.argv[1]):
    if mods.startswith('exec:'):
        exec(mods[5:], {})
        mods = ''
    for m in filter(None, mods.split(', ')):
        __import__(m)
    out.append((label, round(rss(), 1)))
out.append(('modules', len(sys.modules)))
print(json.dumps(out))
"""


def import_floor() -> dict[str, Any]:
    """RSS (MB) after each import group, cumulative, in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(IMPORT_GROUPS)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    rows = json.loads(res.stdout)
    out: dict[str, Any] = {}
    prev = 0.0
    for label, value in rows:
        if label == "modules":
            out["modules_imported"] = value
            continue
        out[label] = {"rss_mb": value, "added_mb": round(value - prev, 1)}
        prev = value
    out["dependencies_rss_mb"] = out[DEPS_DONE]["rss_mb"]
    return out

UNITS = 10
REGISTERS = 100

COMMITTED = time_commits()
PROFILE_GIL = False  # --profile-gil
CALLGRIND = False  # --callgrind


def callgrind_window(pid: int, out: Path, on: bool) -> dict[str, int] | None:
    """Switch callgrind's instrumentation of the gateway on (window start), or dump and switch
    it off (window end): returns the instructions executed in the window per thread (callgrind
    numbers the threads in start order: 1 = the main thread / event loop) and "total"."""
    if on:
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                       capture_output=True, timeout=120)
        return None
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True,
                   timeout=300)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True,
                   timeout=120)
    per_thread: dict[str, int] = {}
    for dump in out.parent.glob(out.name + ".*"):  # one dump: NAME.1-01, NAME.1-02, ...
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                per_thread[f"thread {dump.name.rsplit('-', 1)[-1]}"] = int(line.split()[1])
                break
    if not per_thread:
        return None
    return {"total": sum(per_thread.values()), **dict(sorted(per_thread.items()))}


def rss_kinds(pid: int) -> dict[str, float]:
    """RssAnon / RssFile / RssShmem of a process from /proc (MB)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile", "RssShmem")):
                name, value = line.split(":", 1)
                out[name] = round(int(value.split()[0]) / 1024, 1)
    return out


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def gateway_config(state: Path, broker: str, ports: list[int], period: float, registers: int,
                   extra_batch: dict[str, Any], units: int = UNITS) -> dict[str, Any]:
    devices = [
        {
            "id": f"e{e}-u{u}",
            "driver": "modbus",
            "poll": f"{int(period * 1000)}ms",
            "options": {
                "transport": "tcp", "host": "127.0.0.1", "port": port, "unit_id": u,
                "points": [{"name": f"r{a}", "kind": "holding", "address": a, "type": "uint16"}
                           for a in range(registers)],
            },
        }
        for e, port in enumerate(ports)
        for u in range(1, units + 1)
    ]
    cfg: dict[str, Any] = {
        "gateway": {"id": GW, "state_dir": str(state), "log_level": "warning"},
        # the metrics endpoint's default port is fixed (9108): off, as other runs share the host
        "metrics": {"enabled": False},
        "uplink": {"enabled": True, "broker": broker, "identity_dir": str(state / "identity")},
        "devices": devices,
    }
    if extra_batch:
        cfg["batch"] = extra_batch
    return cfg


def profile_summary(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    total = 0
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_s)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def share(d: dict[str, int]) -> dict[str, float]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return {k: round(100 * v / total, 1) for k, v in best}

    return {"samples": total, "self_percent": share(self_n), "inclusive_percent": share(incl)}


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name (the roots of its stack), from one ``py-spy
    dump`` (empty without py-spy in the venv: threads are then named by their id)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return {}
    try:
        res = subprocess.run([str(spy), "dump", "--json", "--nonblocking", "-p", str(pid)],
                             capture_output=True, text=True, timeout=30, check=True)
        threads = json.loads(res.stdout)
    except (subprocess.SubprocessError, ValueError):
        return {}
    out: dict[int, str] = {}
    for t in threads:
        frames = [f.get("name", "?") for f in t.get("frames", [])]
        # the innermost frames that say what the thread is for
        hint = next((f for f in reversed(frames) if f in {
            "_worker", "_thread_main", "run_forever", "_loop"}), frames[-1] if frames else "")
        out[int(t.get("os_thread_id") or t.get("thread_id") or 0)] = (
            f"{t.get('thread_name') or '?'} ({hint})")
    return out


def thread_cpu(th0: dict[int, Any], th1: dict[int, Any], names: dict[int, str],
               window_s: float) -> dict[str, float]:
    """CPU % of one core per thread of the gateway over the window (user + system)."""
    out: dict[str, float] = {}
    for tid, t in th1.items():
        before = th0.get(tid)
        used = (t.user_time + t.system_time) - (
            (before.user_time + before.system_time) if before is not None else 0.0)
        if used > 0:
            name = names.get(tid, f"tid {tid}")
            out[name] = round(out.get(name, 0.0) + 100 * used / window_s, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def scheduler_summary(status: Path) -> dict[str, Any]:
    """Polls, skipped slots and lateness from the gateway's status.json (written every few s)."""
    try:
        st = json.loads(status.read_text())["stats"]
    except (OSError, ValueError, KeyError):
        return {}
    polls = skipped = failures = 0
    late_p99 = 0.0
    for bus in st.get("scheduler", {}).get("buses", {}).values():
        for d in bus.get("devices", {}).values():
            polls += int(d.get("polls", 0))
            failures += int(d.get("failures", 0))
            skipped += int(d.get("skipped_slots", 0))
            late_p99 = max(late_p99, float(d.get("lateness_p99_s", 0.0)))
    return {"polls": polls, "poll_failures": failures, "skipped_slots": skipped,
            "worst_device_lateness_p99_ms": round(late_p99 * 1000, 1)}


def run_workload(name: str, seconds: float, warmup: float,
                 extra_batch: dict[str, Any], profile: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    extra_env = extra_env or {}
    spec = WORKLOADS[name]
    registers = spec.get("registers", REGISTERS)
    units = spec.get("units", UNITS)
    tmp = Path(tempfile.mkdtemp(prefix=f"edgegw-{name}-"))
    os.chmod(tmp, 0o711)  # Mosquitto drops to its own user: the data dir must be enterable
    stop = threading.Event()
    broker = plant = gw = None
    COMMITTED.clear()
    try:
        ports_file = tmp / "ports.json"
        plant = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "register_plant.py"), "--endpoints",
             str(spec["endpoints"]), "--units", str(units), "--registers", str(registers),
             "--ports-file", str(ports_file), *(["--fast"] if spec.get("fast_plant") else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        paths = init_data_dir(tmp / "cloud")
        port = free_port()
        broker = ManagedBroker(paths, port)
        broker.start()
        url = f"mqtts://127.0.0.1:{port}"
        tune_gc()  # as `edgegw-cloud serve` does when the ingest runs in its process
        ingest = threading.Thread(target=run_ingest, args=(paths, broker.service_url, stop),
                                  daemon=True)
        ingest.start()
        state = tmp / "gw"
        provision_gateway(paths, GW, state / "identity", broker=url)
        wait_file(ports_file, 30)
        ports = json.loads(ports_file.read_text())["ports"]
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(gateway_config(state, url, ports, spec["period"],
                                                     registers, extra_batch, units)))
        # with --profile DIR the dump stays there (callgrind_annotate DIR/W.callgrind.*)
        cg_out = (profile if profile is not None else tmp) / f"{name}.callgrind"
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
        wrap = (["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                 f"--callgrind-out-file={cg_out}"] if CALLGRIND else [])
        gw = subprocess.Popen(
            [*wrap, sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg),
             "--drain-timeout", "30"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=os.environ | extra_env)
        proc = psutil.Process(gw.pid)
        # the window starts once the gateway delivers (start-up under load can take long)...
        deadline = time.monotonic() + 120
        while not COMMITTED:
            if time.monotonic() > deadline or gw.poll() is not None:
                raise RuntimeError(f"{name}: the gateway delivered nothing within 120 s")
            time.sleep(0.1)
        time.sleep(warmup)  # ...plus a warm-up (caches, the series dictionary, TCP windows)
        t_start = time.time_ns() // 1_000_000
        spy = None
        if profile is not None and not CALLGRIND:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(gw.pid), "-d",
                 str(int(seconds)), "-r", "100", "-f", "raw", "-o",
                 str(profile / f"{name}.txt"), *(["--gil"] if PROFILE_GIL else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        polls0 = scheduler_summary(state / "status.json").get("polls", 0)
        if CALLGRIND:
            callgrind_window(gw.pid, cg_out, on=True)
        c0, th0 = proc.cpu_times(), {t.id: t for t in proc.threads()}
        time.sleep(seconds)  # the measurement window
        c1, th1 = proc.cpu_times(), {t.id: t for t in proc.threads()}
        counted = callgrind_window(gw.pid, cg_out, on=False) if CALLGRIND else None
        instructions = counted["total"] if counted else None
        polls1 = scheduler_summary(state / "status.json").get("polls", 0)
        names = thread_names(gw.pid)
        if spy is not None:
            spy.wait(60)
        t_end = time.time_ns() // 1_000_000
        mem = proc.memory_full_info()
        rss_split = rss_kinds(gw.pid)
        sched = scheduler_summary(state / "status.json")
        gw.send_signal(signal.SIGTERM)
        gw.wait(90)
        stop.set()
        ingest.join(30)
        con = sqlite3.connect(paths.data_dir / "store.db")
        rows = con.execute("SELECT seq, ts_ms FROM readings WHERE gateway = ? AND ts_ms >= ?"
                           " AND ts_ms < ?", (GW, t_start, t_end)).fetchall()
        received = dict(con.execute("SELECT seq, received_ms FROM batches WHERE gateway = ?",
                                    (GW,)).fetchall())
        stored_total = con.execute("SELECT coalesce(sum(readings), 0) FROM batches"
                                   " WHERE gateway = ?", (GW,)).fetchone()[0]
        try:  # written again at the clean stop: everything the gateway sealed, whole run
            sealed_total = json.loads((state / "status.json").read_text())["stats"][
                "pipeline"]["readings_sealed"]
        except (OSError, ValueError, KeyError):
            sealed_total = None
        con.close()
        lags = [COMMITTED[(GW, seq)] - ts for seq, ts in rows if (GW, seq) in COMMITTED]
        # the split: reading -> the ingest's receive (gateway + broker), receive -> commit (cloud)
        to_recv = [received[seq] - ts for seq, ts in rows if seq in received]
        in_cloud = [COMMITTED[(GW, seq)] - received[seq] for seq in {s for s, _ in rows}
                    if seq in received and (GW, seq) in COMMITTED]
        devices = spec["endpoints"] * units
        polls = round(devices * (t_end - t_start) / 1000 / spec["period"])
        expected = polls * registers
        cpu = 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / ((t_end - t_start) / 1000)
        res: dict[str, Any] = {
            "workload": name,
            "devices": devices,
            "registers_per_device": registers,
            "poll_period_s": spec["period"],
            "window_s": round((t_end - t_start) / 1000, 1),
            "readings_expected": expected,
            "readings_stored": len(rows),
            # whole run: sealed by the gateway vs stored in the cloud (lost = the difference)
            "run_readings_sealed_by_gateway": sealed_total,
            "run_readings_stored_in_cloud": stored_total,
            "delivered_percent": round(100 * len(rows) / expected, 1) if expected else None,
            "cpu_percent_one_core": round(cpu, 1),
            "rss_mb": round(mem.rss / 2**20, 1),
            "pss_mb": round(mem.pss / 2**20, 1),
            "uss_mb": round(mem.uss / 2**20, 1),
            # RSS = anonymous (the process's own objects) + file-backed (shared libraries'
            # pages that are mapped and cached: depends on the page cache, not on the process)
            "rss_anon_mb": rss_split.get("RssAnon"),
            "rss_file_mb": rss_split.get("RssFile"),
            "cpu_percent_by_thread": thread_cpu(th0, th1, names, (t_end - t_start) / 1000),
            "cpu_percent_user_system": [
                round(100 * (c1.user - c0.user) / ((t_end - t_start) / 1000), 1),
                round(100 * (c1.system - c0.system) / ((t_end - t_start) / 1000), 1)],
            "lag_ms_at_durable_cloud_commit": {
                "mean": round(sum(lags) / len(lags), 1) if lags else None,
                "p50": pct(lags, 0.5), "p99": pct(lags, 0.99), "max": max(lags, default=None),
            },
            "lag_ms_to_ingest_receive": {"p50": pct(to_recv, 0.5), "p99": pct(to_recv, 0.99)},
            "batch_ms_receive_to_commit": {"p50": pct(in_cloud, 0.5),
                                           "p99": pct(in_cloud, 0.99)},
            "batches_stored": len({seq for seq, _ in rows}),
            "scheduler": sched,
            "batch_settings": extra_batch or "defaults",
            # --callgrind: instructions of the gateway (all threads) in the window; under
            # valgrind the gateway runs ~50x slower, so only the per-second figure of a light
            # load (IDLE) or the per-poll figure means anything (polls from status.json, +-1 s)
            **({"callgrind": {
                "instructions": instructions,
                "instructions_by_thread": counted,
                "per_second": round(instructions / ((t_end - t_start) / 1000))
                if instructions else None,
                "polls_in_window": polls1 - polls0,
                "per_poll": round(instructions / (polls1 - polls0))
                if instructions and polls1 > polls0 else None}} if CALLGRIND else {}),
            "gateway_env": extra_env or None,
        }
        goals: dict[str, Any] = {}
        if "goal_lag_p99_ms" in spec:
            p99 = res["lag_ms_at_durable_cloud_commit"]["p99"]
            goals["lag_p99_ms"] = {"goal": spec["goal_lag_p99_ms"],
                                   "met": p99 is not None and p99 <= spec["goal_lag_p99_ms"]}
        goals["cpu_percent"] = {"goal": spec["goal_cpu_percent"],
                                "met": cpu <= spec["goal_cpu_percent"]}
        if "goal_rss_mb" in spec:
            goals["rss_mb"] = {"goal": spec["goal_rss_mb"], "met": res["rss_mb"] <= spec[
                "goal_rss_mb"]}
        # the window's edges cut polls: one poll per device of slack
        goals["delivered_100_percent"] = {"met": len(rows) >= expected - devices * registers}
        res["goals"] = goals
        if profile is not None and (profile / f"{name}.txt").exists():
            res["profile"] = profile_summary(profile / f"{name}.txt")
        return res
    finally:
        stop.set()
        for p in (gw, plant):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", default="W1,W2")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--batch", default="", help="batch settings as YAML flow, e.g. "
                   "'{max_age: 250ms, quiet: 0}' (default: the defaults)")
    p.add_argument("--profile", type=Path, default=None,
                   help="py-spy the gateway during the window; collapsed stacks to DIR/W.txt")
    p.add_argument("--profile-gil", action="store_true",
                   help="profile only samples holding the GIL (py-spy --gil): Python work, "
                   "without threads waiting for the GIL, a lock or a system call")
    p.add_argument("--imports", action="store_true", help="also print the import floor")
    p.add_argument("--callgrind", action="store_true",
                   help="run the gateway under valgrind's callgrind and count its instructions "
                   "in the window (load-independent; IDLE is the workload it can keep up with)")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    a = p.parse_args()
    global PROFILE_GIL, CALLGRIND
    PROFILE_GIL = a.profile_gil
    CALLGRIND = a.callgrind
    env = dict(e.split("=", 1) for e in a.env)
    extra = yaml.safe_load(a.batch) if a.batch else {}
    out = {"machine": f"{os.cpu_count()} cores, loaded (timings: loaded 2-core machine)",
           "load_avg": [round(x, 1) for x in os.getloadavg()],
           "results": [run_workload(w.strip(), a.seconds, a.warmup, extra, a.profile, env)
                       for w in a.workloads.split(",") if w.strip()]}
    if a.imports:
        out["import_floor"] = import_floor()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
