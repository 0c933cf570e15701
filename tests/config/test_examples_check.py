"""Every shipped example config passes `edgegw check` (gateway core acceptance 1).

Runs the real console script in a subprocess, as a user would. ``CAM_PASSWORD`` is set because
the camera example takes its credentials from the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p for p in (ROOT / "examples").rglob("*.yaml")
    if "custom_driver" not in p.parts and "grafana" not in p.parts  # not gateway configs
)


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"gateway.example.yaml", "modbus-tcp.yaml", "edge.yaml", "coap.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_passes_check(path: Path) -> None:
    env = dict(os.environ, CAM_PASSWORD="example-secret")
    proc = subprocess.run(
        [sys.executable, "-m", "edgegw.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
