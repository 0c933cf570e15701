"""Crash safety: a writer process SIGKILLed at random moments never loses a committed batch.

The child prints a seq only after ``append`` returned (COMMIT with synchronous=FULL). After
each kill the parent reopens the outbox and checks: every reported seq is present (or was
delivered by the parent itself), seqs keep increasing across restarts, and every stored row
opens and decodes. The parent also delivers a random half of the rows each round, so the
counter must survive deletion of the newest rows.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from edgegw.protocol import Sealer, decode_batch, open_sealed
from edgegw.protocol.ack import AckStatus
from edgegw.store import Outbox

KEY = bytes(range(100, 132))
CHILD = Path(__file__).with_name("writer_child.py")
ROUNDS = 24


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    db = tmp_path / "outbox.db"
    reported: set[int] = set()
    delivered: set[int] = set()
    silent: set[int] = set()  # committed but the child was killed before it printed them
    highest = 0  # highest seq known after the previous round
    kills_mid_append = 0
    targets = [0] * 3 + [rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 89]) for _ in range(ROUNDS - 3)]
    rng.shuffle(targets)
    for rnd in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(db), KEY.hex(), str(rnd)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        # kill after a random number of commits (0 = right after open, before any append);
        # the child is then somewhere inside its next append (seal, insert, commit, fsync)
        target = targets[rnd]
        first = proc.stdout.readline()
        assert first == "ready\n", proc.stderr.read() if proc.stderr else first
        lines = [proc.stdout.readline() for _ in range(target)]
        proc.kill()
        proc.wait(timeout=30)
        rest = proc.stdout.read()
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        assert "Traceback" not in err, err
        # only complete lines are reported commits
        this_round = [int(x) for x in [*lines, *rest.splitlines(keepends=True)] if x.endswith("\n")]
        kills_mid_append += bool(target)
        reported.update(this_round)

        with Outbox(db, max_bytes=64 << 20, sealer=Sealer(KEY, 3, "gw-kill")) as ob:
            rows = ob.next_batches(1_000_000)
            present = {b.seq for b in rows}
            missing = reported - present - delivered
            assert not missing, f"round {rnd}: committed seqs lost: {sorted(missing)[:10]}"
            assert this_round == sorted(this_round)
            if this_round:
                assert min(this_round) > highest, "a seq was reused after restart"
            for b in rows:
                header, pt = open_sealed(KEY, "gw-kill", b.envelope, expected_key_id=3)
                assert header.seq == b.seq
                assert len(decode_batch(pt).samples) == b.count
            st = ob.stats()
            assert st["corrupt_rows"] == 0 and st["corrupt_files"] == 0
            # at most one new batch beyond the reported ones (committed, killed before printing)
            unreported = present - reported - silent
            assert len(unreported) <= 1
            silent |= unreported
            highest = max(present | reported | delivered | {highest})
            assert ob.next_seq > highest
            # deliver a random half, newest included sometimes
            done = [b.seq for b in rows if rng.random() < 0.5]
            ob.settle_many([(s, AckStatus.DELIVERED) for s in done])
            delivered.update(done)
    assert kills_mid_append >= 20
    assert len(reported) > 200
