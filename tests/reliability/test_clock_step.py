"""A wall-clock step back (NTP correcting a fast RTC) followed by a SIGKILL: the next start
still reports the interval it cannot account for, and sequences still never go back.

Before the fix the unclean-stop gap started after the HIGHEST reading timestamp ever committed;
after a step back that lies in the future of the stepped clock, so the restart found
``now <= last`` and wrote no gap record at all: readings lost by the kill vanished silently.

Real daemon under libfaketime (tests/reliability/fakeclock.py; only its wall clock moves, the
monotonic clock does not), a real pymodbus server, the outbox on disk.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from modbus.simproc import SimServer
from runtime.helpers import EDGEGW, outbox_seqs, poll_until

from .fakeclock import SteppedClock
from .test_unclean_stop import _contents, one_modbus_device_config

GW = "gw-unclean"  # _contents opens the envelopes of this gateway id
STEP_S = 30


def test_sigkill_after_a_clock_step_back_is_still_reported(tmp_path: Path) -> None:
    server = SimServer("--tcp", "0", "--units", "1", log_dir=tmp_path)
    state = tmp_path / "state"
    db = state / "outbox.db"
    cfg = one_modbus_device_config(tmp_path, state, server.port)
    clock = SteppedClock(tmp_path / "faketime")
    log = tmp_path / "daemon.log"
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen([*EDGEGW, "run", "-c", str(cfg)], stdout=out,
                                    stderr=subprocess.STDOUT, env=clock.env())
        poll_until(lambda: len(outbox_seqs(db)) >= 5, 30, "batches before the step")
        clock.step(-STEP_S)
        stepped = len(outbox_seqs(db))
        poll_until(lambda: len(outbox_seqs(db)) >= stepped + 5, 30, "batches after the step")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_ms = time.time_ns() // 1_000_000 - STEP_S * 1000  # the daemon's clock
        _, before = _contents(state)
        seqs_before = outbox_seqs(db)
        r = subprocess.run([*EDGEGW, "run", "-c", str(cfg), "--for", "1.5"],
                           capture_output=True, text=True, timeout=90, env=clock.env())
        assert r.returncode == 0, r.stderr
    finally:
        server.close()
    assert "Invalid argument" not in log.read_text(errors="replace")
    high = max(before)
    after_step = [t for t in before if t < high - STEP_S * 1000 + 5_000]
    assert after_step, "the daemon's readings did not follow the stepped clock"
    gaps, _ = _contents(state)
    (gap,) = [g for g in gaps if g.reason == "unclean_stop"]
    # it starts after the last reading committed (commit order, i.e. in the stepped clock) and
    # reaches the restart: the readings the kill lost lie inside it
    assert gap.from_ts_ms <= max(after_step) + 1
    assert gap.to_ts_ms >= killed_ms
    assert gap.to_ts_ms < high, "the interval is in the stepped clock, not the old one"
    # the sequence floor holds with the clock behind: the restart continued above every seq
    new = [s for s in outbox_seqs(db) if s not in set(seqs_before)]
    assert new and min(new) > max(seqs_before)
