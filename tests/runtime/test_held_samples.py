"""The pipeline's durability promise covers samples held by edge stages (open aggregation windows).

- A durable emit into a window completes only once the aggregate containing its samples is sealed
  in the (real, SQLite) outbox; a durable raw emit completes at once.
- ``flush()`` (what SIGTERM runs) seals every held and pending sample; and end to end: a daemon
  stopped by SIGTERM with every window still open has, in its outbox, aggregates whose counts add
  up to exactly the readings its driver produced (counted from the driver: a counter signal).
- SIGKILL: the documented bound (docs/architecture.md) — what is lost is only readings of windows
  still open or not yet sealed at the kill; every closed window's aggregate is in the outbox and
  covers exactly the raw readings of that window.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

from edgegw.edge.aggregate import AggregateStage
from edgegw.edge.config import AggregateConfig
from edgegw.model import Sample
from edgegw.runtime.outbox_reader import read_outbox_samples
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer
from edgegw.store.outbox import Outbox

from .helpers import gateway_config, poll_until, start_daemon, stop_daemon, write_config

GW = "held-gw"


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


async def _pipeline(state: Path, clock: Clock) -> tuple[Pipeline, Outbox, OutboxThread]:
    state.mkdir(parents=True, exist_ok=True)
    (state / "gateway-id").write_text(GW + "\n")
    thread = OutboxThread()
    sealer = make_sealer(GW, state, None)
    outbox = await thread.call(
        lambda: Outbox(state / "outbox.db", max_bytes=1 << 24, sealer=sealer)
    )
    batcher = Batcher(outbox, thread, max_readings=1000, max_age=0.05)
    stage = AggregateStage(
        {"d": AggregateConfig(window=1.0, lateness=0.0, functions=["count", "max"],
                              metrics={"raw": {"raw": True}})}
    )
    return Pipeline(batcher, [stage], clock_ms=clock), outbox, thread


async def test_durable_emit_into_a_window_completes_when_its_aggregate_is_sealed(
    tmp_path: Path,
) -> None:
    t0 = 1_700_000_000_000
    clock = Clock(t0 + 100)
    pipe, outbox, thread = await _pipeline(tmp_path, clock)
    try:
        await pipe.submit([Sample("d", "raw", t0 + 100, 1.0)], durable=True)  # raw: at once
        assert pipe.batcher.readings_sealed == 1
        held = asyncio.create_task(
            pipe.submit([Sample("d", "v", t0 + 100 + i, float(i)) for i in range(5)], durable=True)
        )
        await asyncio.sleep(0.2)  # several seal ages: nothing may complete the held emit yet
        assert not held.done()
        assert pipe.held == 5 and pipe.stats()["durable_waiting_on_holds"] == 1
        clock.ms = t0 + 1000  # the window [t0, t0+1000) closes

        async def clock_runs() -> None:  # what Pipeline.run does every 50 ms
            while not held.done():
                await pipe.tick_once()
                await asyncio.sleep(0.02)

        # completes once the aggregate's batch is sealed (by age, at the next ticks)
        await asyncio.wait_for(asyncio.gather(held, clock_runs()), 5)
        assert pipe.held == 0
        got = {s.metric: s.value for s in read_outbox_samples(tmp_path, GW) if s.device == "d"}
        assert got == {"raw": 1.0, "v.count": 5, "v.max": 4.0}
    finally:
        await thread.call(outbox.close)
        thread.shutdown()


async def test_flush_seals_open_windows(tmp_path: Path) -> None:
    t0 = 1_700_000_000_000
    clock = Clock(t0)
    pipe, outbox, thread = await _pipeline(tmp_path, clock)
    try:
        await pipe.submit([Sample("d", "v", t0 + i, float(i)) for i in range(7)])
        assert pipe.held == 7
        await pipe.flush()
        assert pipe.held == 0
        got = {s.metric: s.value for s in read_outbox_samples(tmp_path, GW)}
        assert got == {"v.count": 7, "v.max": 6.0}
    finally:
        await thread.call(outbox.close)
        thread.shutdown()


def _stored(state: Path) -> list[Sample]:
    """The outbox's samples; none while the daemon is still creating it."""
    try:
        return read_outbox_samples(state, GW)
    except (sqlite3.OperationalError, FileNotFoundError):
        return []


def _counter_config(tmp_path: Path, state: Path, window: str, poll: str) -> Path:
    doc = gateway_config(
        GW,
        state,
        batch={"max_age": "100ms"},
        devices=[
            {
                "id": "src",
                "driver": "sim",
                "poll": poll,
                "stagger": False,
                "options": {
                    "points": [
                        {"name": "c", "signal": "counter", "offset": 0, "step": 1},
                        {"name": "r", "signal": "counter", "offset": 0, "step": 1},
                    ]
                },
                "aggregate": {
                    "window": window,
                    "lateness": "0s",
                    "functions": ["count", "max"],
                    "metrics": {"r": {"raw": True}},
                },
            }
        ],
    )
    return write_config(tmp_path / "gw.yaml", doc)


def test_sigterm_seals_every_open_window(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = _counter_config(tmp_path, state, window="1h", poll="20ms")  # no window closes
    proc = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        # the raw twin `r` shows the driver is producing (its readings are sealed at once)
        poll_until(
            lambda: sum(1 for s in _stored(state) if s.metric == "r") >= 20,
            30,
            "the daemon to seal raw readings",
        )
    finally:
        rc = stop_daemon(proc)
    assert rc == 0, (tmp_path / "daemon.log").read_text()
    samples = read_outbox_samples(state, GW)
    counts = [int(s.value) for s in samples if s.metric == "c.count"]  # type: ignore[arg-type]
    maxes = [float(s.value) for s in samples if s.metric == "c.max"]  # type: ignore[arg-type]
    raw_r = sorted(float(s.value) for s in samples if s.metric == "r")  # type: ignore[arg-type]
    # Counted from the driver: the counter's last value is the number of polls it answered.
    produced = int(max(maxes))
    assert sum(counts) == produced >= 20
    # and the raw twin (polled in the same reads) was sealed poll for poll
    assert raw_r == [float(i) for i in range(1, produced + 1)]


def test_sigkill_loses_only_open_windows_and_unsealed_readings(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = _counter_config(tmp_path, state, window="500ms", poll="20ms")
    proc = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        poll_until(
            lambda: sum(1 for s in _stored(state) if s.metric == "c.count") >= 3,
            30,
            "three closed windows",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    samples = read_outbox_samples(state, GW)
    raw = {int(s.value): s.ts_ms for s in samples if s.metric == "r"}  # type: ignore[arg-type]
    windows = {s.ts_ms: int(s.value) for s in samples if s.metric == "c.count"}  # type: ignore[arg-type]
    # Raw readings: sealed in order, so what is lost is a suffix (the unsealed tail), no hole.
    assert sorted(raw) == list(range(1, len(raw) + 1))
    # Every sealed window covers exactly the raw readings of its 500 ms (same polls): nothing
    # inside a sealed aggregate was lost, and no sealed window is partial.
    for start, count in windows.items():
        assert count == sum(1 for ts in raw.values() if start <= ts < start + 500), start
    # What is missing is only the windows still open at the kill: every raw reading older than
    # the newest sealed window's end lies in a sealed window.
    sealed_until = max(windows) + 500
    orphans = [ts for ts in raw.values() if ts < sealed_until and ts // 500 * 500 not in windows]
    assert not orphans
