"""Power-cut harness: the real Outbox and CloudStore on a LazyFS mount, cut at random points.

``LazyMount`` runs tests/reliability/lazyfs.py (FUSE) in a subprocess; ``run_cycles`` starts the
two writer children (powercut_child.py), lets them run for a random time, SIGKILLs them, cuts
the power (every write not fsynced is dropped), and checks after each cut:

1. every batch the outbox reported durable (append returned) and that was not settled is still
   in the outbox, intact (CRC, header, the database opens without salvage);
2. every batch the cloud store acknowledged (commit_many returned) is still stored;
3. sequences never go back: each new outbox batch has a larger seq than any reported before.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegw.protocol.keys import Sealer
from edgegw.store.outbox import Outbox
from edgegw_cloud.store import CloudStore

HERE = Path(__file__).parent
GW = "gw-power"


class LazyMount:
    def __init__(self, root: Path) -> None:
        self.backing = root / "backing"
        self.mnt = root / "mnt"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.log = root / "lazyfs.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "lazyfs.py"),
                                          str(self.backing), str(self.mnt)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (self.mnt / ".lazyfs-ctl").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"LazyFS did not mount: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)  # poll-until-deadline for the mount

    def cut(self) -> None:
        with open(self.mnt / ".lazyfs-ctl", "w") as f:
            f.write("cut")

    def stats(self) -> dict[str, Any]:
        return dict(json.loads((self.mnt / ".lazyfs-ctl").read_text()))

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Ledger:
    durable: set[int] = field(default_factory=set)
    delivered: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    max_seq: int = 0
    cycles: int = 0
    seq_regressions: int = 0
    lost_durable: int = 0
    lost_acked: int = 0
    salvages: int = 0
    unclean_gaps: int = 0


def _spawn(kind: str, d: Path, seed: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(HERE / "powercut_child.py"), kind, str(d),
                             str(seed)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)


def _drain(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines = proc.stdout.read().splitlines()
    proc.stdout.close()
    return lines


def run_cycles(mount: LazyMount, cycles: int, seed: int = 1,
               run_s: tuple[float, float] = (0.05, 0.6)) -> Ledger:
    rng = random.Random(seed)
    led = Ledger()
    d = mount.mnt
    for c in range(cycles):
        ob = _spawn("outbox", d, rng.randrange(1 << 30))
        st = _spawn("store", d, rng.randrange(1 << 30))
        # wait for both to produce, then a random extra moment: the cut point
        assert ob.stdout is not None and st.stdout is not None
        select.select([ob.stdout], [], [], 20)
        select.select([st.stdout], [], [], 20)
        time.sleep(rng.uniform(*run_s))  # fault injection point, not synchronisation
        for p in (ob, st):
            p.send_signal(signal.SIGKILL)
        for p in (ob, st):
            p.wait()
        mount.cut()
        first_new: int | None = None
        for line in _drain(ob):
            kind, _, value = line.partition(" ")
            if not value.isdigit():
                continue  # a line torn by the kill
            seq = int(value)
            if kind == "durable":
                if first_new is None:
                    first_new = seq
                led.durable.add(seq)
            elif kind == "delivered":
                led.delivered.add(seq)
        if first_new is not None:
            if first_new <= led.max_seq:
                led.seq_regressions += 1
            led.max_seq = max(led.max_seq, max(s for s in led.durable))
        led.acked |= {int(x.split()[1]) for x in _drain(st)
                      if x.startswith("acked ") and x.split()[1].isdigit()}
        _check(d, led)
        led.cycles = c + 1
    return led


def _check(d: Path, led: Ledger) -> None:
    ob = Outbox(d / "outbox.db", max_bytes=8 * 1024 * 1024, sealer=Sealer(b"\x05" * 32, 1, GW))
    try:
        st = ob.stats()
        led.salvages += st["corrupt_files"]
        present = {b.seq for b in ob.next_batches(100_000)}
        led.unclean_gaps += st["unclean_stops"]
    finally:
        ob.close()
    # the outbox is bounded (8 MiB): batches it evicted by policy are named by gap records;
    # they are not "lost". Everything durable, not delivered and not evicted must be present.
    missing = led.durable - led.delivered - present
    if missing:
        evicted = _evicted(d)
        missing -= evicted
    led.lost_durable += len(missing)
    if (d / "store.db").exists():
        cs = CloudStore(d / "store.db", readonly=True)
        try:
            stored = set(cs.batch_seqs(GW))
        finally:
            cs.close()
        led.lost_acked += len(led.acked - stored)


def _evicted(d: Path) -> set[int]:
    from edgegw.protocol.codec import decode_batch
    from edgegw.protocol.envelope import FLAG_GAP, parse_header

    s = Sealer(b"\x05" * 32, 1, GW)
    ob = Outbox(d / "outbox.db", max_bytes=8 * 1024 * 1024, sealer=s)
    named: set[int] = set()
    try:
        for b in ob.next_batches(100_000):
            if parse_header(b.envelope).flags & FLAG_GAP:
                for g in decode_batch(s.open(b.envelope)[1]).gaps:
                    named |= set(g.seqs)
    finally:
        ob.close()
    return named
