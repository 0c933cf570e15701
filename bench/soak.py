"""Accelerated soak with a fault schedule and exact accounting from the Modbus plant.

    .venv/bin/python bench/soak.py --minutes 12        (make soak; bounded, stops by itself)

Peers (all real, on loopback): a pymodbus plant (tests/modbus/modbus_sim.py) whose holding
register 0 on each unit COUNTS the reads that include it, so every reading the plant served is
identified by its value; the gateway daemon (`edgegw run`, a subprocess) polling 5 units every
200 ms, its state dir on a LazyFS mount (power cuts) whose backing dir is a 48 MiB tmpfs (disk
full); a TCP proxy between gateway and broker (link cuts, blackholes); the managed Mosquitto
(mTLS, ACL; killed and restarted by its supervisor) and the ingest (stopped and started) in
this process. Requires root (mount) and Debian fuse3.

Fault schedule, one event every `--every` seconds, round robin in a shuffled order: broker
kill, link cut, blackhole (15 s), gateway SIGKILL, power cut (SIGKILL + LazyFS cut), disk
full (a filler file leaves less than the outbox floor for 20 s), ingest down (20 s), clock
step back (the gateway's wall clock jumps 40 s back, cumulative, at most 240 s in all: our
certificates are backdated 5 minutes). The gateway runs under Debian's libfaketime
(tests/reliability/fakeclock.py: only CLOCK_REALTIME moves, as with an NTP step; the file
holding the offset is re-read on every call), so the step hits exactly the gateway's process:
its reading timestamps, SQLite, OpenSSL. Stepping the host clock would hit every other process
on this shared machine.

At the end the faults stop, the link is restored, the gateway drains and stops, and every
counter value the plant served is checked: stored exactly once with its value, or inside a gap
record's interval (any reason: unclean_stop covers what a SIGKILL or power cut lost), never
stored twice, never a value the plant did not serve; its stored timestamp is the plant's serve
time shifted by the gateway's clock offset at that instant (batch timestamps); the cloud saw no
sequence conflict (the sequence floor held: no seq reused with other content) and the outbox is
empty after the final drain (everything acked). RSS and open fds of the gateway process
are sampled every 5 s (per run between restarts). Prints JSON; exit 1 on any accounting error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from modbus.simproc import SimServer  # noqa: E402
from reliability.fakeclock import SteppedClock  # noqa: E402
from reliability.powercut import LazyMount  # noqa: E402

from edgegw import pki  # noqa: E402
from edgegw_cloud.broker import ManagedBroker  # noqa: E402
from edgegw_cloud.ingest import Ingest  # noqa: E402
from edgegw_cloud.pki_setup import init_data_dir  # noqa: E402
from edgegw_cloud.registry import Registry  # noqa: E402
from edgegw_cloud.store import CloudStore  # noqa: E402

GW = "soak-gw"
UNITS = (1, 2, 3, 4, 5)
CLOCK_STEP_S = 40  # each clock_back fault
CLOCK_MAX_BACK_S = 240  # total, inside the certificates' 5-minute backdating
STAMP_DELAY_MAX_MS = 5_000  # serve -> poll stamp on a loaded machine (timeout 1 s, retries)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """Threaded TCP relay: ``cut()`` aborts every connection; ``blackhole`` keeps accepting and
    holding connections without relaying a byte (a dead path that does not reset)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.blackhole = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(c)
            if self.blackhole:
                continue  # held open, never answered
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns.add(u)
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                if self.blackhole:
                    continue  # swallow: the peer sees silence
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
            with self.lock:
                self.conns.discard(a)
                self.conns.discard(b)

    def cut(self) -> None:
        with self.lock:
            conns = list(self.conns)
            self.conns.clear()
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                s.close()
            except OSError:
                pass


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = Path(tempfile.mkdtemp(prefix="edgegw-soak-"))
        os.chmod(self.root, 0o711)
        self.events: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.served: list[tuple[int, int, int]] = []
        self.gw: subprocess.Popen[bytes] | None = None
        self.ingest: Ingest | None = None
        self.clock = SteppedClock(self.root / "faketime")
        #: (real wall ms of the step, gateway clock offset in ms from then on)
        self.clock_steps: list[tuple[int, int]] = [(0, 0)]

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.paths = init_data_dir(self.root / "cloud")
        self.broker = ManagedBroker(self.paths, free_port()).start()
        self.proxy = Proxy(self.broker.port)
        self.ingest = Ingest(self.paths, self.broker.service_url).start()
        self.plant = SimServer("--tcp", "0", "--units", ",".join(map(str, UNITS)),
                               log_dir=self.root)
        for u in UNITS:
            self.plant.cmd(op="counter", unit=u)
        self.tmpfs = self.root / "disk"
        self.tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(self.tmpfs)],
                       check=True)
        self.lazy = LazyMount(self.tmpfs)
        self.state = self.lazy.mnt / "state"
        ident = self.root / "identity"
        key = pki.generate_ec_key()
        issuer = pki.Issuer.load(self.paths.ca_crt, self.paths.ca_key)
        with Registry(self.paths.registry_db) as reg:
            cert = reg.provision(GW, key.public_key(), issuer)
        ident.mkdir()
        pki.save_private_key(ident / "gateway.key", key)
        pki.write_public(ident / "gateway.crt", pki.cert_pem(cert).encode())
        pki.write_public(ident / "ca.crt", self.paths.ca_crt.read_bytes())
        kid = self.paths.current_key_id
        pki.write_public(ident / "ingest-ka.pub", self.paths.ingest_ka_pub(kid).read_bytes())
        (ident / "identity.json").write_text(json.dumps(
            {"gateway_id": GW, "key_id": kid, "broker": f"mqtts://127.0.0.1:{self.proxy.port}"}))
        self.cfg = self.root / "gateway.yaml"
        self.cfg.write_text(yaml.safe_dump({
            "gateway": {"id": GW, "state_dir": str(self.state), "log_level": "info"},
            "metrics": {"enabled": False},
            "batch": {"max_age": "250ms"},
            "outbox": {"max_bytes": "16MiB", "min_free_bytes": "4MiB"},
            "uplink": {"enabled": True, "broker": f"mqtts://127.0.0.1:{self.proxy.port}",
                       "identity_dir": str(ident), "ack_timeout": "5s", "backoff_max": "5s",
                       "keepalive": "10s"},
            "devices": [{
                "id": f"unit{u}", "driver": "modbus", "poll": "200ms", "timeout": "1s",
                "options": {"transport": "tcp", "host": "127.0.0.1", "port": self.plant.port,
                            "unit_id": u, "points": [
                                {"name": "counter", "kind": "holding", "address": 0,
                                 "type": "uint16"},
                                {"name": "h1", "kind": "holding", "address": 1,
                                 "type": "uint16"}]},
            } for u in UNITS],
        }))

    def start_gateway(self) -> None:
        log = open(self.root / "gateway.log", "ab")  # noqa: SIM115 - the child keeps it
        self.gw = subprocess.Popen([sys.executable, "-m", "edgegw.cli", "run", "-c",
                                    str(self.cfg)], stdout=log, stderr=subprocess.STDOUT,
                                   env=self.clock.env())
        log.close()
        self.events["gateway_starts"] += 1

    def kill_gateway(self) -> None:
        if self.gw is not None and self.gw.poll() is None:
            self.gw.send_signal(signal.SIGKILL)
            self.gw.wait()

    # ------------------------------------------------------------------ faults
    def fault(self, kind: str) -> None:
        self.events[kind] += 1
        if kind == "broker_kill":
            self.broker.kill(restart=True)
        elif kind == "link_cut":
            self.proxy.cut()
        elif kind == "blackhole":
            self.proxy.blackhole = True
            self.proxy.cut()
            self._wait(15)
            self.proxy.blackhole = False
            self.proxy.cut()
        elif kind == "gateway_sigkill":
            self.kill_gateway()
            self.start_gateway()
        elif kind == "power_cut":
            self.kill_gateway()
            self.lazy.cut()
            self.start_gateway()
        elif kind == "disk_full":
            st = os.statvfs(self.tmpfs)
            free = st.f_bavail * st.f_frsize
            with open(self.tmpfs / "filler", "wb") as f:
                f.write(b"\0" * max(0, free - 2 * 1024 * 1024))
            self._wait(20)
            (self.tmpfs / "filler").unlink()
        elif kind == "clock_back":
            if -self.clock.offset_s + CLOCK_STEP_S > CLOCK_MAX_BACK_S:
                self.events["clock_back_skipped_at_limit"] += 1
                return
            self.clock.step(-CLOCK_STEP_S)
            self.clock_steps.append((time.time_ns() // 1_000_000, self.clock.offset_s * 1000))
        elif kind == "ingest_down":
            assert self.ingest is not None
            self.ingest.stop()
            self._wait(20)
            self.ingest = Ingest(self.paths, self.broker.service_url).start()

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(min(1.0, end - time.monotonic()) if end > time.monotonic() else 0)

    def sample(self) -> None:
        now = time.monotonic()
        if self.samples and now - self.samples[-1]["t"] < 5:
            return
        self.served += [tuple(x) for x in self.plant.cmd(op="served")["served"]]
        if self.gw is None or self.gw.poll() is not None:
            return
        try:
            p = psutil.Process(self.gw.pid)
            self.samples.append({"t": now, "pid": p.pid, "rss": p.memory_info().rss,
                                 "fds": p.num_fds()})
        except psutil.Error:
            pass

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        self.setup()
        self.start_gateway()
        kinds = ["broker_kill", "link_cut", "blackhole", "gateway_sigkill", "power_cut",
                 "disk_full", "ingest_down", "clock_back"]
        end = time.monotonic() + self.args.minutes * 60
        t0 = time.monotonic()
        order: list[str] = []
        while time.monotonic() < end - 60:
            self._wait(self.args.every)
            if not order:
                order = kinds[:]
                self.rng.shuffle(order)
            self.fault(order.pop())
        # quiet end: let the gateway catch up, then a clean stop with a drain
        self._wait(20)
        assert self.gw is not None
        self.gw.send_signal(signal.SIGTERM)
        rc = self.gw.wait(60)
        self.served += [tuple(x) for x in self.plant.cmd(op="served")["served"]]
        # drain what is left with a bounded run (the outbox delivers on its next start)
        subprocess.run([sys.executable, "-m", "edgegw.cli", "run", "-c", str(self.cfg),
                        "--for", "1", "--drain-timeout", "60"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=self.clock.env())
        self.served += [tuple(x) for x in self.plant.cmd(op="served")["served"]]
        result = self.account()
        result |= {"minutes": round((time.monotonic() - t0) / 60, 1), "events": dict(self.events),
                   "gateway_clock_offset_s_at_end": self.clock.offset_s,
                   "final_sigterm_rc": rc, "resources": self.resources()}
        return result

    def account(self) -> dict[str, Any]:
        store = CloudStore(self.paths.store_db, readonly=True)
        try:
            rows = store._db.execute(
                "SELECT device, value, ts_ms FROM readings WHERE gateway=? AND metric='counter'",
                (GW,)).fetchall()
            gaps = store.gaps(GW)
            conflicts = store._db.execute("SELECT count(*) FROM seq_conflicts WHERE gateway=?",
                                          (GW,)).fetchone()[0]
        finally:
            store.close()
        outbox_left = self._outbox_rows()
        stored: dict[tuple[str, int], list[int]] = defaultdict(list)
        not_good = 0
        for dev, value, ts in rows:
            if value is None:  # a failed poll: a quality change (comm_error), no value
                not_good += 1
                continue
            stored[(dev, int(value))].append(int(ts))
        intervals = sorted((g["from_ts_ms"], g["to_ts_ms"], g["reason"]) for g in gaps)
        margin = 1000  # poll ts vs the plant's clock: same host, same wall clock

        steps = self.clock_steps  # starts with (0, 0)

        def offsets(t: int) -> set[int]:
            """The gateway clock's offset (ms) at plant time ``t``; both, within ``margin`` of a
            step (the plant stamps the serve, the gateway the poll, a few ms apart)."""
            i = max(k for k, (at, _) in enumerate(steps) if at <= t)
            out = {steps[i][1]}
            if i > 0 and t - steps[i][0] <= margin:
                out.add(steps[i - 1][1])
            # a poll answered slowly is stamped after a step that came after the serve
            if i + 1 < len(steps) and steps[i + 1][0] - t <= STAMP_DELAY_MAX_MS:
                out.add(steps[i + 1][1])
            return out

        def in_gap(t: int) -> str | None:
            for off in offsets(t):
                for a, b, why in intervals:
                    if a - margin <= t + off <= b + margin:
                        return why
            return None

        once = twice = ts_mismatch = 0
        mismatch_examples: list[tuple[int, int, int, int, list[int]]] = []
        stamp_delays: list[int] = []
        in_gaps: Counter[str] = Counter()
        missing: list[tuple[int, int, int]] = []
        served_keys = set()
        for unit, value, t in self.served:
            key = (f"unit{unit}", value)
            served_keys.add(key)
            n = len(stored.get(key, []))
            if n == 1:
                once += 1
                ts = stored[key][0]
                # the poll is stamped after the response (late on a loaded machine): the check
                # tells the clock offsets apart (40 s steps) and the delay is reported
                late = min(ts - (t + off) for off in offsets(t))
                if not any(abs(ts - (t + off)) <= CLOCK_STEP_S * 1000 // 4
                           for off in offsets(t)):
                    ts_mismatch += 1
                    mismatch_examples.append((unit, value, t, ts, sorted(offsets(t))))
                else:
                    stamp_delays.append(late)
            elif n > 1:
                twice += 1
            else:
                why = in_gap(t)
                if why is not None:
                    in_gaps[why] += 1
                else:
                    missing.append((unit, value, t))
        phantom = [k for k in stored if k not in served_keys]
        return {
            "plant_readings_served": len(self.served),
            "stored_once": once,
            "stored_twice": twice,
            "not_stored_inside_gap_records": dict(in_gaps),
            "lost_outside_any_gap": len(missing),
            "lost_examples": missing[:5],
            "stored_but_never_served": len(phantom),
            "stored_quality_changes_without_value": not_good,
            "stored_ts_not_the_gateway_clock": ts_mismatch,
            "ts_mismatch_examples": mismatch_examples[:5],
            "poll_stamp_after_serve_ms": {
                "p50": sorted(stamp_delays)[len(stamp_delays) // 2] if stamp_delays else None,
                "max": max(stamp_delays) if stamp_delays else None},
            "seq_conflicts": conflicts,
            "outbox_rows_after_drain": outbox_left,
            "gap_records": Counter(g["reason"] for g in gaps),
            "ok": (twice == 0 and not missing and not phantom and ts_mismatch == 0
                   and conflicts == 0 and outbox_left == 0),
        }

    def _outbox_rows(self) -> int | None:
        db = self.state / "outbox.db"
        if not db.exists():
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return int(con.execute("SELECT count(*) FROM batches").fetchone()[0])
        finally:
            con.close()

    def resources(self) -> dict[str, Any]:
        by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for s in self.samples:
            by_pid[s["pid"]].append(s)
        runs = [v for v in by_pid.values() if len(v) >= 6]
        longest = max(runs, key=len) if runs else []
        out: dict[str, Any] = {"gateway_runs_sampled": len(runs)}
        if longest:
            warm = longest[len(longest) // 4]
            out |= {
                "longest_run_samples": len(longest),
                "rss_mib_after_warmup": round(warm["rss"] / 2**20, 1),
                "rss_mib_end": round(longest[-1]["rss"] / 2**20, 1),
                "rss_mib_max": round(max(s["rss"] for s in longest) / 2**20, 1),
                "fds_after_warmup": warm["fds"],
                "fds_end": longest[-1]["fds"],
                "fds_max": max(s["fds"] for s in longest),
            }
        return out

    def close(self) -> None:
        self.kill_gateway()
        if self.ingest is not None:
            self.ingest.stop()
        self.plant.close()
        self.broker.stop()
        self.lazy.close()
        subprocess.run(["umount", "-l", str(self.tmpfs)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=12)
    ap.add_argument("--every", type=float, default=25, help="seconds between faults")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    soak = Soak(args)
    try:
        result = soak.run()
    finally:
        soak.close()
    print(json.dumps(result, indent=1, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
