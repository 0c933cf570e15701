"""Edge stage benchmarks; prints one JSON object.

    .venv/bin/python bench/bench_edge.py [--quick]

- rules: RuleStage throughput (readings/s) for 100 devices x 10 points, 3 rules per device
  (a threshold with for/clear, a window average, a delta), polls of 10 samples per process() call;
- aggregate: AggregateStage throughput, 1-minute windows with 4 functions, and report-by-exception;
- inference: cost per window of the fitted 16x4 PCA autoencoder, LiteRT (batch 1, one thread)
  vs numpy float32 (batch 1 and batched);
- fit: time to fit that model on 4000 rows; anomaly detection quality on the labelled synthetic
  set (event-level precision/recall).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.edge.synth: the data sets

from edgegw.edge import litert
from edgegw.edge.aggregate import AggregateStage
from edgegw.edge.anomaly import AnomalyStage
from edgegw.edge.config import AggregateConfig, AnomalyConfig, RuleConfig
from edgegw.edge.fit import fit_pca_autoencoder, make_windows
from edgegw.edge.rules import RuleStage
from edgegw.model import Sample
from tests.edge import synth

T0 = 1_700_000_000_000


def polls(devices: int, points: int, n_polls: int) -> list[list[Sample]]:
    rng = random.Random(1)
    out = []
    for k in range(n_polls):
        ts = T0 + k * 1000
        for d in range(devices):
            out.append(
                [Sample(f"dev{d}", f"p{p}", ts, 50 + rng.gauss(0, 10)) for p in range(points)]
            )
    return out


def bench_rules(n_polls: int) -> dict[str, Any]:
    rules = []
    for d in range(100):
        rules += [
            RuleConfig.model_validate(
                {
                    "name": f"hi{d}",
                    "device": f"dev{d}",
                    "when": "p0 > 70",
                    "for": "3s",
                    "clear": "p0 < 60",
                }
            ),
            RuleConfig.model_validate(
                {"name": f"avg{d}", "device": f"dev{d}", "when": 'avg(p1, "30s") > 55'}
            ),
            RuleConfig.model_validate(
                {"name": f"d{d}", "device": f"dev{d}", "when": 'delta(p2, "10s") > 30 and p3 < p4'}
            ),
        ]
    stage = RuleStage(rules)
    batches = polls(100, 10, n_polls)
    n = sum(len(b) for b in batches)
    start, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        stage.process(b, b[0].ts_ms)
    for k in range(n_polls * 10):  # ticks every 100 ms
        stage.tick(T0 + k * 100)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    stats = stage.stats()
    return {
        "readings": n,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(n / elapsed),
        "readings_per_cpu_s": round(n / cpu),
        "evaluations": stats["evaluations"],
        "raised": stats["raised"],
    }


def bench_aggregate(n_polls: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    batches = polls(100, 10, n_polls)
    n = sum(len(b) for b in batches)
    for label, cfg in [
        (
            "window",
            AggregateConfig.model_validate(
                {"window": "1m", "functions": ["min", "max", "mean", "stddev"]}
            ),
        ),
        (
            "report_by_exception",
            AggregateConfig.model_validate({"deadband_pct": 20, "max_silence": "5m"}),
        ),
    ]:
        stage = AggregateStage({f"dev{d}": cfg for d in range(100)})
        emitted = 0
        start, cpu = time.perf_counter(), time.process_time()
        for b in batches:
            emitted += len(stage.process(b, b[0].ts_ms)[0])
        emitted += len(stage.tick(T0 + n_polls * 1000 + 120_000)[0])
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        out[label] = {
            "readings_per_cpu_s": round(n / cpu),
            "readings": n,
            "seconds": round(elapsed, 3),
            "readings_per_s": round(n / elapsed),
            "emitted": emitted,
        }
    return out


def bench_inference_and_fit() -> dict[str, Any]:
    rows = synth.normal_rows(4000, seed=10)
    start = time.perf_counter()
    result = fit_pca_autoencoder([(list(range(len(rows))), rows)], list(synth.FEATURES), 16)
    fit_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        result.save(path)
        model = litert.TFLiteModel(path, result.spec)
        windows = make_windows(synth.normal_rows(2000, seed=3), 16).astype(np.float32)
        start = time.perf_counter()
        for w in windows:
            model.forward(w)
        lite = (time.perf_counter() - start) / len(windows)
        start = time.perf_counter()
        for w in windows:
            litert.dense_forward(result.layers, w[None, :])
        np1 = (time.perf_counter() - start) / len(windows)
        start = time.perf_counter()
        litert.dense_forward(result.layers, windows)
        npb = (time.perf_counter() - start) / len(windows)
        start = time.perf_counter()
        for w in windows:
            model.score(w)
        score = (time.perf_counter() - start) / len(windows)
        quality = detection_quality(path, result)
    return {
        "fit": {
            "rows": len(rows),
            "window": 16,
            "features": 4,
            "components": result.components,
            "seconds": round(fit_s, 4),
            "model_bytes": len(result.model),
        },
        "inference_us_per_window": {
            "litert": round(lite * 1e6, 2),
            "numpy_batch1": round(np1 * 1e6, 2),
            "numpy_batched": round(npb * 1e6, 3),
            "litert_with_score": round(score * 1e6, 2),
        },
        "runtime": model.runtime,
        "detection": quality,
    }


def detection_quality(path: Path, result: Any) -> dict[str, Any]:
    """SYNTHETIC data (synth.py) - real labelled data: bench/bench_anomaly.py."""
    return {
        "data": "synthetic (tests/edge/synth.py), not real-world performance",
        "static_threshold": _detection(path, online=False),
        "online": _detection(path, online=True),
    }


def _detection(path: Path, *, online: bool) -> dict[str, Any]:
    rows, anomalies = synth.with_anomalies(6000, 36, seed=3)
    stage = AnomalyStage(
        [
            AnomalyConfig(
                name="p",
                device="pump1",
                metrics=list(synth.FEATURES),
                model=str(path),
                online=online,
            )
        ]
    )
    samples = synth.to_samples(rows)
    alerts = []
    start = time.perf_counter()
    for i in range(0, len(samples), 4):
        alerts += stage.process(samples[i : i + 4], samples[i].ts_ms)[1]
    elapsed = time.perf_counter() - start
    eps, cur = [], None
    for a in alerts:
        r = (a.ts_ms - T0) // 1000
        if a.active:
            cur = r
        else:
            eps.append((cur, r))
            cur = None
    if cur is not None:
        eps.append((cur, len(rows)))
    spans = [(a.start, a.end + 15) for a in anomalies]
    tp = sum(1 for s, e in eps if any(s <= b and e >= a for a, b in spans))
    found = sum(1 for a, b in spans if any(s <= b and e >= a for s, e in eps))
    return {
        "anomalies": len(spans),
        "episodes": len(eps),
        "precision": round(tp / max(1, len(eps)), 4),
        "recall": round(found / len(spans), 4),
        "stage_readings_per_s": round(len(samples) / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer polls (smoke run)")
    args = parser.parse_args()
    n_polls = 20 if args.quick else 200
    print(
        json.dumps(
            {
                "rules": bench_rules(n_polls),
                "aggregate": bench_aggregate(n_polls),
                **bench_inference_and_fit(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
