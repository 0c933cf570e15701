"""A driver value the encoder cannot store (a numpy integer, a Decimal, an int over 64 bits, a
PointValue inside ``Columns``) must not lose the batch it is in: before this, the encoder's
CodecError failed the whole batch, every device's readings in it ("sealing a telemetry batch
failed"). Now the reading is stored as BAD_DATA with no value, counted in ``bad_values`` and
logged once per series; the rest of the batch is stored as read.

Also ``Columns``, the SDK's column result: a read-only mapping, and the poller hands its columns
on as one SampleBlock. Real SQLite outbox in the real outbox thread, with the v1 encoder and
with the v2 dictionary encoder (which takes SampleBlocks as they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgegw import Columns, DriverOptions, PointValue, PolledDriver, Quality
from edgegw.model import Sample
from edgegw.protocol.codec import CodecError
from edgegw.protocol.model import SampleBlock
from edgegw.runtime.outbox_reader import read_outbox_samples
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.poller import DevicePoller
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox
from edgegw.store.series_dict import FILE_NAME, SeriesDictionary

GW = "badvalue-gw"
T = 1_700_000_000_000


class ColumnsDriver(PolledDriver):
    """Returns the next item of ``script`` (a driver of the test's own)."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(DriverOptions())
        self.script = script

    async def read(self) -> Any:
        return self.script.pop(0)


def test_columns_is_a_read_only_mapping() -> None:
    names = ("a", "b", "c")
    cols = Columns(names, [1, 2.5, None])
    assert cols == {"a": 1, "b": 2.5, "c": None}
    assert list(cols) == ["a", "b", "c"] and len(cols) == 3
    assert cols["b"] == 2.5 and "c" in cols and "z" not in cols and cols.get("z") is None
    assert list(cols.values()) == [1, 2.5, None]  # the Mapping method, not the column
    assert cols.names is names and cols.data == [1, 2.5, None]
    with pytest.raises(KeyError):
        cols["z"]
    with pytest.raises(ValueError, match="2 names but 1 values"):
        Columns(("a", "b"), [1])


async def test_the_poller_hands_columns_on_as_one_block_with_stable_keys() -> None:
    names = ("a", "b")
    out: list[Any] = []
    driver = ColumnsDriver([Columns(names, [1, 2]), Columns(names, [3, 4]),
                            Columns(("a", "b"), [5, 6]), Columns(("a", "c"), [7, 8])])
    poller = DevicePoller("dev", driver, period=1.0, timeout=5.0, sink=out.append,
                          wall_clock=lambda: T)
    for _ in range(4):
        assert await poller.poll()
    blocks: list[SampleBlock] = out
    assert all(type(b) is SampleBlock for b in blocks)
    assert blocks[0].metrics is names and blocks[0].values == [1, 2]
    assert blocks[0] == [Sample("dev", "a", T, 1), Sample("dev", "b", T, 2)]
    assert blocks[1].keys is blocks[0].keys  # same names tuple: the series keys are reused
    assert blocks[2].keys is blocks[0].keys  # an equal tuple: reused too
    assert blocks[3].keys == (("dev", "a"), ("dev", "c"))


@contextlib.asynccontextmanager
async def _pipeline(tmp_path: Path, dictionary: bool) -> AsyncIterator[tuple[Pipeline, Batcher]]:
    """A pipeline without stages on the real outbox (in its thread), v1 or v2 encoder."""
    (tmp_path / "gateway-id").write_text(GW + "\n")
    thread = OutboxThread()
    sealer = make_sealer(GW, tmp_path, None)
    outbox = await thread.call(lambda: Outbox(tmp_path / "outbox.db", max_bytes=1 << 24,
                                              sealer=sealer))
    sd = await thread.call(SeriesDictionary, tmp_path / FILE_NAME) if dictionary else None
    batcher = Batcher(outbox, thread, max_readings=100_000, max_age=60.0, quiet=0.0,
                      min_interval=0.0, encode=sd.encode if sd is not None else None)
    try:
        yield Pipeline(batcher), batcher
    finally:
        if sd is not None:
            await thread.call(sd.close)
        await thread.call(outbox.close)
        thread.shutdown()


@pytest.mark.parametrize("dictionary", [False, True], ids=["v1", "v2-dictionary"])
async def test_a_bad_value_is_stored_as_bad_data_and_the_batch_survives(
        tmp_path: Path, dictionary: bool, caplog: pytest.LogCaptureFixture) -> None:
    async with _pipeline(tmp_path, dictionary) as (pipe, batcher):
        names = ("r0", "r1", "r2")
        good = [SampleBlock("good", names, T, [1, 2, 3]), [Sample("good", "x", T + 1, 4.5)]]
        bad: list[Any] = [
            SampleBlock("np", names, T + 2, [np.int64(7), 8, 9]),  # a numpy integer in a block
            [Sample("dec", "d", T + 3, Decimal("1.5")),  # type: ignore[arg-type]
             Sample("big", "b", T + 4, 2**70)],  # over 64 bits
            SampleBlock("pv", ("p",), T + 5, [PointValue(3)]),  # type: ignore[list-item]
        ]
        with caplog.at_level(logging.WARNING, logger="edgegw.pipeline"):
            for polled in [good[0], bad[0], bad[1], good[1], bad[2]]:
                await pipe.submit(polled)
            await pipe.batcher.drain()
            # the same bad series again: counted, not logged again
            await pipe.submit(SampleBlock("np", names, T + 6, [np.int64(1), 2, 3]))
            await pipe.batcher.drain()
        assert batcher.seal_errors == 0
        assert batcher.bad_values == 5 and batcher.stats()["bad_values"] == 5
        assert batcher.readings_sealed == 3 + 3 + 2 + 1 + 1 + 3
        stored = {(s.device, s.metric, s.ts_ms): (s.value, s.quality)
                  for s in read_outbox_samples(tmp_path, GW)}
        assert stored[("good", "r2", T)] == (3, Quality.GOOD)
        assert stored[("good", "x", T + 1)] == (4.5, Quality.GOOD)
        assert stored[("np", "r0", T + 2)] == (None, Quality.BAD_DATA)
        assert stored[("np", "r1", T + 2)] == (8, Quality.GOOD)
        assert stored[("dec", "d", T + 3)] == (None, Quality.BAD_DATA)
        assert stored[("big", "b", T + 4)] == (None, Quality.BAD_DATA)
        assert stored[("pv", "p", T + 5)] == (None, Quality.BAD_DATA)
        assert stored[("np", "r0", T + 6)] == (None, Quality.BAD_DATA)
        assert len(stored) == 13
        warned = [r.getMessage() for r in caplog.records if "stored as bad_data" in r.getMessage()]
        assert len(warned) == 4, warned  # once per series: np/r0, dec/d, big/b, pv/p
        assert any("unsupported value type int64" in w and "'np'" in w for w in warned)
    await asyncio.sleep(0)


@pytest.mark.parametrize("dictionary", [False, True], ids=["v1", "v2-dictionary"])
async def test_a_reading_that_cannot_be_stored_at_all_is_dropped_alone(
        tmp_path: Path, dictionary: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A push driver's own Sample with a float timestamp or a non-str metric cannot be stored
    even without its value: that reading is dropped, counted (``bad_readings``) and logged once
    per series; the rest of its batch is stored as read (before, the whole batch was lost)."""
    async with _pipeline(tmp_path, dictionary) as (pipe, batcher):
        with caplog.at_level(logging.WARNING, logger="edgegw.pipeline"):
            await pipe.submit([Sample("good", "a", T, 1.0),
                               Sample("push", "t", float(T) + 0.5, 2.0),  # type: ignore[arg-type]
                               Sample("push", 5, T, 3.0),  # type: ignore[arg-type]
                               Sample("push", "q", T, 4.0, 99),  # type: ignore[arg-type]
                               Sample("good", "b", T + 1, 5)])
            await pipe.batcher.drain()
            # a batch of nothing but unstorable readings: nothing to append, counted, and no
            # error per batch (a driver doing this every second would flood the log)
            await pipe.submit([Sample("push", "t", float(T) + 1.5, 6.0)])  # type: ignore[arg-type]
            await pipe.batcher.drain()
            with pytest.raises(CodecError, match="all 1 readings of the batch were dropped"):
                await pipe.submit([Sample("push", "t", float(T) + 2.5, 7.0)],  # type: ignore[arg-type]
                                  durable=True)
        assert batcher.seal_errors == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert batcher.bad_readings == 4 and batcher.stats()["bad_readings"] == 4
        assert batcher.bad_values == 1  # the unknown quality: stored as bad_data
        assert batcher.readings_sealed == 3  # what the outbox holds
        stored = {(s.device, s.metric, s.ts_ms): (s.value, s.quality)
                  for s in read_outbox_samples(tmp_path, GW)}
        assert stored == {("good", "a", T): (1.0, Quality.GOOD),
                          ("push", "q", T): (None, Quality.BAD_DATA),
                          ("good", "b", T + 1): (5, Quality.GOOD)}
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped) == 2, dropped  # once per series: push/t, push/5
        assert any("ts_ms must be int" in w for w in dropped)
    await asyncio.sleep(0)
