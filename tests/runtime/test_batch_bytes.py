"""``batch.max_bytes``: a telemetry batch is sealed once the str and bytes values pending reach
it; numbers never count (they are bounded by ``max_readings``). Real SQLite outbox in the real
outbox thread; ``max_age`` far beyond the test and no round seals, so every seal observed here
is a size seal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from edgegw.model import Sample
from edgegw.protocol.model import SampleBlock
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox

GW = "bytes-gw"
T = 1_700_000_000_000
KIB = 1024


async def _until(pred: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_strings_and_bytes_seal_at_max_bytes_numbers_do_not(tmp_path: Path) -> None:
    thread = OutboxThread()
    sealer = make_sealer(GW, tmp_path, None)
    outbox = await thread.call(lambda: Outbox(tmp_path / "outbox.db", max_bytes=1 << 26,
                                              sealer=sealer))
    b = Batcher(outbox, thread, max_readings=100_000, max_age=600.0, quiet=0.0,
                max_bytes=64 * KIB)
    pipe = Pipeline(b)
    try:
        # 20,000 numbers (blocks of a poll): far under max_readings, no bytes: no seal
        names = tuple(f"r{i}" for i in range(100))
        for n in range(200):
            await pipe.submit(SampleBlock("num", names, T + n, list(range(100))))
        assert b.batches_sealed == 0 and not b._inflight
        # strings of 10,000 characters, one per submit: the 7th reaches 64 KiB
        for n in range(20):
            await pipe.submit([Sample("serial", "line", T + n, "x" * 10_000)])
        await _until(lambda: b.batches_sealed == 2, 10.0, "two size seals")
        assert b.readings_sealed == 20_000 + 7 + 7  # the first seal took the numbers along
        await b.drain()  # the 6 strings left: a batch of their own
        assert b.batches_sealed == 3 and b.readings_sealed == 20_020
        # str values inside a poll's block count too: 10,000 bytes a block, the 7th seals
        text = tuple(f"s{i}" for i in range(10))
        for n in range(6):
            await pipe.submit(SampleBlock("txt", text, T + n, ["y" * 1000] * 10))
        assert b.batches_sealed == 3 and not b._inflight
        await pipe.submit(SampleBlock("txt", text, T + 6, ["y" * 1000] * 10))
        await _until(lambda: b.batches_sealed == 4, 10.0, "a seal of string blocks")
        assert b.readings_sealed == 20_020 + 70
        # one bytes value over the limit is a batch of its own
        await pipe.submit([Sample("blob", "b", T, b"\0" * (65 * KIB))])
        await _until(lambda: b.batches_sealed == 5, 10.0, "the bytes value's seal")
        assert b.readings_sealed == 20_020 + 70 + 1
        assert b.seal_errors == 0
    finally:
        await thread.call(outbox.close)
        thread.shutdown()
