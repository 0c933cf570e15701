"""The daemon SIGKILLed repeatedly during heavy writing (issue: gateway core, acceptance 4).

Real daemon (`edgegw run`) in a subprocess, fed by the built-in ``sim`` driver in push mode at
tens of thousands of readings per second, outbox on disk. Before each kill the test snapshots the
committed sequences (read-only); after each restart every one of them must still be there, new
sequences must continue strictly above the old ones, and every stored batch must decrypt and
decode.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

from edgegw.runtime.outbox_reader import read_outbox

from .helpers import gateway_config, outbox_seqs, poll_until, start_daemon, write_config

KILLS = 20


def test_sigkill_during_heavy_writing_loses_nothing_committed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "gateway.yaml",
        gateway_config(
            "crash-gw",
            state,
            outbox={"max_bytes": "512MiB"},
            batch={"max_readings": 2000, "max_age": "50ms"},
            devices=[
                {
                    "id": f"sim{i}",
                    "driver": "sim",
                    "options": {
                        "push_rate": 4000,
                        "burst": 200,
                        "points": [{"name": f"p{j}", "signal": "walk"} for j in range(5)],
                    },
                }
                for i in range(3)
            ],
        ),
    )
    db = state / "outbox.db"
    rng = random.Random(1234)
    committed: set[int] = set()
    log = tmp_path / "daemon.log"
    for kill in range(KILLS):
        before = max(committed, default=0)
        proc = start_daemon(cfg, log)
        try:
            # Wait until this incarnation has committed several new batches, then kill it at a
            # random moment of its write loop.
            poll_until(
                lambda b=before: len([s for s in outbox_seqs(db) if s > b]) >= 5,
                30,
                f"new batches after restart {kill}",
            )
            snapshot = set(outbox_seqs(db))
            # A random amount of further writing, so the kill lands at varied points of the
            # write loop (mid-transaction, mid-encode, between batches).
            target = len(snapshot) + rng.randint(1, 4)
            poll_until(lambda t=target: len(outbox_seqs(db)) >= t, 30, "more batches")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        after = outbox_seqs(db)
        missing = snapshot - set(after)
        assert not missing, f"kill {kill}: committed batches lost: {sorted(missing)[:10]}"
        new = [s for s in after if s not in committed]
        assert new and min(new) > before, f"kill {kill}: sequence went backwards"
        assert after == sorted(set(after)), "sequences must be unique and ordered"
        committed = set(after)
    samples, _alerts, seqs = read_outbox(state, gateway_id="crash-gw")
    assert seqs == sorted(committed)
    assert len(samples) >= 5 * KILLS * 2, "every stored batch decrypts and decodes"
    assert all(s.device.startswith("sim") and isinstance(s.value, float) for s in samples)
