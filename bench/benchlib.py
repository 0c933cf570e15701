"""Helpers the end-to-end benches share (run as ``python bench/NAME.py``, so this folder is on
``sys.path``): a free loopback port, nearest-rank percentiles, the cloud's broker, the
background telemetry devices that load the gateway while a latency is measured, and the time
each batch's cloud store transaction committed (``time_commits``), and the instruction count of
a child run under callgrind (``callgrind_total``)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir
from edgegw_cloud.store import CloudStore

N = TypeVar("N", int, float)


#: (gateway, seq) -> wall clock ms just after the cloud store's transaction holding it committed
#: (filled once ``time_commits()`` ran, by ingests in this process)
COMMITTED: dict[tuple[str, int], int] = {}


def time_commits() -> dict[tuple[str, int], int]:
    """Stamp every batch the cloud store commits in this process (idempotent); returns
    ``COMMITTED``."""
    if getattr(CloudStore.commit_statuses, "_timed", False):
        return COMMITTED
    orig = CloudStore.commit_statuses

    def timed(self: CloudStore, records: Any) -> list[str]:
        out = orig(self, records)
        done = time.time_ns() // 1_000_000
        for rec in records:
            COMMITTED.setdefault((rec.gateway, rec.seq), done)
        return out

    timed._timed = True  # type: ignore[attr-defined]
    CloudStore.commit_statuses = timed  # type: ignore[method-assign]
    return COMMITTED


def callgrind_total(args: Sequence[str]) -> int:
    """Instructions executed by ``python ARGS`` under valgrind's callgrind (deterministic: the
    benches take (I(2N) - I(N)) / N to cancel start-up)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no callgrind totals")


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM (a gateway drains its outbox first), then SIGKILL after ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[N], p: float, ndigits: int | None = None) -> N | float | None:
    """The nearest-rank ``p`` percentile (None for no values), rounded if ``ndigits``."""
    if not values:
        return None
    v = sorted(values)[min(len(values) - 1, int(p * len(values)))]
    return v if ndigits is None else round(v, ndigits)


def cloud_broker(tmp: Path) -> tuple[CloudPaths, ManagedBroker, str]:
    """A cloud data dir in ``tmp/cloud`` and its managed Mosquitto on a free port (not started
    yet); returns (paths, broker, the URL gateways use)."""
    paths = init_data_dir(tmp / "cloud")
    port = free_port()
    return paths, ManagedBroker(paths, port), f"mqtts://127.0.0.1:{port}"


def background_devices(rate: int) -> list[dict[str, Any]]:
    """10 ``sim`` push devices x 10 points emitting ``rate`` readings/s in total, one burst
    per 100 ms."""
    per_device_points, devices_n = 10, 10
    push_rate = rate / (per_device_points * devices_n)  # samples/s per point
    return [
        {
            "id": f"bg{i}",
            "driver": "sim",
            "options": {
                "push_rate": push_rate,
                "burst": max(1, int(push_rate / 10)),  # one burst per 100 ms
                "points": [{"name": f"p{j}"} for j in range(per_device_points)],
            },
        }
        for i in range(devices_n)
    ]
