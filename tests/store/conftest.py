"""Shared helpers for the outbox tests: a real Sealer and real encoded batches."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgegw.model import Quality, Sample
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer
from edgegw.store import Outbox

GW = "gw-store-test"
KEY = bytes(range(32))


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(KEY, 3, GW)


def make_batch(rng: random.Random, n: int, ts0: int, noisy: bool = False) -> tuple[bytes, int]:
    """An encoded batch of ``n`` readings of a few registers; noisy floats do not compress."""
    samples = []
    for i in range(n):
        v = rng.random() * 1e6 if noisy else round(20 + i * 0.01, 2)
        q = Quality.GOOD if i % 17 else Quality.COMM_ERROR
        samples.append(Sample("dev", f"r{i % 8}", ts0 + i, None if q else v, q))
    return encode_batch(samples), n


@pytest.fixture
def open_outbox(tmp_path: Path, sealer: Sealer) -> Iterator[Callable[..., Outbox]]:
    opened: list[Outbox] = []

    def factory(**kw: object) -> Outbox:
        kw.setdefault("max_bytes", 1 << 20)
        kw.setdefault("first_seq", 1)
        ob = Outbox(tmp_path / "outbox.db", sealer=sealer, **kw)  # type: ignore[arg-type]
        opened.append(ob)
        return ob

    yield factory
    for ob in opened:
        ob.close()
