"""Cron-like upkeep in the real daemon: outbox maintenance and certificate renewal.

Renewal runs end to end: `edgegw-cloud init` + `serve` (managed Mosquitto, enrollment, ingest),
`edgegw-cloud token create` + `edgegw enroll`, then `edgegw run` with ``renew_before`` longer
than the certificate's validity so the first check renews it over the gateway's own identity.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgegw import pki

from .helpers import free_port, gateway_config, poll_until, start_daemon, stop_daemon, write_config

BIN = Path(sys.executable).parent


def _status(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / "status.json").read_text())["stats"]  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError):
        return {}


def _sim_device() -> dict[str, Any]:
    return {"id": "s1", "driver": "sim", "poll": "100ms", "options": {"points": [{"name": "a"}]}}


def test_outbox_maintenance_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "g.yaml",
        gateway_config(
            "hk-gw",
            state,
            outbox={"vacuum_every": "300ms"},
            devices=[_sim_device()],
        ),
    )
    proc = start_daemon(cfg, tmp_path / "d.log")
    try:
        poll_until(
            lambda: _status(state).get("housekeeping", {}).get("outbox_maintenance_runs", 0) >= 2,
            30,
            "two outbox maintenance runs",
        )
    finally:
        assert stop_daemon(proc) == 0
    assert "outbox_maintenance_failures" not in _status(state)["housekeeping"]


@pytest.fixture
def cloud() -> Iterator[tuple[Path, int, int]]:
    # Mosquitto (dropping to its own user when started as root) must be able to enter the dir.
    root = Path(tempfile.mkdtemp(prefix="edgegw-hk-"))
    os.chmod(root, 0o711)
    data = root / "cloud"
    subprocess.run(
        [BIN / "edgegw-cloud", "init", "--data-dir", data], check=True, capture_output=True
    )
    port, eport = free_port(), free_port()
    with open(root / "cloud.log", "wb") as log:
        serve = subprocess.Popen(
            [BIN / "edgegw-cloud", "serve", "--data-dir", data, "--port", str(port),
             "--enroll-port", str(eport)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield data, port, eport
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_certificate_renewed_before_expiry(
    tmp_path: Path, cloud: tuple[Path, int, int]
) -> None:
    data, port, eport = cloud
    broker = f"mqtts://127.0.0.1:{port}"
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "g.yaml",
        gateway_config(
            "renew-gw",
            state,
            log_level="info",
            uplink={
                "enabled": True,
                "broker": broker,
                "enroll_broker": f"mqtts://127.0.0.1:{eport}",
                "renew_before": "400d",
                "renew_check_every": "1s",
            },
            devices=[_sim_device()],
        ),
    )
    token = poll_until(
        lambda: (
            (
                p := subprocess.run(
                    [BIN / "edgegw-cloud", "token", "create", "renew-gw", "--data-dir", data],
                    capture_output=True,
                    text=True,
                )
            ).returncode
            == 0
            and p.stdout.strip().splitlines()[-1]
        ),
        20,
        "a token",
    )
    enrolled = poll_until(
        lambda: (
            subprocess.run(
                [
                    BIN / "edgegw",
                    "enroll",
                    "-c",
                    cfg,
                    f"--token={token}",  # a token may start with '-'
                    "--bootstrap-dir",
                    data / "pki",
                    "--timeout",
                    "5",
                ],
                capture_output=True,
                text=True,
            ).returncode
            == 0
        ),
        30,
        "enrollment (the broker starting)",
        interval=0.5,
    )
    assert enrolled
    crt = state / "identity" / "gateway.crt"
    first = pki.load_certificate(crt).serial_number
    key_before = (state / "identity" / "gateway.key").read_bytes()
    proc = start_daemon(cfg, tmp_path / "d.log")
    try:
        poll_until(
            lambda: _status(state).get("housekeeping", {}).get("certificate_renewals", 0) >= 1,
            40,
            "a certificate renewal",
        )
        renewed = pki.load_certificate(crt)
        assert renewed.serial_number != first
        assert (state / "identity" / "gateway.key").read_bytes() == key_before, "same key"
        store = data / "store.db"

        def stored() -> int:
            con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
            try:
                return int(con.execute("SELECT count(*) FROM readings").fetchone()[0])
            except sqlite3.Error:
                return 0
            finally:
                con.close()

        # Readings keep reaching the cloud after the renewal.
        after = stored()
        poll_until(lambda: stored() > after, 30, "readings stored after the renewal")
    finally:
        assert stop_daemon(proc) == 0, (tmp_path / "d.log").read_text()[-3000:]
