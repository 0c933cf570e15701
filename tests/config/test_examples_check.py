"""Every shipped example config passes `edgegw check` (gateway core acceptance 1).

Runs the real console script in a subprocess, as a user would. ``CAM_PASSWORD`` and the OSCORE
secrets are set because the camera and CoAP examples take their credentials from the environment
(random per run, as the example's comment tells the user to generate them).
"""

from __future__ import annotations

import os
import secrets
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
    env = dict(os.environ, CAM_PASSWORD="example-secret",
               THERM_A_OSCORE_SECRET=secrets.token_hex(16),
               THERM_B_OSCORE_SECRET=secrets.token_hex(16))
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


def test_coap_example_refuses_published_or_missing_secrets() -> None:
    """Issue 9 #9: the example used to fall back to well-known OSCORE secrets and pass check."""
    path = ROOT / "examples" / "coap.yaml"
    cases = [
        ({}, "THERM_A_OSCORE_SECRET"),  # unset: no silent fallback
        ({"THERM_A_OSCORE_SECRET": "000102030405060708090a0b0c0d0e0f",
          "THERM_B_OSCORE_SECRET": secrets.token_hex(16)}, "published example"),
        ({"THERM_A_OSCORE_SECRET": secrets.token_hex(16),
          "THERM_B_OSCORE_SECRET": "0101010101010101aaaaaaaaaaaaaaaa"}, "distinct bytes"),
    ]
    for extra, needle in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THERM_")}
        env.update(extra)
        proc = subprocess.run(
            [sys.executable, "-m", "edgegw.cli", "check", "-c", str(path)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
        )
        assert proc.returncode != 0, (extra, proc.stdout)
        assert needle in proc.stdout + proc.stderr, proc.stdout + proc.stderr
