"""Anomaly detection: a PCA autoencoder fitted on generated normal data finds labelled spikes,
drifts and stuck sensors; LiteRT agrees with numpy; the shipped example model runs; the
statistical detectors; inference off the calling thread."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgegw.edge import litert
from edgegw.edge.anomaly import AnomalyStage
from edgegw.edge.config import AnomalyConfig
from edgegw.edge.fit import fit_pca_autoencoder, make_windows
from edgegw.model import Alert, Quality, Sample
from tests.edge import synth
from tests.edge.worker import RecordingWorker

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000
FEATURES = list(synth.FEATURES)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    rows = synth.normal_rows(4000, seed=10)
    result = fit_pca_autoencoder([(list(range(len(rows))), rows)], FEATURES, 16)
    path = tmp_path_factory.mktemp("model") / "pump.tflite"
    result.save(path)
    return path, result


def run_stage(stage: AnomalyStage, samples: list[Sample]) -> tuple[list[Sample], list[Alert]]:
    scores: list[Sample] = []
    alerts: list[Alert] = []
    for i in range(0, len(samples), 4):  # one poll (4 metrics) per call
        out, a, _ = stage.process(samples[i : i + 4], samples[i].ts_ms)
        scores += [x for x in out if x.metric == "anomaly.score"]
        alerts += a
    return scores, alerts


def episodes(alerts: list[Alert], n_rows: int) -> list[tuple[int, int]]:
    eps: list[tuple[int, int]] = []
    start: int | None = None
    for a in alerts:
        row = (a.ts_ms - T0) // 1000
        if a.active:
            assert start is None, "two raises without a clear"
            start = row
        else:
            assert start is not None, "a clear without a raise"
            eps.append((start, row))
            start = None
    if start is not None:
        eps.append((start, n_rows))
    return eps


def test_precision_and_recall_on_labelled_anomalies(fitted: tuple[Path, Any]) -> None:
    path, result = fitted
    rows, anomalies = synth.with_anomalies(6000, 36, seed=3)
    assert {a.kind for a in anomalies} == {"spike", "drift", "stuck"}
    stage = AnomalyStage(
        [
            AnomalyConfig(
                name="pump", device="pump1", metrics=FEATURES, model=str(path), online=False
            )
        ]
    )
    scores, alerts = run_stage(stage, synth.to_samples(rows))
    assert len(scores) == len(rows) - 15  # one score per full window
    eps = episodes(alerts, len(rows))
    # an anomaly is visible in every window that contains one of its rows
    spans = [(a.start, a.end + 15, a.kind) for a in anomalies]
    true_eps = [e for e in eps if any(e[0] <= b and e[1] >= a for a, b, _ in spans)]
    found = [s for s in spans if any(e[0] <= s[1] and e[1] >= s[0] for e in eps)]
    precision = len(true_eps) / len(eps)
    recall = len(found) / len(spans)
    by_kind = {
        k: sum(1 for s in found if s[2] == k) / sum(1 for s in spans if s[2] == k)
        for k in ("spike", "drift", "stuck")
    }
    print(
        json.dumps(
            {
                "precision": precision,
                "recall": recall,
                "recall_by_kind": by_kind,
                "episodes": len(eps),
                "anomalies": len(spans),
                "components": result.components,
                "threshold": result.spec.threshold,
            }
        )
    )
    assert precision >= 0.9
    assert recall >= 0.9
    assert min(by_kind.values()) >= 0.8


def test_litert_matches_numpy_reference(fitted: tuple[Path, Any]) -> None:
    path, result = fitted
    model = litert.TFLiteModel(path, result.spec)
    rows, _ = synth.with_anomalies(600, 3, seed=5)
    raw = make_windows(rows, 16)
    # fitted models take windows offset (in float64) by the training mean: the model's input space
    assert result.spec.input_offset is not None
    windows = raw - np.tile(np.asarray(result.spec.input_offset), 16)
    ref = litert.dense_forward(result.layers, windows.astype(np.float32))
    got = np.stack([model.forward(w) for w in windows])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    ref_scores = litert.reconstruction_scores(windows, ref, result.spec)
    got_scores = np.array([model.score(w) for w in raw])  # score() applies the offset itself
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-4)
    # and the float64 PCA the layers were folded from
    assert np.median(ref_scores) == pytest.approx(1.0, rel=0.3)


def test_shipped_example_model_loads_and_runs() -> None:
    path = REPO / "examples" / "models" / "pump.tflite"
    spec = litert.ModelSpec.load(litert.spec_path_for(path))
    assert spec.features == FEATURES and spec.threshold is not None
    stage = AnomalyStage(
        [
            AnomalyConfig(
                name="pump", device="pump1", metrics=FEATURES, model=str(path), online=False
            )
        ]
    )
    assert stage.detectors == ["pump:model"]
    normal = synth.normal_rows(1000, seed=99)  # a seed the model never saw
    scores, alerts = run_stage(stage, synth.to_samples(normal))
    assert len(scores) == 1000 - spec.window + 1
    assert sum(1 for x in scores if x.value > spec.threshold) <= 5  # type: ignore[operator]
    rows, _ = synth.with_anomalies(1000, 3, seed=4)
    scores, alerts = run_stage(stage, synth.to_samples(rows, t0_ms=T0 + 10**7))
    assert sum(a.active for a in alerts) >= 3


def test_inference_runs_on_the_worker_thread(fitted: tuple[Path, Any]) -> None:
    path, _ = fitted
    cfg = AnomalyConfig(
        name="pump", device="pump1", metrics=FEATURES, model=str(path), max_queue=1000, online=False
    )
    samples = synth.to_samples(synth.with_anomalies(800, 4, seed=8)[0])
    inline_scores, inline_alerts = run_stage(AnomalyStage([cfg]), samples)

    worker = RecordingWorker()
    threads, futures = worker.threads, worker.futures
    stage = AnomalyStage([cfg])
    stage.start(worker.submit)
    try:
        scores, alerts = run_stage(stage, samples)
        for _ in range(1000):  # each round: wait for the batch in flight, tick collects it
            wait(futures)
            out, a, _ = stage.tick(0)
            scores += out
            alerts += a
            if not stage.stats()["queued"] and all(f.done() for f in futures) and not out:
                break
    finally:
        worker.shutdown()
    assert threads and all(t.startswith("infer") for t in threads)
    assert threading.current_thread().name not in threads
    assert [(x.ts_ms, x.value) for x in scores] == [(x.ts_ms, x.value) for x in inline_scores]
    assert alerts == inline_alerts
    assert stage.stats()["batches"] < len(inline_scores)  # windows were batched while in flight
    assert stage.stats()["queue_dropped"] == 0


def test_queue_is_bounded_while_a_batch_is_stuck(fitted: tuple[Path, Any]) -> None:
    path, _ = fitted
    cfg = AnomalyConfig(
        name="pump", device="pump1", metrics=FEATURES, model=str(path), max_queue=10, online=False
    )
    never: Future[Any] = Future()  # a worker that never finishes (e.g. a hung accelerator)
    stage = AnomalyStage([cfg])
    stage.start(lambda fn, *args: never)
    run_stage(stage, synth.to_samples(synth.normal_rows(100, seed=2)))
    stats = stage.stats()
    assert stats["queued"] == 10
    assert stats["queue_dropped"] == 100 - 15 - 1 - 10  # 85 windows: 1 in flight, 10 queued


def test_non_good_sample_restarts_the_window(fitted: tuple[Path, Any]) -> None:
    path, _ = fitted
    stage = AnomalyStage(
        [
            AnomalyConfig(
                name="pump", device="pump1", metrics=FEATURES, model=str(path), online=False
            )
        ]
    )
    samples = synth.to_samples(synth.normal_rows(40, seed=1))
    scores, _ = run_stage(stage, samples[:80])  # 20 rows -> 5 scores
    assert len(scores) == 5
    stage.process([Sample("pump1", "flow", samples[80].ts_ms, None, Quality.COMM_ERROR)], 0)
    scores, _ = run_stage(stage, samples[80:])  # 20 more rows: a fresh window needs 16
    assert len(scores) == 5
    assert stage.stats()["resets"] == 1


@pytest.mark.parametrize("kind", ["zscore", "ewma"])
def test_statistical_detectors_find_spikes(kind: str) -> None:
    rng = np.random.default_rng(2)
    values = 20 + rng.normal(0, 0.5, 3000)
    spikes = list(range(300, 3000, 300))
    for k in spikes:
        values[k] += 6.0
    stage = AnomalyStage([AnomalyConfig(name="t", device="d", metrics=["temp"], kind=kind)])
    samples = [Sample("d", "temp", T0 + k * 1000, float(v)) for k, v in enumerate(values)]
    alerts: list[Alert] = []
    for x in samples:
        alerts += stage.process([x], x.ts_ms)[1]
    raised = [(a.ts_ms - T0) // 1000 for a in alerts if a.active]
    hits = {k for k in spikes if k in raised}
    assert len(hits) >= 0.9 * len(spikes)
    assert len(raised) - len(hits) <= 0.1 * len(raised) + 1
    assert all(a.labels == {"detector": kind} for a in alerts)


def test_missing_model_disables_only_that_detector(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfgs = [
        AnomalyConfig(name="gone", device="d", metrics=["a"], model=str(tmp_path / "nope.tflite")),
        AnomalyConfig(name="ok", device="d", metrics=["a"], kind="zscore"),
    ]
    stage = AnomalyStage(cfgs)
    assert stage.detectors == ["ok:zscore"]
    assert stage.stats()["detectors_failed"] == 1
    assert "anomaly detector gone disabled" in caplog.text


def test_fallback_when_runtime_is_missing(
    fitted: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mock: uninstalling ai-edge-litert is not possible inside the test venv, so the runtime
    # loader is made to fail the way it does when neither runtime package is installed.
    def missing() -> tuple[Any, str]:
        raise litert.RuntimeMissingError("no TFLite runtime is installed (test)")

    monkeypatch.setattr(litert, "load_interpreter_class", missing)
    path, _ = fitted
    base = {
        "name": "pump",
        "device": "pump1",
        "metrics": FEATURES,
        "model": str(path),
        "online": False,
    }
    stage = AnomalyStage(
        [
            AnomalyConfig.model_validate({**base, "fallback": "zscore"}),
            AnomalyConfig.model_validate({**base, "name": "strict", "score_metric": "s2"}),
        ]
    )
    assert stage.detectors == ["pump:zscore"]
    assert stage.stats()["detectors_failed"] == 1
