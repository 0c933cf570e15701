"""The shipped systemd units parse and verify (systemd-analyze), with the venv's real commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("unit", ["edgegw.service", "edgegw-cloud.service"])
def test_unit_verifies(tmp_path: Path, unit: str) -> None:
    text = (ROOT / "systemd" / unit).read_text()
    if unit == "edgegw.service":  # the gateway runs the slot launcher (docs/ota.md)
        launcher = tmp_path / "edgegw-launch"
        launcher.write_text((ROOT / "gateway" / "ota" / "launcher.py").read_text())
        launcher.chmod(0o755)
        assert "/opt/edgegw/bin/edgegw-launch" in text
        text = text.replace("/opt/edgegw/bin/edgegw-launch", str(launcher))
    else:
        assert "/opt/edgegw/venv/bin/" in text
    (tmp_path / unit).write_text(text.replace("/opt/edgegw/venv/bin/", f"{BIN}/"))
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed"
    proc = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if unit in line or "Unknown" in line or "error" in line.lower()
    ]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_service_is_notify_with_watchdog_and_hardening() -> None:
    text = (ROOT / "systemd" / "edgegw.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SupplementaryGroups=dialout",
        "StateDirectory=edgegw",
        "ReadWritePaths=/opt/edgegw/slots",
    ):
        assert line in text, line
