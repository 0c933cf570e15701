"""Aggregation stage: window values exact against numpy on the same random stream, window
closing with lateness, report-by-exception, quality pass-through, per-metric overrides."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.edge.aggregate import AggregateStage
from edgegw.edge.config import AggregateConfig
from edgegw.model import Quality, Sample

ALL_FNS = ["min", "max", "mean", "count", "first", "last", "sum", "stddev"]


def agg(**kw: object) -> AggregateConfig:
    return AggregateConfig.model_validate(kw)


def test_windows_match_numpy_reference() -> None:
    rng = random.Random(11)
    stage = AggregateStage({"d1": agg(window="10s", functions=ALL_FNS, lateness="2s")})
    samples: list[Sample] = []
    t = 1_700_000_003_217
    for _ in range(6000):
        t += rng.randint(1, 900)
        for metric in ("temp", "flow"):
            samples.append(Sample("d1", metric, t, rng.gauss(50, 10)))
    out: list[Sample] = []
    i = 0
    while i < len(samples):  # random chunking, now = newest timestamp seen
        n = rng.randint(1, 50)
        chunk = samples[i : i + n]
        i += n
        out += stage.process(chunk, chunk[-1].ts_ms)[0]
        if rng.random() < 0.3:
            out += stage.tick(chunk[-1].ts_ms + rng.randint(0, 500))[0]
    out += stage.tick(t + 60_000)[0]
    got = {(x.metric, x.ts_ms): x.value for x in out}

    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for x in samples:
        groups[(x.metric, x.ts_ms // 10_000 * 10_000)].append(x.value)  # type: ignore[arg-type]
    assert len(got) == len(groups) * len(ALL_FNS)
    for (metric, start), values in groups.items():
        arr = np.array(values)
        ref = {
            "min": arr.min(),
            "max": arr.max(),
            "mean": arr.mean(),
            "count": len(arr),
            "first": arr[0],
            "last": arr[-1],
            "sum": arr.sum(),
            "stddev": arr.std(),
        }
        for fn, expected in ref.items():
            value = got[(f"{metric}.{fn}", start)]
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-9), (metric, start, fn)
        assert isinstance(got[(f"{metric}.count", start)], int)
    assert stage.stats()["late_dropped"] == 0


def test_window_closes_after_end_plus_lateness_and_drops_late_samples() -> None:
    stage = AggregateStage({"d1": agg(window="1m", functions=["count", "mean"], lateness="5s")})
    base = 1_700_000_040_000  # a multiple of 60 s
    assert base % 60_000 == 0
    out, _, _ = stage.process(
        [Sample("d1", "temp", base + k * 1000, float(k)) for k in range(60)], base + 59_000
    )
    assert out == []
    assert stage.tick(base + 60_000 + 4_999)[0] == []
    closed = stage.tick(base + 65_000)[0]
    assert {(x.metric, x.ts_ms, x.value) for x in closed} == {
        ("temp.count", base, 60),
        ("temp.mean", base, 29.5),
    }
    late = Sample("d1", "temp", base + 59_500, 1.0)
    assert stage.process([late], base + 66_000)[0] == []
    assert stage.stats()["late_dropped"] == 1


def test_wall_clock_step_back_closes_open_windows_and_keeps_aggregating() -> None:
    """NTP steps the clock 40 s back in the middle of a 10 s window: the open window is closed
    at once (not held for 40 s), and the samples of the stepped clock are aggregated, not
    dropped as late until the clock has caught up (which happened before the fix)."""
    stage = AggregateStage({"d1": agg(window="10s", functions=["count"], lateness="1s")})
    base = 1_700_000_000_000
    out: list[Sample] = []
    for k in range(25):  # 0 .. 12 s: one window closed, one open
        out += stage.process([Sample("d1", "v", base + k * 500, 1.0)], base + k * 500)[0]
    assert [(s.ts_ms, s.value) for s in out] == [(base, 20)]
    step = base + 12_500 - 40_000
    out = []
    for k in range(25):  # the stepped clock, 12 s of it
        out += stage.process([Sample("d1", "v", step + k * 500, 1.0)], step + k * 500)[0]
    out += stage.tick(step + 30_000)[0]
    st = stage.stats()
    assert st["clock_steps_back"] == 1 and st["late_dropped"] == 0
    # the window open at the step (5 samples) first, then the stepped clock's windows
    assert out[0].ts_ms == base + 10_000 and out[0].value == 5
    assert sum(s.value for s in out[1:]) == 25  # type: ignore[misc]
    assert stage.held() == 0


def test_non_good_and_non_numeric_pass_through_immediately() -> None:
    stage = AggregateStage({"d1": agg(window="1m")})
    bad = Sample("d1", "temp", 1_000, None, Quality.COMM_ERROR)
    text = Sample("d1", "mode", 1_000, "auto")
    out, _, _ = stage.process([Sample("d1", "temp", 900, 1.0), bad, text], 1_000)
    assert out == [bad, text]


def test_overrides_raw_and_name_template() -> None:
    stage = AggregateStage(
        {
            "d1": agg(
                window="10s",
                functions=["max"],
                name="{metric}_{fn}",
                metrics={
                    "state": {"raw": True},
                    "energy": {"functions": ["last"], "name": "{metric}"},
                },
            ),
            "d2": None,
        }
    )
    samples = [
        Sample("d1", "temp", 1000, 5.0),
        Sample("d1", "state", 1000, 3),
        Sample("d1", "energy", 1000, 10),
        Sample("d1", "energy", 2000, 11),
        Sample("d2", "temp", 1000, 7.0),
    ]
    out, _, _ = stage.process(samples, 2000)
    assert out == [samples[1], samples[4]]
    closed = stage.tick(20_000)[0]
    assert {(x.metric, x.value) for x in closed} == {("temp_max", 5.0), ("energy", 11)}


def test_deadband_sends_only_on_crossings() -> None:
    stage = AggregateStage({"d1": agg(deadband=0.5)})
    values = [10.0, 10.2, 10.4, 10.6, 10.3, 10.0, 10.9, 11.5, 11.5]
    out, _, _ = stage.process([Sample("d1", "p", k, v) for k, v in enumerate(values)], 100)
    # the reference is the last *sent* value: 10.6 is 0.6 from 10.0; 10.0 is 0.6 from 10.6;
    # 10.9 is 0.9 from 10.0; 11.5 is 0.6 from 10.9; the repeated 11.5 is no change
    assert [x.value for x in out] == [10.0, 10.6, 10.0, 10.9, 11.5]


def test_percent_deadband() -> None:
    stage = AggregateStage({"d1": agg(deadband_pct=5)})
    values = [100.0, 104.0, 106.0, 101.0, 100.0, 95.0, 94.9]
    out, _, _ = stage.process([Sample("d1", "p", k, v) for k, v in enumerate(values)], 100)
    # strictly more than 5 % of the last sent value: 95.0 is exactly 5 % below 100 -> not sent
    assert [x.value for x in out] == [100.0, 106.0, 100.0, 94.9]


def test_heartbeat_only_when_value_is_constant() -> None:
    stage = AggregateStage({"d1": agg(deadband=1, max_silence="10s")})
    out, _, _ = stage.process([Sample("d1", "p", k * 1000, 7.0) for k in range(26)], 26_000)
    assert [x.ts_ms for x in out] == [0, 10_000, 20_000]
    assert stage.stats()["heartbeats"] == 2


def test_quality_change_resets_report_by_exception() -> None:
    stage = AggregateStage({"d1": agg(deadband=1)})
    seq = [
        Sample("d1", "p", 0, 5.0),
        Sample("d1", "p", 1, 5.1),
        Sample("d1", "p", 2, None, Quality.COMM_ERROR),
        Sample("d1", "p", 3, 5.1),
    ]
    out, _, _ = stage.process(seq, 3)
    assert out == [seq[0], seq[2], seq[3]]


def test_report_by_exception_on_window_outputs() -> None:
    stage = AggregateStage({"d1": agg(window="1s", functions=["mean"], deadband=1, lateness=0)})
    out = []
    for k, v in enumerate([1.0, 1.2, 3.0, 3.5, 3.9]):
        out += stage.process([Sample("d1", "p", k * 1000 + 500, v)], k * 1000 + 500)[0]
    out += stage.tick(10_000)[0]
    assert [(x.metric, x.ts_ms, x.value) for x in out] == [
        ("p.mean", 0, 1.0),
        ("p.mean", 2000, 3.0),
    ]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=200),
    deadband=st.floats(0, 50),
    silence_s=st.integers(1, 30),
)
def test_report_by_exception_properties(
    values: list[float], deadband: float, silence_s: int
) -> None:
    stage = AggregateStage({"d1": agg(deadband=deadband, max_silence=silence_s)})
    samples = [Sample("d1", "p", k * 1000, v) for k, v in enumerate(values)]
    out, _, _ = stage.process(samples, len(values) * 1000)
    sent = {x.ts_ms for x in out}
    assert samples[0].ts_ms in sent
    last = samples[0]
    for x in samples[1:]:
        due = x.ts_ms - last.ts_ms >= silence_s * 1000
        crossed = abs(x.value - last.value) > deadband  # type: ignore[operator]
        assert (x.ts_ms in sent) == (due or crossed)
        if x.ts_ms in sent:
            last = x
