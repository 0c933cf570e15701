"""The online detector on real-looking data: each fault kind raises exactly one alert, a new
normal (a new level, new noise, a new operating point) is re-learnt within ``history`` rows,
fit and run see the same windows across gaps, out-of-order and non-finite values, and the stage
runs refits in the worker.

Data: ``tests/edge/synth.py`` (synthetic, real-looking: four pump sensors driven by one hidden load
with sensor noise) - the real labelled data sets are in bench/bench_anomaly.py.
"""

from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest

from edgegw.edge import fit
from edgegw.edge.anomaly import AnomalyStage
from edgegw.edge.config import AnomalyConfig
from edgegw.edge.online import OnlineDetector, OnlineParams, episodes
from edgegw.model import Alert, Quality, Sample
from tests.edge import synth
from tests.edge.worker import RecordingWorker

T0 = 1_700_000_000_000
FEATURES = list(synth.FEATURES)
N = 3000
AT = 2000  # every fault starts here, after two refits


def run_detector(rows: np.ndarray, params: OnlineParams | None = None) -> list[tuple[int, int]]:
    """Alert episodes (raised row, cleared row or N) of the online detector over ``rows``."""
    det = OnlineDetector(FEATURES, params or OnlineParams(use_litert=False))
    eps: list[tuple[int, int]] = []
    start: int | None = None
    for i, r in enumerate(rows.tolist()):
        v = det.step(T0 + i * 1000, r)
        det.refit_now()
        if v is None:
            continue
        if v.raised:
            assert start is None
            start = i
        if v.cleared:
            assert start is not None
            eps.append((start, i))
            start = None
    if start is not None:
        eps.append((start, len(rows)))
    assert det.counters["refits"] >= 2  # the model was fitted on the device and refitted
    return eps


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return synth.normal_rows(N, seed=42)


def faulty(base: np.ndarray, kind: str) -> np.ndarray:
    r = base.copy()
    if kind == "level_shift":  # pressure sensor offset by half its operating range
        r[AT:, 1] += 0.4
    elif kind == "slow_drift":  # temperature drifts by 1.5 degC over 400 rows, then stays
        r[AT : AT + 400, 3] += np.linspace(0.0, 1.5, 400)
        r[AT + 400 :, 3] += 1.5
    elif kind == "stuck":  # flow repeats its last value for 100 rows
        r[AT : AT + 100, 0] = r[AT - 1, 0]
    elif kind == "spike":  # one power reading jumps
        r[AT, 2] += 1.0
    elif kind == "noisy":  # pressure's noise grows to 10x its whole normal spread, and stays
        noise = np.random.default_rng(1).normal(0.0, 10.0 * float(np.std(r[:AT, 1])), N - AT)
        r[AT:, 1] += noise
    elif kind == "regime":  # a new operating point: every sensor moves, the noise is new
        r[AT:] = synth.normal_rows(N - AT, seed=7) + np.array([15.0, 1.0, 2.0, 5.0])
    return r


def test_normal_operation_raises_nothing(base: np.ndarray) -> None:
    assert run_detector(base) == []


@pytest.mark.parametrize("kind", ["level_shift", "slow_drift", "stuck", "spike", "noisy", "regime"])
def test_each_fault_is_one_alert(base: np.ndarray, kind: str) -> None:
    eps = run_detector(faulty(base, kind))
    assert len(eps) == 1, eps
    raised, cleared = eps[0]
    assert AT <= raised <= AT + 120  # the drift needs time to leave the normal spread
    # re-learning: a lasting change stops alerting within `history` rows (the documented bound)
    assert cleared <= AT + OnlineParams().history


def test_alert_names_the_detector_that_fired(base: np.ndarray) -> None:
    rows = faulty(base, "stuck")
    stage = AnomalyStage(
        [AnomalyConfig(name="pump", device="pump1", metrics=FEATURES, kind="online")]
    )
    alerts: list[Alert] = []
    for s in _polls(rows):
        alerts += stage.process(s, s[0].ts_ms)[1]
    raised = [a for a in alerts if a.active]
    assert len(raised) == 1
    assert raised[0].labels == {"detector": "online", "cause": "stuck"}
    assert "stuck" in raised[0].message


def test_hard_limit_is_always_an_anomaly(base: np.ndarray) -> None:
    rows = base[:600].copy()
    rows[400, 3] = 80.0  # temp over its configured maximum
    det = OnlineDetector(
        FEATURES, OnlineParams(use_litert=False), limits=[None, None, None, (0.0, 70.0)]
    )
    raised = []
    for i, r in enumerate(rows.tolist()):
        v = det.step(T0 + i * 1000, r)
        det.refit_now()
        if v is not None and v.raised:
            raised.append((i, max(v.components, key=lambda k: v.components[k])))
    assert raised == [(400, "range")]


def test_episode_rule_matches_the_detector(base: np.ndarray) -> None:
    p = OnlineParams(use_litert=False)
    det = OnlineDetector(FEATURES, p)
    scores: list[float | None] = []
    raised = []
    for i, r in enumerate(faulty(base, "regime").tolist()):
        v = det.step(T0 + i * 1000, r)
        det.refit_now()
        scores.append(None if v is None else v.score)
        if v is not None and v.raised:
            raised.append(i)
    assert [a for a, _ in episodes(scores, p.threshold, p.clear, p.clear_rows)] == raised


# --------------------------------------------------------------------------- fit == run
def _polls(rows: np.ndarray, t0: int = T0, period: int = 1000) -> list[list[Sample]]:
    return [
        [Sample("pump1", f, t0 + i * period, float(v)) for f, v in zip(FEATURES, r, strict=True)]
        for i, r in enumerate(rows)
    ]


def _messy_samples() -> list[Sample]:
    """Polls with two long gaps, a late (out-of-order) poll, a NaN and a comm error."""
    rows = synth.normal_rows(900, seed=3)
    polls = _polls(rows)
    out: list[Sample] = []
    shift = 0
    for i, poll in enumerate(polls):
        if i in (300, 600):
            shift += 120_000  # 2 min gap at a 1 s poll
        poll = [Sample(s.device, s.metric, s.ts_ms + shift, s.value) for s in poll]
        if i == 450:
            late = [Sample(s.device, s.metric, s.ts_ms - 10_000, s.value) for s in poll]
            out.extend(late)  # a poll 10 s older than the last row: dropped by both
            continue
        if i == 500:
            poll[1] = Sample("pump1", "pressure", poll[1].ts_ms, float("nan"))
        if i == 700:
            poll[2] = Sample("pump1", "power", poll[2].ts_ms, None, Quality.COMM_ERROR)
        out.extend(poll)
    return out


def test_fit_and_run_score_the_same_windows(tmp_path: Path) -> None:
    samples = _messy_samples()
    limit = fit.median_gap_limit(samples, "pump1", FEATURES)
    assert limit == 5000
    segments = fit.segments_from_samples(samples, "pump1", FEATURES, max_gap_ms=limit)
    w = 8
    # the windows fit builds, by their last row's timestamp
    fit_ends = [ts[k] for ts, _ in segments for k in range(w - 1, len(ts))]
    assert len(segments) == 5  # gap, NaN, gap, comm error
    result = fit.fit_pca_autoencoder(segments, FEATURES, w, max_gap_ms=limit)
    path = tmp_path / "m.tflite"
    result.save(path)
    cfg = AnomalyConfig(name="p", device="pump1", metrics=FEATURES, model=str(path), online=False)
    stage = AnomalyStage([cfg])
    scored: list[int] = []
    for s in samples:
        out, _, _ = stage.process([s], s.ts_ms)
        scored += [x.ts_ms for x in out if x.metric == "anomaly.score"]
    assert scored == fit_ends
    assert stage.stats()["out_of_order"] == 1
    # the online detector starting from the same model judges the same rows
    online = AnomalyStage(
        [AnomalyConfig(name="p", device="pump1", metrics=FEATURES, model=str(path))]
    )
    for s in samples:
        online.process([s], s.ts_ms)
    assert online.stats()["windows"] == len(fit_ends)
    assert online.stats()["out_of_order"] == 1


# --------------------------------------------------------------------------- stage + worker
def test_stage_refits_in_the_worker_and_keeps_order(base: np.ndarray) -> None:
    cfg = AnomalyConfig(
        name="pump", device="pump1", metrics=FEATURES, kind="online", max_queue=10_000
    )
    worker = RecordingWorker()
    threads, futures = worker.threads, worker.futures
    stage = AnomalyStage([cfg])
    stage.start(worker.submit)
    scores: list[Sample] = []
    alerts: list[Alert] = []
    try:
        for i, poll in enumerate(_polls(faulty(base, "spike"))):
            out, a, _ = stage.process(poll, poll[0].ts_ms)
            scores += [x for x in out if x.metric == "anomaly.score"]
            alerts += a
            if i % 50 == 0:  # time passes on a real gateway (1 s polls): let the worker finish
                wait(list(futures))
        out, a, _ = stage.drain()
        scores += [x for x in out if x.metric == "anomaly.score"]
        alerts += a
        wait(futures)
    finally:
        worker.shutdown()
    assert threads and all(t.startswith("infer") for t in threads)
    stats = stage.stats()
    assert stats["refits"] + stats["refits_rejected"] >= 2, stats
    assert stats["refits"] >= 1 and stats["refit_errors"] == 0
    ts = [x.ts_ms for x in scores]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    raised = [(a.ts_ms - T0) // 1000 for a in alerts if a.active]
    assert len(raised) == 1 and AT <= raised[0] <= AT + 20
