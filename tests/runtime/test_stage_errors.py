"""A broken edge stage never costs data: its input passes through unchanged, the failure is
counted (``stage_errors``) and its traceback logged for the first failure (then at most once a
minute, so a stage failing on every poll does not flood the log). Real outbox."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgegw.edge.stage import NoHolds, StageOutput
from edgegw.model import Sample
from edgegw.runtime.outbox_reader import read_outbox_samples
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox

GW = "stage-err-gw"
T = 1_700_000_000_000


class Broken(NoHolds):
    """A stage of the test's own that fails on every call."""

    name = "broken"

    def process(self, samples: list[Sample], now_ms: int) -> StageOutput:
        raise ZeroDivisionError("a bug in a stage")

    def tick(self, now_ms: int) -> StageOutput:
        raise ZeroDivisionError("a bug in a stage's tick")

    def stats(self) -> dict[str, int]:
        return {}


async def test_a_failing_stage_passes_its_input_through_and_logs_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gateway-id").write_text(GW + "\n")
    thread = OutboxThread()
    sealer = make_sealer(GW, tmp_path, None)
    outbox = await thread.call(
        lambda: Outbox(tmp_path / "outbox.db", max_bytes=1 << 24, sealer=sealer))
    pipe = Pipeline(Batcher(outbox, thread, max_readings=1000, max_age=60.0), [Broken()],
                    clock_ms=lambda: T + 100)
    try:
        with caplog.at_level(logging.ERROR, logger="edgegw.pipeline"):
            for i in range(5):
                await pipe.submit([Sample("d", "v", T + i, float(i))])
                await pipe.tick_once()
            await pipe.flush()
        # 5 process, 5 ticks, and the flush: its tick and the stage flush (a tick here)
        assert pipe.stage_errors == {"broken": 12}
        logged = [r for r in caplog.records if "edge stage broken failed" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
        stored = sorted((s.ts_ms, s.value) for s in read_outbox_samples(tmp_path, GW))
        assert stored == [(T + i, float(i)) for i in range(5)]
    finally:
        await thread.call(outbox.close)
        thread.shutdown()
