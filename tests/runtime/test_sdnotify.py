"""systemd integration: READY=1 once serving, WATCHDOG=1 while the pipeline ticks, STOPPING=1.

The test plays systemd's part: a real AF_UNIX datagram socket named in NOTIFY_SOCKET, and
WATCHDOG_USEC set as systemd sets it for a unit with WatchdogSec=.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .helpers import gateway_config, write_config


def test_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    cfg = write_config(
        tmp_path / "g.yaml",
        gateway_config(
            "sd-gw",
            tmp_path / "s",
            devices=[{"id": "s1", "driver": "sim", "options": {"points": [{"name": "a"}]}}],
        ),
    )
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgegw.cli", "run", "-c", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 3:
            messages.append(sock.recv(4096).decode())
        assert messages[0].startswith("READY=1"), messages
        assert messages.count("WATCHDOG=1") >= 3, messages
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(sock.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
