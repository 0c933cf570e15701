"""Helpers for reliability tests: the real `edgegw-cloud` CLI (init, serve, token create) and
the real `edgegw` CLI (enroll, run) in subprocesses, plus a pymodbus plant.

Nothing is mocked: serve runs its managed Mosquitto (mTLS + ACL) and the ingest; the gateway
daemon polls a real pymodbus server (tests/modbus/modbus_sim.py) in its own process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime.helpers import free_port, poll_until

from edgegw_cloud.store import CloudStore

CLOUD = [sys.executable, "-m", "edgegw_cloud.cli"]
EDGEGW = [sys.executable, "-m", "edgegw.cli"]


def cloud_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLOUD, *args], capture_output=True, text=True, timeout=timeout)


def edgegw_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEGW, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A temp dir Mosquitto (which drops to user ``mosquitto``) can enter."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-rel-"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class CloudServe:
    """`edgegw-cloud serve` in a subprocess (its own process group is NOT used: the managed
    broker must die with serve by itself)."""

    def __init__(self, data_dir: Path, log: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        r = cloud_cli("init", "--data-dir", str(data_dir))
        assert r.returncode == 0, r.stderr

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def start(self) -> CloudServe:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*CLOUD, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        poll_until(lambda: f"serving {self.url}" in self.log.read_text(errors="replace")[offset:]
                   or (self.proc is not None and self.proc.poll() is not None), 40,
                   "edgegw-cloud serve to start")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(40)
        self.proc = None
        return rc

    def token(self, gw: str) -> str:
        r = cloud_cli("token", "create", gw, "--data-dir", str(self.data_dir), "--ttl", "10m")
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def bootstrap_dir(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("ca.crt", "bootstrap.crt", "bootstrap.key"):
            shutil.copy(self.data_dir / "pki" / name, dest / name)
        return dest

    def store(self) -> CloudStore:
        return CloudStore(self.data_dir / "store.db", readonly=True)

    def stored(self, gw: str) -> dict[str, Any]:
        """Batches, readings and gaps the cloud store holds for ``gw``."""
        if not (self.data_dir / "store.db").exists():
            return {"seqs": [], "readings": 0, "gaps": []}
        st = self.store()
        try:
            return {"seqs": st.batch_seqs(gw), "readings": st.count_readings(gw),
                    "gaps": st.gaps(gw)}
        finally:
            st.close()
