"""Round seals (``edgegw.runtime.pipeline`` module doc, docs/delivery.md): a telemetry batch is
sealed once its poll round is in (no reading for ``quiet``), not after ``max_age``; at most one
round seal per ``min_interval``; none while the link is slow (adaptive age above ``max_age``).

Real SQLite outbox in the real outbox thread. ``max_age`` is set far beyond each test's deadline
and no pipeline clock runs, so any seal observed here is a round seal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgegw.model import Quality, Sample
from edgegw.protocol.model import SampleBlock
from edgegw.runtime.outbox_reader import read_outbox_samples
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox
from edgegw.store.series_dict import FILE_NAME, SeriesDictionary

GW = "round-gw"
FAR = 60.0  # max_age: never reached within a test


async def _pipeline(state: Path, *, quiet: float, min_interval: float) -> tuple[
        Pipeline, Outbox, OutboxThread]:
    state.mkdir(parents=True, exist_ok=True)
    thread = OutboxThread()
    sealer = make_sealer(GW, state, None)
    outbox = await thread.call(lambda: Outbox(state / "outbox.db", max_bytes=1 << 24,
                                              sealer=sealer))
    batcher = Batcher(outbox, thread, max_readings=100_000, max_age=FAR, quiet=quiet,
                      min_interval=min_interval)
    return Pipeline(batcher), outbox, thread


async def _until(pred: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def _poll(device: str, ts: int) -> list[Sample]:
    return [Sample(device, f"r{i}", ts, float(i)) for i in range(100)]


async def _close(outbox: Outbox, thread: OutboxThread) -> None:
    await thread.call(outbox.close)
    thread.shutdown()


async def test_a_poll_round_is_sealed_once_it_is_in_not_after_max_age(tmp_path: Path) -> None:
    pipe, outbox, thread = await _pipeline(tmp_path, quiet=0.005, min_interval=0.0)
    b = pipe.batcher
    try:
        # one round: three devices answering back to back, then the bus is quiet
        for d in range(3):
            await pipe.submit(_poll(f"u{d}", 1_700_000_000_000))
        await _until(lambda: b.batches_sealed == 1, 10.0, "the round's seal")
        assert b.round_seals == 1 and b.readings_sealed == 300  # the whole round, one batch
        assert (await thread.call(outbox.stats))["batches"]["telemetry"] == 1
        # the next round is a batch of its own
        await pipe.submit(_poll("u0", 1_700_000_000_100))
        await _until(lambda: b.batches_sealed == 2, 10.0, "the second round's seal")
        assert b.readings_sealed == 400 and b.round_seals == 2
    finally:
        await _close(outbox, thread)


async def test_a_steady_stream_gets_at_most_one_round_seal_per_min_interval(
        tmp_path: Path) -> None:
    pipe, outbox, thread = await _pipeline(tmp_path, quiet=0.001, min_interval=0.1)
    b = pipe.batcher
    try:
        t0 = time.monotonic()
        for k in range(40):  # a poll every ~10 ms for ~0.4 s, each followed by a quiet gap
            await pipe.submit(_poll("u0", 1_700_000_000_000 + k))
            await asyncio.sleep(0.01)  # the plant's poll period (pacing, not synchronisation)
        elapsed = time.monotonic() - t0
        await _until(lambda: b.readings_sealed == 4000, 10.0, "the last round's seal")
        # every reading arrived before a quiet gap, yet batches are bounded by min_interval
        assert b.batches_sealed <= int(elapsed / 0.1) + 2, (b.batches_sealed, elapsed)
        assert b.batches_sealed >= 2  # and it did not wait for max_age either
    finally:
        await _close(outbox, thread)


async def test_no_round_seal_while_the_link_is_slow(tmp_path: Path) -> None:
    pipe, outbox, thread = await _pipeline(tmp_path, quiet=0.001, min_interval=0.0)
    b = pipe.batcher
    b.age_policy = lambda: 3.0  # the adaptive age grew above max_age... of this batcher
    b.max_age = 0.25
    try:
        await pipe.submit(_poll("u0", 1_700_000_000_000))
        armed = b._round_timer
        assert armed is not None
        await _until(lambda: b._round_timer is None, 10.0, "the round check to run")
        assert b.round_seals == 0 and b.batches_sealed == 0  # left to age/size: bigger batches
        b.age_policy = lambda: 0.25  # the link keeps up again: the next reading seals its round
        await pipe.submit(_poll("u1", 1_700_000_000_000))
        await _until(lambda: b.batches_sealed == 1, 10.0, "the round's seal")
        assert b.readings_sealed == 200 and b.round_seals == 1
    finally:
        await _close(outbox, thread)


async def test_poll_blocks_reach_the_outbox_as_columns_in_arrival_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls' SampleBlocks travel to the v2 encoder as columns (no Sample made on the way);
    a plain sample list arriving in between (a failed poll) turns the blocks pending before
    it into samples, so the batch keeps the arrival order either way."""
    (tmp_path / "gateway-id").write_text(GW + "\n")
    thread = OutboxThread()
    sealer = make_sealer(GW, tmp_path, None)
    outbox = await thread.call(lambda: Outbox(tmp_path / "outbox.db", max_bytes=1 << 24,
                                              sealer=sealer))
    sd = await thread.call(SeriesDictionary, tmp_path / FILE_NAME)
    b = Batcher(outbox, thread, max_readings=100_000, max_age=FAR, quiet=0.005,
                min_interval=0.0, encode=sd.encode)
    pipe = Pipeline(b)
    names = tuple(f"r{i}" for i in range(10))

    def block(dev: str, ts: int) -> SampleBlock:
        return SampleBlock(dev, names, ts, [ts % 1000 + i for i in range(10)])

    t = 1_700_000_000_000
    try:
        first = [block("u0", t), [Sample("u9", "r0", t + 1, None, Quality.COMM_ERROR)],
                 block("u1", t + 2)]
        for polled in first:
            await pipe.submit(polled)
        await _until(lambda: b.batches_sealed == 1, 10.0, "the first round's seal")
        # blocks only: never iterated on the way to the outbox
        second = [block("u0", t + 100), block("u1", t + 102)]
        with monkeypatch.context() as m:
            m.setattr(SampleBlock, "__iter__", None)
            for polled in second:
                await pipe.submit(polled)
            await _until(lambda: b.batches_sealed == 2, 10.0, "the second round's seal")
        assert b.readings_sealed == 41 and b.seal_errors == 0
        want = [s for polled in first + second for s in polled]
        assert read_outbox_samples(tmp_path, GW) == want
    finally:
        await thread.call(sd.close)
        await _close(outbox, thread)
