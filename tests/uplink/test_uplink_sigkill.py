"""The gateway process (real Outbox + Uplink + producer, tests/uplink/gw_proc.py) SIGKILLed 20+
times mid-upload and restarted; at the end produced == stored at the cloud, no duplicates."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import Cloud

REPO = Path(__file__).resolve().parents[2]
KILLS = 22
READINGS = 50


def _spawn(state: Path, ident: Path, url: str, batches: int, drain: bool
           ) -> subprocess.Popen[str]:
    """Start gw_proc; its stderr goes to state/../gw-stderr.log (read it on failure)."""
    cmd = [sys.executable, "-m", "tests.uplink.gw_proc", str(state), str(ident), url, "gw-kill",
           "--batches", str(batches), "--readings", str(READINGS)]
    if drain:
        cmd.append("--drain")
    with open(state.parent / "gw-stderr.log", "a") as err:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})


class _Lines:
    """Collect a child's stdout lines in a thread; wait for a given count."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.strip())
                self._cond.notify_all()

    def join(self) -> None:
        self._t.join(10)

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.lines) >= n, timeout)


@pytest.mark.parametrize(
    "store_kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
def test_gateway_sigkilled_repeatedly_mid_upload(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-kill", tmp_path / "id")
    ingest = cloud.ingest()
    rng = random.Random(11)
    state = tmp_path / "state"
    appended: set[int] = set()
    killed_with_backlog = 0
    try:
        for _ in range(KILLS):
            proc = _spawn(state, ident.dir, cloud.url, 1_000_000, drain=False)
            out = _Lines(proc)
            # let it append a few batches (uploads run concurrently), then kill it at a random
            # moment: mid-append, mid-publish, mid-settle
            target = rng.randint(3, 12)
            if not out.wait_for(target, 30):
                proc.kill()
                proc.wait()
                err = (tmp_path / "gw-stderr.log").read_text()[-3000:]
                raise AssertionError(f"gateway process produced nothing: {err}")
            # random kill point (fault injection, not sync); a third of the kills come right
            # away, while the newest batches are surely still on their way to the cloud (acks
            # are fast on a quiet machine: a later kill often finds the window empty)
            time.sleep(0.0 if rng.random() < 0.34 else rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            out.join()
            assert proc.stdout is not None
            proc.stdout.close()
            appended |= {int(x.split()[1]) for x in out.lines if x.startswith("appended")}
            store = cloud.store()
            if max(appended) not in store.batch_seqs("gw-kill"):
                killed_with_backlog += 1
            store.close()
        # final run: produce a few more and drain everything to the cloud
        proc = _spawn(state, ident.dir, cloud.url, 5, drain=True)
        stdout, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, (tmp_path / "gw-stderr.log").read_text()[-3000:]
        final = [int(x.split()[1]) for x in stdout.splitlines() if x.startswith("appended")]
        assert len(final) == 5
        last = final[-1]
        assert f"drained {last}" in stdout
        appended |= set(final)

        store = cloud.store()
        seqs = store.batch_seqs("gw-kill")
        # every durably appended batch is stored exactly once (a batch appended but killed
        # before its "appended" line was printed is still in the outbox and arrives too). The
        # outbox's sequence numbers are contiguous within one run; each open continues above
        # the wall clock in microseconds, so runs leave holes that are never reused.
        first = min(appended)
        assert appended <= set(seqs)
        assert len(seqs) == len(set(seqs)) and min(seqs) == first and max(seqs) == last
        n = store.count_readings("gw-kill")
        assert n == READINGS * len(seqs)
        distinct = store.distinct_readings("gw-kill")
        assert distinct == n, "a reading was stored twice"
        store.close()
        assert killed_with_backlog >= 5, "kills should hit while batches were still unacked"
    finally:
        ingest.stop()
