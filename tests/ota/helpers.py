"""OTA test helpers: build a version-bumped edgegw wheel, and ServiceSim, a stand-in for systemd.

ServiceSim is NOT a mock of the gateway: it runs the real launcher and the real daemon. It only
stands in for the parts of systemd a test machine cannot give us inside a test (no PID 1 here):
``Type=notify`` (a NOTIFY_SOCKET datagram socket; READY=1 awaited within ``start_timeout``, like
TimeoutStartSec), ``WatchdogSec`` (WATCHDOG_USEC set; no WATCHDOG=1 for that long -> SIGABRT,
then SIGKILL), ``Restart=always`` with ``RestartSec``, and stopping the whole process group (the
cgroup). Every start, READY, exit and kill is recorded in ``events``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SITE_PACKAGES = Path(next(p for p in sys.path if p.endswith("site-packages")))


_UNPATCHED: dict[str, Path] = {}


def patch_source(path: str, old: str, new: str) -> Callable[[Path], None]:
    """A ``build_wheel`` patch: replace ``old`` by ``new`` once in the source file ``path``."""

    def apply(src: Path) -> None:
        f = src / path
        text = f.read_text()
        assert old in text, f"patch target not found in {path}"
        f.write_text(text.replace(old, new, 1))

    return apply


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    """A tar file holding ``members`` exactly as given: ``TarInfo`` entries as they are (links,
    odd paths), ``(name, data)`` as regular files. For hostile OTA payloads."""
    with tarfile.open(path, "w") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                ti = tarfile.TarInfo(m[0])
                ti.size = len(m[1])
                tar.addfile(ti, io.BytesIO(m[1]))
    return path


def build_wheel(workdir: Path, version: str, patch: Callable[[Path], None] | None = None) -> Path:
    """A wheel of this source tree with ``__version__`` bumped (and an optional source patch).

    Unpatched wheels are built once per test session and reused (they are read-only inputs).
    """
    if patch is None and version in _UNPATCHED and _UNPATCHED[version].exists():
        return _UNPATCHED[version]
    wheel = _build_wheel(workdir, version, patch)
    if patch is None:
        _UNPATCHED[version] = wheel
    return wheel


def _build_wheel(workdir: Path, version: str, patch: Callable[[Path], None] | None) -> Path:
    src = workdir / f"src-{version}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("gateway", "drivers", "cloud_stub", "examples", "systemd"):
        shutil.copytree(
            REPO / name,
            src / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info"),
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    init = src / "gateway" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    import re

    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', text))
    if patch is not None:
        patch(src)
    out = workdir / f"wheel-{version}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    return next(out.glob(f"edgegw-{version}-*.whl"))


def make_bundle(bundle_dir: Path, wheel: Path, version: str) -> Path:
    """A test bundle: bundle.json + the edgegw wheel (installed with deps_from, see slots.py)."""
    import json

    (bundle_dir / "wheels").mkdir(parents=True, exist_ok=True)
    shutil.copy(wheel, bundle_dir / "wheels" / wheel.name)
    (bundle_dir / "bundle.json").write_text(
        json.dumps({"name": "edgegw", "version": version, "requirement": f"edgegw=={version}"})
    )
    return bundle_dir


def fake_slot(slots: Path, version: str) -> Path:
    """A slot for the running (test venv) version: bin/edgegw runs this checkout's edgegw."""
    slot = slots / version
    (slot / "bin").mkdir(parents=True, exist_ok=True)
    exe = slot / "bin" / "edgegw"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m edgegw.cli "$@"\n')
    exe.chmod(0o755)
    return slot


class ServiceSim:
    """Runs ``argv`` like systemd runs a Type=notify service with Restart=always."""

    def __init__(
        self,
        argv: list[str],
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        watchdog_sec: float = 10.0,
        restart_sec: float = 0.3,
    ) -> None:
        self.argv = argv
        self.workdir = workdir
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.start_timeout = start_timeout
        self.watchdog_sec = watchdog_sec
        self.restart_sec = restart_sec
        self.events: list[tuple[str, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "service.log"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.starts = 0
        self.readies = 0

    def start(self) -> ServiceSim:
        self._thread.start()
        return self

    def _event(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.events.append((kind, detail))

    def _kill_group(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _loop(self) -> None:
        sock_path = self.workdir / "notify.sock"
        while not self._stop.is_set():
            sock_path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(sock_path))
            env = dict(
                self.env,
                NOTIFY_SOCKET=str(sock_path),
                WATCHDOG_USEC=str(int(self.watchdog_sec * 1e6)),
            )
            with open(self.log, "ab") as out:
                proc = subprocess.Popen(
                    self.argv,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.proc = proc
            self.starts += 1
            self._event("start", str(proc.pid))
            ready = False
            deadline = time.monotonic() + self.start_timeout
            last_ping = time.monotonic()
            while proc.poll() is None and not self._stop.is_set():
                now = time.monotonic()
                limit = deadline if not ready else last_ping + self.watchdog_sec
                if now >= limit:
                    self._event("timeout" if not ready else "watchdog")
                    self._kill_group(proc, signal.SIGABRT if ready else signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self._kill_group(proc, signal.SIGKILL)
                        proc.wait()
                    break
                sock.settimeout(min(0.2, max(0.01, limit - now)))
                try:
                    msg = sock.recv(4096).decode(errors="replace")
                except TimeoutError:
                    continue
                if "READY=1" in msg and not ready:
                    ready = True
                    self.readies += 1
                    last_ping = time.monotonic()
                    self._event("ready")
                if "WATCHDOG=1" in msg:
                    last_ping = time.monotonic()
            if self._stop.is_set() and proc.poll() is None:
                self._kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    self._kill_group(proc, signal.SIGKILL)
                    proc.wait()
            rc = proc.wait()
            self._kill_group(proc, signal.SIGKILL)  # leftovers in the "cgroup" (the guard)
            sock.close()
            self._event("exit", str(rc))
            if self._stop.wait(self.restart_sec):
                break

    def kill_main(self, sig: int = signal.SIGKILL) -> None:
        proc = self.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def request_stop(self) -> None:
        """Begin stopping without waiting (``stop()`` waits): several services stop at once."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "service did not stop"
