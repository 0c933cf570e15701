"""Power cut, for real: the outbox and the cloud store on a file system that drops everything
not fsynced when the power is cut (LazyFS-style FUSE layer, tests/reliability/lazyfs.py).

Cut at random points many times: every batch the outbox reported durable survives (unless
settled delivered), every batch the cloud store acknowledged survives, the databases never
need salvage, and sequences never go back. `make powercut` runs the long version
(bench/bench_power_cut.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .powercut import LazyMount, run_cycles


@pytest.fixture
def lazy_mount() -> Iterator[LazyMount]:
    root = Path(tempfile.mkdtemp(prefix="edgegw-lazyfs-"))
    m = LazyMount(root)
    try:
        yield m
    finally:
        m.close()
        shutil.rmtree(root, ignore_errors=True)


def test_the_layer_really_drops_unsynced_writes(lazy_mount: LazyMount) -> None:
    """The premise: data written without fsync is gone after a cut; fsynced data stays."""
    p = lazy_mount.mnt / "f"
    with open(p, "wb") as f:
        f.write(b"synced")
        f.flush()
        import os

        os.fsync(f.fileno())
        f.write(b" and not synced")
        f.flush()
    assert p.read_bytes() == b"synced and not synced"
    lazy_mount.cut()
    assert p.read_bytes() == b"synced"


@pytest.mark.slow
def test_power_cuts_lose_nothing_durable_and_never_reuse_a_sequence(
    lazy_mount: LazyMount,
) -> None:
    led = run_cycles(lazy_mount, cycles=12, seed=7)
    stats = lazy_mount.stats()
    assert stats["cuts"] == 12 and stats["dropped_bytes"] > 0  # the cuts did drop data
    assert len(led.durable) > 50 and len(led.acked) > 50
    assert led.lost_durable == 0
    assert led.lost_acked == 0
    assert led.seq_regressions == 0
    assert led.salvages == 0
    assert led.unclean_gaps == 12  # each cut is seen as an unclean stop at the next open
