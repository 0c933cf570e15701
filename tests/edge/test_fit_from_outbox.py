"""`edgegw model fit --outbox`: fit on data a real gateway recorded, then run the model.

The daemon (``sim`` driver, polled fast) fills its outbox; `edgegw model fit` reads it back
through the gateway's own keys, writes a .tflite + spec without TensorFlow; a second gateway
config uses that model, passes `edgegw check`, and the running daemon emits anomaly scores.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.helpers import poll_until, start_daemon, stop_daemon, write_config

from edgegw.runtime.outbox_reader import read_outbox_samples

POINTS = [
    {"name": "temp", "signal": "sine", "period": 2.0, "amplitude": 5.0, "offset": 60.0},
    {"name": "pressure", "signal": "walk", "amplitude": 0.5, "offset": 2.0, "step": 0.01},
    {"name": "flow", "signal": "sine", "period": 3.0, "amplitude": 2.0, "offset": 30.0},
]


def _cfg(state: Path, anomaly: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "gateway": {"id": "fit-gw", "state_dir": str(state), "log_level": "warning"},
        "metrics": {"enabled": False},
        "batch": {"max_age": "100ms"},
        "devices": [
            {"id": "pump", "driver": "sim", "poll": "20ms", "options": {"points": POINTS}}
        ],
    }
    if anomaly:
        doc["anomaly"] = anomaly
    return doc


def _edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgegw.cli", *args], capture_output=True, text=True, timeout=120
    )


def _count(state: Path, metric: str) -> int:
    try:
        return sum(1 for s in read_outbox_samples(state, "fit-gw") if s.metric == metric)
    except (FileNotFoundError, sqlite3.OperationalError):  # the outbox may not exist yet
        return 0


def test_fit_from_outbox_and_run(tmp_path: Path) -> None:
    rec = tmp_path / "record"
    cfg = write_config(tmp_path / "record.yaml", _cfg(rec))
    proc = start_daemon(cfg, tmp_path / "record.log")
    try:
        poll_until(lambda: _count(rec, "temp") >= 600, 60, "600 recorded rows", interval=0.5)
    finally:
        assert stop_daemon(proc) == 0
    model = tmp_path / "pump.tflite"
    fit = _edgegw("model", "fit", "--outbox", str(rec), "--device", "pump", "--out", str(model))
    assert fit.returncode == 0, fit.stdout + fit.stderr
    assert model.stat().st_size > 0 and model.with_suffix(".json").exists()

    run = tmp_path / "run"
    anomaly = [{"name": "pump-ae", "device": "pump", "metrics": ["flow", "pressure", "temp"],
                "model": str(model)}]
    cfg2 = write_config(tmp_path / "run.yaml", _cfg(run, anomaly))
    check = _edgegw("check", "-c", str(cfg2))
    assert check.returncode == 0, check.stdout + check.stderr
    proc = start_daemon(cfg2, tmp_path / "run.log")
    try:
        poll_until(lambda: _count(run, "anomaly.score") >= 5, 60, "anomaly scores", interval=0.5)
    finally:
        assert stop_daemon(proc) == 0
    scores = [s.value for s in read_outbox_samples(run, "fit-gw") if s.metric == "anomaly.score"]
    assert all(isinstance(v, float) and v >= 0 for v in scores)
