"""Remote configuration swaps edge stages on a running gateway (``DataPath.rebuild_stages``).

Before, every rules/anomaly change replaced all stages without flushing the old ones (an open
aggregation window's readings were lost, a durable push waiting on them never completed), and
a changed device ``aggregate`` rebuilt nothing (the old windows went on until a restart). Now
only the stages whose configuration changed are rebuilt, after the old ones are flushed out;
the others keep their state. Real SQLite outbox in the real outbox thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edgegw.config import GatewayConfig, load_config
from edgegw.edge.aggregate import AggregateStage
from edgegw.edge.config import AggregateConfig
from edgegw.model import Sample
from edgegw.runtime.datapath import DataPath
from edgegw.runtime.outbox_reader import read_outbox, read_outbox_samples
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox

from .helpers import gateway_config, write_config

GW = "rebuild-gw"
T0 = 1_700_000_000_000


def _config(tmp_path: Path, name: str, state: Path, **sections: Any) -> GatewayConfig:
    doc = gateway_config(GW, state, **sections)
    return load_config(write_config(tmp_path / name, doc))


def _device(aggregate: dict[str, Any] | None) -> dict[str, Any]:
    dev: dict[str, Any] = {"id": "d", "driver": "modbus", "options": {
        "transport": "tcp", "host": "127.0.0.1", "port": 1502,
        "points": [{"name": "v", "kind": "holding", "address": 0, "type": "uint16"}]}}
    if aggregate is not None:
        dev["aggregate"] = aggregate
    return dev


RULE = {"name": "hot", "device": "d", "when": "v > 100", "severity": "warning"}


async def test_only_changed_stages_are_rebuilt_and_the_old_windows_are_stored(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    hour = {"window": "1h", "functions": ["count", "sum"]}
    cfg1 = _config(tmp_path, "a.yaml", state, devices=[_device(hour)], rules=[RULE])
    dp = DataPath(cfg1, state, None)
    await dp.start()
    try:
        assert dp.pipeline is not None
        rules1, agg1 = dp.pipeline.stages
        assert (rules1.name, agg1.name) == ("rules", "aggregate")
        now = dp.pipeline._clock_ms()
        # readings inside the open hour window, one of them starting a rule episode
        await dp.submit([Sample("d", "v", now - 3, 5.0), Sample("d", "v", now - 2, 7.0)])
        await dp.submit([Sample("d", "v", now - 1, 150.0)])
        assert dp.pipeline.held == 3

        # the same config again: nothing is rebuilt, nothing flushed
        dp.cfg = _config(tmp_path, "a2.yaml", state, devices=[_device(hour)], rules=[RULE])
        assert dp.rebuild_stages() == {"built": [], "flushed": []}
        assert dp.pipeline.stages == [rules1, agg1] and dp.pipeline.held == 3

        # the device's aggregate changes (before: nothing was rebuilt for it): the aggregate
        # stage is flushed out (its open window stored) and rebuilt; the rule stage is kept,
        # with its active episode
        minute = {"window": "1m", "functions": ["max"]}
        dp.cfg = _config(tmp_path, "b.yaml", state, devices=[_device(minute)], rules=[RULE])
        assert dp.rebuild_stages() == {"built": ["aggregate"], "flushed": ["aggregate"]}
        rules2, agg2 = dp.pipeline.stages
        assert rules2 is rules1 and agg2 is not agg1 and dp.pipeline.held == 0
        assert rules1.stats()["active"] == 1
        await dp.submit([Sample("d", "v", now + 1, 9.0)])  # into the new 1-minute window

        # aggregation removed: its open window is stored too, samples pass raw from now on
        dp.cfg = _config(tmp_path, "c.yaml", state, devices=[_device(None)], rules=[RULE])
        assert dp.rebuild_stages() == {"built": [], "flushed": ["aggregate"]}
        assert dp.pipeline.stages == [rules1]
        await dp.submit([Sample("d", "v", now + 2, 11.0)])
    finally:
        await dp.stop()
    stored = {(s.metric, s.ts_ms): s.value for s in read_outbox_samples(state, GW)}
    hour_start = (now - 3) // 3_600_000 * 3_600_000
    minute_start = (now + 1) // 60_000 * 60_000
    assert stored[("v.count", hour_start)] == 3 and stored[("v.sum", hour_start)] == 162.0
    assert stored[("v.max", minute_start)] == 9.0
    assert stored[("v", now + 2)] == 11.0
    assert ("v", now - 2) not in stored  # aggregated, not raw: the window held it


@contextlib.asynccontextmanager
async def _outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, OutboxThread]]:
    """The real outbox in its own thread, closed at the end."""
    (tmp_path / "gateway-id").write_text(GW + "\n")
    thread = OutboxThread()
    sealer = make_sealer(GW, tmp_path, None)
    outbox = await thread.call(
        lambda: Outbox(tmp_path / "outbox.db", max_bytes=1 << 24, sealer=sealer))
    try:
        yield outbox, thread
    finally:
        await thread.call(outbox.close)
        thread.shutdown()


async def _run_until_done(pipe: Pipeline, held: asyncio.Task[None],
                          tmp_path: Path) -> dict[tuple[str, int], Any]:
    """Tick the pipeline as ``Pipeline.run`` does (every 50 ms, here 20) until the held durable
    push completes; then what the outbox holds, by (metric, ts)."""
    async def clock_runs() -> None:
        while not held.done():
            await pipe.tick_once()
            await asyncio.sleep(0.02)

    await asyncio.wait_for(asyncio.gather(held, clock_runs()), 5)
    await pipe.batcher.drain()
    return {(s.metric, s.ts_ms): s.value for s in read_outbox_samples(tmp_path, GW)}


async def test_a_durable_push_held_by_a_replaced_stage_completes(tmp_path: Path) -> None:
    async with _outbox(tmp_path) as (outbox, thread):
        old = AggregateStage({"d": AggregateConfig(window=3600.0, functions=["count"])})
        pipe = Pipeline(Batcher(outbox, thread, max_readings=1000, max_age=0.05), [old],
                        clock_ms=lambda: T0 + 10)
        held = asyncio.create_task(
            pipe.submit([Sample("d", "v", T0 + i, float(i)) for i in range(4)], durable=True))
        await asyncio.sleep(0.1)  # two seal ages: only the window's end may complete it
        assert not held.done() and pipe.held == 4
        new = AggregateStage({"d": AggregateConfig(window=60.0, functions=["count"])})
        assert pipe.replace_stages([new]) == ["aggregate"]
        assert pipe.stages == [new]

        stored = await _run_until_done(pipe, held, tmp_path)
        assert stored == {("v.count", T0 // 3_600_000 * 3_600_000): 4}


def _rule(name: str, when: str) -> dict[str, Any]:
    return {"name": name, "device": "d", "when": when, "severity": "warning"}


async def test_rule_episodes_carry_on_or_end_with_a_clear_alert(tmp_path: Path) -> None:
    """An unchanged rule keeps its episode (no second raise, its clear comes from the new
    stage); a changed or removed rule's episode is ended by a clear alert saying why (before,
    the cloud showed it active for ever)."""
    state = tmp_path / "state"
    rules1 = [_rule("hot", "v > 100"), _rule("vhot", "v > 120"), _rule("gone", "v > 110")]
    dp = DataPath(_config(tmp_path, "a.yaml", state, devices=[_device(None)], rules=rules1),
                  state, None)
    await dp.start()
    try:
        assert dp.pipeline is not None
        now = dp.pipeline._clock_ms()
        await dp.submit([Sample("d", "v", now - 10, 150.0)])  # all three raise
        (old,) = dp.pipeline.stages
        assert old.stats()["active"] == 3
        rules2 = [_rule("hot", "v > 100"), _rule("vhot", "v > 130")]
        dp.cfg = _config(tmp_path, "b.yaml", state, devices=[_device(None)], rules=rules2)
        assert dp.rebuild_stages() == {"built": ["rules"], "flushed": ["rules"]}
        (new,) = dp.pipeline.stages
        assert new.stats()["active"] == 1 and old.stats()["retired"] == 2
        await dp.submit([Sample("d", "v", now - 5, 150.0)])  # vhot (changed) raises anew
        await dp.submit([Sample("d", "v", now, 50.0)])  # hot and vhot clear
    finally:
        await dp.stop()
    _, alerts, _ = read_outbox(state, gateway_id=GW)
    seen = [(a.rule, a.active, "new configuration" in a.message) for a in alerts]
    assert sorted(seen) == sorted([
        ("hot", True, False), ("vhot", True, False), ("gone", True, False),  # first sample
        ("vhot", False, True), ("gone", False, True),  # retired by the new configuration
        ("vhot", True, False),  # the changed rule's own new episode
        ("hot", False, False), ("vhot", False, False),  # cleared by the new stage
    ]), seen


async def test_a_kept_stage_that_moves_keeps_its_durable_waiters(tmp_path: Path) -> None:
    """The rules stage in front is removed, so the kept aggregation stage moves from the second
    place to the first: the durable push it holds still completes when its window closes."""
    from edgegw.edge.config import RuleConfig
    from edgegw.edge.rules import RuleStage

    async with _outbox(tmp_path) as (outbox, thread):
        clock = [T0 + 10]
        rules = RuleStage([RuleConfig.model_validate(_rule("hot", "v > 100"))])
        agg = AggregateStage({"d": AggregateConfig(window=1.0, lateness=0.0, functions=["count"])})
        pipe = Pipeline(Batcher(outbox, thread, max_readings=1000, max_age=0.05), [rules, agg],
                        clock_ms=lambda: clock[0])
        held = asyncio.create_task(
            pipe.submit([Sample("d", "v", T0 + i, float(i)) for i in range(3)], durable=True))
        await asyncio.sleep(0.1)
        assert not held.done() and pipe.held == 3
        assert pipe.replace_stages([agg]) == ["rules"]
        assert not held.done() and pipe.held == 3  # the window is still open: still held
        clock[0] = T0 + 1000  # the window [T0, T0 + 1 s) closes

        stored = await _run_until_done(pipe, held, tmp_path)
        assert stored == {("v.count", T0 // 1000 * 1000): 3}
