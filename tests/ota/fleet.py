"""The OTA end-to-end harness (issue 11, acceptance 1-4): a real cloud, real gateways, a real plant.

Nothing here is a mock:

- ``OtaCloud``: ``edgegw-cloud init`` + ``edgegw-cloud serve`` in a subprocess (managed Mosquitto
  with the mTLS + ACL config, enrollment, ingest, the DeviceManager loop that runs the OTA
  engine). The test drives it like an operator, through the ``edgegw-cloud`` CLI (``ota
  publish|rollout|status|halt|resume|cancel``) in separate processes.
- ``Plant``: ``bench/plant.py`` (real pymodbus TCP servers, one per gateway) of the ``stepping``
  kind: register r of a device steps by ``1 + r % 7`` on every read, so the value of a stored
  reading names the plant read it came from, and ``Plant.reads()`` counts the reads the plant
  served per device. ``delivered_once`` checks the cloud store against that count: every read
  delivered, none twice, none invented - counted from the plant, not from the outbox.
- ``OtaGateway``: one gateway with its own state dir, enrolled with the cloud by ``edgegw enroll``
  and a one-time token, its own slots dir whose first slot is this checkout's code
  (``helpers.fake_slot``), started through the real launcher (``edgegw-launch``) under
  ``helpers.ServiceSim`` (systemd's role: Type=notify, WatchdogSec, Restart=always, cgroup kill),
  polling its own Modbus device of the plant. Its MQTT traffic goes through ``NetSwitch``, a TCP
  relay the test can cut and restore: the gateway's network cable.

Software releases are this checkout built as a wheel with the version bumped
(``helpers.build_wheel``; unpatched wheels once per session) and published as a test bundle
(``helpers.make_bundle``); the gateways install them in the slot test mode ``deps_from``
(``EDGEGW_OTA_DEPS_FROM``: the slot venv reuses the test venv's site-packages and installs only
the new edgegw wheel; see gateway/ota/slots.py).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

import edgegw
from edgegw.ota import launcher
from edgegw_cloud import cli as cloud_cli
from edgegw_cloud.store import CloudStore
from tests.ota.helpers import REPO, SITE_PACKAGES, ServiceSim, build_wheel, fake_slot, make_bundle
from tests.runtime.helpers import free_port, poll_until

BIN = Path(sys.executable).parent
LAUNCHER = Path(launcher.__file__)
BASE = edgegw.__version__  # the version every gateway runs first (this checkout)
#: env var naming the site-packages a test slot reuses (slot test mode, see slots.py)
DEPS_ENV = "EDGEGW_OTA_DEPS_FROM"
REGISTERS = 2  # per plant device: one poll = one read request of 2 contiguous registers
DEVICE = "plc"


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A 0711 directory of our own: Mosquitto, started as root, drops to user ``mosquitto``,
    which cannot traverse pytest's 0700 /tmp/pytest-of-root. Removed afterwards unless
    EDGEGW_KEEP_TEST_DIRS is set (to read the logs of a failed run)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        if not os.environ.get("EDGEGW_KEEP_TEST_DIRS"):
            shutil.rmtree(d, ignore_errors=True)


def run(argv: list[str], *, timeout: float = 60, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                       env=env)
    if check:
        assert p.returncode == 0, f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


# ---------------------------------------------------------------------------------- network


class NetSwitch:
    """A TCP relay from one gateway to the broker that the test can cut (its network cable).

    ``cut()`` closes every relayed connection and refuses new ones until ``restore()``: to the
    gateway it looks like a link that went down (its connects fail, its session drops)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.up = threading.Event()
        self.up.set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True, name=f"net-{self.port}").start()

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.up.is_set():
                conn.close()
                continue
            try:
                peer = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                conn.close()
                continue
            peer.settimeout(None)
            for s in (conn, peer):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns |= {conn, peer}
                self.connections += 1
            for a, b in ((conn, peer), (peer, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._drop(s)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.server.close()


# ---------------------------------------------------------------------------------- plant


class Plant:
    """bench/plant.py (stepping): one pymodbus TCP server per device, reads counted per device."""

    def __init__(self, devices: int, log_dir: Path) -> None:
        self._err = (log_dir / "plant.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "plant.py"), "--devices", str(devices),
             "--registers", str(REGISTERS), "--kind", "stepping"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)
        first = self._line(20)
        self.ports: list[int] = list(first["ports"])
        self.bases: list[list[int]] = list(first["bases"])  # per device, per register

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"plant silent for {timeout}s (see {self._err.name})"
        line = self.proc.stdout.readline()
        assert line, f"plant exited ({self.proc.poll()}), see {self._err.name}"
        return json.loads(line)  # type: ignore[no-any-return]

    def reads(self) -> list[int]:
        """Register-block reads served so far, per device (in port order)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return list(self._line(10)["per_device"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def modbus_device(port: int, poll: str = "200ms", address: int = 0) -> dict[str, Any]:
    """The gateway's device: REGISTERS contiguous holding registers (one read per poll)."""
    return {
        "id": DEVICE, "driver": "modbus", "poll": poll, "timeout": "1s",
        "options": {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
                    "points": [{"name": f"r{r}", "kind": "holding", "address": address + r,
                                "type": "uint16"} for r in range(REGISTERS)]},
    }


# ---------------------------------------------------------------------------------- cloud


class OtaCloud:
    """``edgegw-cloud serve`` in a subprocess; the operator's CLI against the same data dir."""

    def __init__(self, root: Path, *extra: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)  # mosquitto (dropped to its own user) must reach the data dir
        self.data = root / "cloud"
        self.port = free_port()
        self.enroll_port = free_port()
        self.cli("init")
        self.log = root / "serve.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [str(BIN / "edgegw-cloud"), "serve", "--data-dir", str(self.data), "--port",
                 str(self.port), "--enroll-port", str(self.enroll_port), *extra],
                stdout=subprocess.PIPE, stderr=err, text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.startswith("serving "), first + self.log.read_text()
        self.proc.stdout.readline()  # enrollment URL

    @property
    def enroll_broker(self) -> str:
        return f"mqtts://127.0.0.1:{self.enroll_port}"

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``edgegw-cloud ARGV... --data-dir DATA``: the operator's command, run in this process
        (``edgegw_cloud.cli.main``, the console script's entry point: same parsing, same code;
        a new interpreter per call costs seconds of imports on the loaded test machine)."""
        args = [*argv, "--data-dir", str(self.data)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cloud_cli.main(args)
        done = subprocess.CompletedProcess(["edgegw-cloud", *args], rc, out.getvalue(),
                                           err.getvalue())
        if check:
            assert rc == 0, f"edgegw-cloud {args} failed ({rc}):\n{done.stdout}\n{done.stderr}"
        return done

    def cli_process(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """The same through the installed ``edgegw-cloud`` command (a new process)."""
        return run([str(BIN / "edgegw-cloud"), *argv, "--data-dir", str(self.data)])

    # ------------------------------------------------------------------ releases, rollouts
    def publish_software(self, bundle: Path, *opts: str) -> dict[str, Any]:
        out = self.cli("ota", "publish", "--kind", "software", "--bundle", str(bundle), *opts)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def rollout(self, release: str, *opts: str) -> int:
        """``ota rollout RELEASE OPTS --json``; returns the rollout id."""
        return int(json.loads(self.cli("ota", "rollout", release, *opts, "--json").stdout)["id"])

    def status(self, rollout: int) -> dict[str, Any]:
        """``ota status ROLLOUT --json``: the rollout and a row per target gateway."""
        out = self.cli("ota", "status", str(rollout), "--json").stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def gateway_states(self, rollout: int) -> dict[str, dict[str, Any]]:
        """gateway id -> its row of ``ota status --json`` (state, reason, bytes, offers ...)."""
        return {str(t["gateway"]): t for t in self.status(rollout)["targets"]}

    def wait_states(self, rollout: int, want: Callable[[dict[str, dict[str, Any]]], bool],
                    timeout: float, what: str) -> dict[str, dict[str, Any]]:
        last: list[Any] = [None]

        def check() -> dict[str, dict[str, Any]] | None:
            last[0] = self.gateway_states(rollout)
            return last[0] if want(last[0]) else None

        try:
            return poll_until(check, timeout, what, interval=0.3)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {last[0]}") from None

    # ------------------------------------------------------------------ store
    def values(self, gw: str, metric: str) -> list[int]:
        """The stored values of one metric of a gateway's plant device, in reading-time order."""
        store = CloudStore(self.data / "store.db", readonly=True)
        try:
            return [int(r.value) for r in  # type: ignore[arg-type]
                    store.readings(gateway=gw, device=DEVICE, metric=metric)]
        finally:
            store.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------------- gateway


class OtaGateway:
    """One gateway: own state dir and slots dir, enrolled, run by the launcher under ServiceSim."""

    def __init__(self, cloud: OtaCloud, gw_id: str, root: Path, device: dict[str, Any], *,
                 ota: dict[str, Any] | None = None, watchdog_sec: float = 3.0) -> None:
        self.id = gw_id
        self.cloud = cloud
        self.root = root / gw_id
        self.root.mkdir(parents=True)
        os.chmod(self.root, 0o755)
        self.state = self.root / "state"
        self.slots = self.root / "slots"
        self.config = self.root / "gateway.yaml"
        self.net = NetSwitch(cloud.port)
        self.watchdog_sec = watchdog_sec
        doc: dict[str, Any] = {
            "gateway": {"id": gw_id, "state_dir": str(self.state), "log_level": "info"},
            "metrics": {"enabled": False},
            "batch": {"max_age": "100ms"},
            "uplink": {"enabled": True, "broker": self.net.url,
                       "enroll_broker": cloud.enroll_broker, "backoff_min": "0.1s",
                       "backoff_max": "1s", "ack_timeout": "3s"},
            "devices": [device],
        }
        if ota is not None:
            doc["ota"] = ota
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        token = cloud.cli("token", "create", gw_id, "--ttl", "10m").stdout.strip()
        # enrolling runs meanwhile (several gateways enroll in parallel); start() waits for it
        self._enroll: subprocess.Popen[str] | None = subprocess.Popen(
            [str(BIN / "edgegw"), "enroll", "-c", str(self.config), f"--token={token}",
             "--bootstrap-dir", str(cloud.data / "pki")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        fake_slot(self.slots, BASE)
        launcher.write_boot(self.slots, {"committed": BASE, "trial": None})
        launcher.point_current(self.slots, BASE)
        self.svc: ServiceSim | None = None

    # ------------------------------------------------------------------ service
    def wait_enrolled(self) -> None:
        if self._enroll is not None:
            out, _ = self._enroll.communicate(timeout=60)
            assert self._enroll.returncode == 0, f"{self.id}: enroll failed: {out}"
            self._enroll = None

    def start(self) -> ServiceSim:
        self.wait_enrolled()
        argv = [sys.executable, str(LAUNCHER), "--slots", str(self.slots), "run", "-c",
                str(self.config)]
        self.svc = ServiceSim(argv, self.root, env={DEPS_ENV: str(SITE_PACKAGES)},
                              watchdog_sec=self.watchdog_sec).start()
        return self.svc

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
            self.svc = None

    def kill(self) -> None:
        """SIGKILL the running daemon (the launcher exec'd it: same pid); ServiceSim restarts."""
        assert self.svc is not None
        self.svc.kill_main(signal.SIGKILL)

    def wait_ready(self, n: int = 1, timeout: float = 60) -> None:
        svc = self.svc
        assert svc is not None
        poll_until(lambda: svc.readies >= n, timeout,
                   f"{self.id}: READY #{n} (log tail: {self.log_tail()})", interval=0.1)

    def serving(self, min_starts: int = 1) -> bool:
        """Started at least ``min_starts`` times and the latest start has sent READY=1."""
        svc = self.svc
        if svc is None or svc.starts < min_starts:
            return False
        with svc._lock:
            kinds = [k for k, _ in svc.events]
        last = len(kinds) - 1 - kinds[::-1].index("start") if "start" in kinds else -1
        return last >= 0 and "ready" in kinds[last:] and "exit" not in kinds[last:]

    def wait_serving(self, min_starts: int = 1, timeout: float = 60) -> None:
        poll_until(lambda: self.serving(min_starts), timeout,
                   f"{self.id}: start #{min_starts}+ serving (log tail: {self.log_tail()})",
                   interval=0.1)

    # ------------------------------------------------------------------ what it has on disk
    def boot(self) -> dict[str, Any]:
        return launcher.read_boot(self.slots)

    def current_version(self) -> str | None:
        return launcher.current_version(self.slots)

    def slot_names(self) -> set[str]:
        return {p.name for p in self.slots.iterdir()}

    def ota_dir(self) -> Path:
        return self.state / "ota"

    def release_dirs(self) -> set[str]:
        d = self.ota_dir()
        return {p.name for p in d.iterdir() if p.is_dir()} if d.exists() else set()

    def release_state(self, release: str) -> dict[str, Any]:
        """The agent's persisted state of a release (``state_dir/ota/<release>/state.json``)."""
        try:
            doc = json.loads((self.ota_dir() / release / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def processes(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every process of the service's process group (its "cgroup")."""
        svc = self.svc
        if svc is None or svc.proc is None:
            return []
        pgid = svc.proc.pid
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.getpgid(int(d.name)) != pgid:
                    continue
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except (OSError, ProcessLookupError):
                continue
            out.append((int(d.name), [a.decode(errors="replace") for a in argv if a]))
        return out

    def daemon_slot(self) -> str | None:
        """The slot the running daemon was started from (None: the first slot, this checkout).

        A slot installed from a release runs its venv's own ``bin/edgegw`` script, whose
        interpreter line is the slot's python; the first slot (``fake_slot``) runs the test
        venv's python on this checkout."""
        svc = self.svc
        if svc is None or svc.proc is None:
            return None
        try:
            argv = (Path("/proc") / str(svc.proc.pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        prefix = f"{self.slots}/"
        for raw in argv:
            a = raw.decode(errors="replace")
            if a.startswith(prefix):
                return a[len(prefix):].split("/")[0]
        return None

    def stats(self) -> dict[str, Any]:
        """The daemon's stats from its status file (written once a second)."""
        try:
            return dict(json.loads((self.state / "status.json").read_text())["stats"])
        except (FileNotFoundError, ValueError, KeyError):
            return {}

    def log_tail(self, n: int = 3000) -> str:
        log = self.root / "service.log"
        return log.read_text(errors="replace")[-n:] if log.exists() else ""

    def close(self) -> None:
        try:
            if self._enroll is not None:
                self._enroll.kill()
                self._enroll.communicate()
            self.stop()
        finally:
            self.net.close()


def close_all(gateways: list[OtaGateway]) -> None:
    """Stop every gateway's service at once (each daemon takes a while to stop cleanly)."""
    for g in gateways:
        if g.svc is not None:
            g.svc.request_stop()
    for g in gateways:
        g.close()


# ---------------------------------------------------------------------------------- releases


def software_release(cloud: OtaCloud, workdir: Path, version: str,
                     patch: Callable[[Path], None] | None = None, *opts: str) -> dict[str, Any]:
    """Build this checkout as edgegw ``version`` (optionally patched), publish it: the summary."""
    wheel = build_wheel(workdir / "build", version, patch)
    bundle = make_bundle(workdir / f"bundle-{version}-{os.urandom(3).hex()}", wheel, version)
    return cloud.publish_software(bundle, *opts)


def delivered_once(cloud: OtaCloud, plant: Plant, gateways: list[OtaGateway],
                   timeout: float = 60) -> dict[str, int]:
    """Every plant read of each gateway's device is stored at the cloud exactly once.

    A stored value names the read it came from (stepping plant): in reading-time order the
    values of register r must start at the plant's base (the first read) and step by exactly
    ``1 + r % 7`` (mod 2^16): a step of 0 is a duplicate, a larger one a lost reading. Every read
    the plant served up to now must arrive (the gateways keep polling, so the store catches up
    with the snapshot and overtakes it). Returns the snapshot: reads served per gateway."""
    served = plant.reads()
    counts: dict[str, int] = {}
    for i, gw in enumerate(gateways):
        want = served[i]
        poll_until(lambda gw=gw, want=want: len(cloud.values(gw.id, "r0")) >= want, timeout,
                   f"{gw.id}: the {want} readings the plant served stored at the cloud")
        for r in range(REGISTERS):
            values = cloud.values(gw.id, f"r{r}")
            assert values[0] == plant.bases[i][r], (
                f"{gw.id} r{r}: the plant's first read ({plant.bases[i][r]}) is not the first "
                f"stored reading ({values[:3]}...)")
            step = 1 + r % 7
            bad = [(k, a, b) for k, (a, b) in enumerate(itertools.pairwise(values))
                   if (b - a) & 0xFFFF != step]
            assert not bad, (f"{gw.id} r{r}: {len(bad)} breaks in the plant's sequence "
                             f"(index, value, next): {bad[:10]}")
        counts[gw.id] = want
    return counts
