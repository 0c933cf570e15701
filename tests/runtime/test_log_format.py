"""Operator-facing log output: JSON lines on request, no APScheduler chatter at INFO."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run_gateway(tmp_path: Path, *extra: str) -> str:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""\
gateway: {{id: logs-gw, state_dir: {tmp_path / 'state'}, log_level: info}}
metrics: {{enabled: false}}
devices:
  - {{id: s1, driver: sim, poll: 100ms, options: {{points: [{{name: a}}]}}}}
""")
    p = subprocess.run([sys.executable, "-m", "edgegw.cli", *extra, "run", "-c", str(cfg),
                        "--for", "1.5"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    return p.stderr


def test_json_log_lines_and_no_apscheduler_info(tmp_path: Path) -> None:
    text = _run_gateway(tmp_path)
    assert "gateway logs-gw running" in text  # INFO is on (gateway.log_level: info)
    assert "apscheduler" not in text  # "Added job", "Scheduler started" ... silenced
    lines = _run_gateway(tmp_path, "--log-format", "json").splitlines()
    docs = [json.loads(ln) for ln in lines]
    assert docs and all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    assert any(d["msg"].startswith("gateway logs-gw running") and d["level"] == "INFO"
               for d in docs)
    assert all(d["ts"].endswith("Z") for d in docs)
