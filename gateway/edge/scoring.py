"""Scoring anomaly detectors on labelled streams: a windowed scorer and plain event metrics.

Written from the published description of the windowed scorer that streaming anomaly benchmarks
use (no benchmark code was used). For one stream of ``n`` rows:

- **Anomaly windows.** Each labelled anomaly (a run of labelled rows, or one labelled point) gets
  a window centred on it, at least ``window_fraction`` (10 %) of the stream divided by the number
  of anomalies long (never shorter than the labelled run); overlapping windows merge.
- **Probation.** Detections in the first ``probation`` fraction (15 %, at most 750 rows) are not
  scored: the detector is still learning there. Windows that end inside it are dropped.
- **Detections** are rows flagged by the detector (for an alerting detector: the rows where an
  alert is raised; see ``episode_starts``).
- **Reward.** Only the earliest detection inside a window counts, with the scaled sigmoid
  ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` of its position ``y`` relative to the window's end in
  window lengths (``y = -1`` at the first row: ~0.987; ``y = 0`` at the end: 0), times the
  profile's true-positive weight. A window without a detection costs the false-negative weight.
- **Penalty.** A detection outside every window costs ``fp_weight * sigma(y)`` where ``y`` is its
  distance past the end of the preceding window in window lengths (close after a window it costs
  little, far after it approaches the full weight), or the full weight before the first window.
- **Profiles** (tp, fp, fn weights): standard (1, 0.11, 1), reward_low_fp (1, 0.22, 1),
  reward_low_fn (1, 0.11, 2).
- **Normalisation** over a set of streams: ``100 * (raw - null) / (perfect - null)``, where the
  null detector (no detections) scores ``-fn`` per window and the perfect one detects every window
  at its first row. So flagging nothing scores 0 and a perfect detector 100; a detector can go
  below 0 by raising false alarms.

``event_metrics`` reports what an operator asks instead: the fraction of labelled windows
detected, false alerts per day, and the detection delay from the start of the labelled anomaly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_fp": (1.0, 0.22, 1.0),
    "reward_low_fn": (1.0, 0.11, 2.0),
}
WINDOW_FRACTION = 0.10
PROBATION_FRACTION = 0.15
PROBATION_MAX = 750


def scaled_sigmoid(y: float) -> float:
    """``2 / (1 + e^(5y)) - 1``: ~1 at y = -1 (window start), 0 at the window end, -> -1 after."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def label_runs(labels: Sequence[int | bool | float]) -> list[tuple[int, int]]:
    """Runs of truthy labels as ``(first, last)`` row indices (inclusive)."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for i, v in enumerate(labels):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(labels) - 1))
    return runs


def anomaly_windows(
    runs: Sequence[tuple[int, int]], n: int, *, fraction: float = WINDOW_FRACTION
) -> list[tuple[int, int]]:
    """Scoring windows around labelled runs (see the module docstring), merged, inclusive."""
    if not runs or n <= 0:
        return []
    min_len = fraction * n / len(runs)
    out: list[tuple[int, int]] = []
    for a, b in runs:
        length = b - a + 1
        if length < min_len:
            extra = (min_len - length) / 2.0
            a = max(0, math.floor(a - extra))
            b = min(n - 1, math.ceil(b + extra))
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def probation_rows(n: int) -> int:
    return min(int(PROBATION_FRACTION * n), PROBATION_MAX)


@dataclass
class StreamScore:
    """Raw windowed score of one stream for one profile, with the bounds to normalise it."""

    raw: float
    null: float
    perfect: float
    tp: int
    fn: int
    fp: int


def score_stream(
    detections: Sequence[int],
    windows: Sequence[tuple[int, int]],
    n: int,
    profile: str = "standard",
    *,
    probation: int | None = None,
) -> StreamScore:
    """Windowed score of detection row indices against ``windows`` over a stream of ``n`` rows."""
    a_tp, a_fp, a_fn = PROFILES[profile]
    prob = probation_rows(n) if probation is None else probation
    wins = [w for w in windows if w[1] >= prob]
    hit: list[float | None] = [None] * len(wins)
    raw = 0.0
    fp = 0
    for d in sorted(set(detections)):
        if d < prob:
            continue
        inside = None
        prev_end: tuple[int, int] | None = None
        for k, (a, b) in enumerate(wins):
            if a <= d <= b:
                inside = k
                break
            if b < d:
                prev_end = (a, b)
        if inside is not None:
            if hit[inside] is None:
                a, b = wins[inside]
                length = b - a + 1
                y = (d - b) / length  # -1 < y <= 0 inside the window
                hit[inside] = a_tp * scaled_sigmoid(y)
            continue
        fp += 1
        if prev_end is None:
            raw -= a_fp
        else:
            a, b = prev_end
            y = (d - b) / (b - a + 1)
            raw += a_fp * scaled_sigmoid(y)
    tp = sum(1 for h in hit if h is not None)
    raw += sum(h for h in hit if h is not None)
    raw -= a_fn * (len(wins) - tp)
    null = -a_fn * len(wins)
    perfect = sum(a_tp * scaled_sigmoid((a - b) / (b - a + 1)) for a, b in wins)
    return StreamScore(raw, null, perfect, tp, len(wins) - tp, fp)


def normalised(scores: Sequence[StreamScore]) -> float | None:
    """``100 * (raw - null) / (perfect - null)`` summed over streams; None without windows."""
    raw = sum(s.raw for s in scores)
    null = sum(s.null for s in scores)
    perfect = sum(s.perfect for s in scores)
    if perfect - null <= 0:
        return None
    return 100.0 * (raw - null) / (perfect - null)


def episode_starts(flags: Sequence[bool]) -> list[int]:
    """Rows where a run of flagged rows starts: one detection per alert episode."""
    return [i for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1])]


@dataclass
class EventMetrics:
    windows: int
    detected: int
    false_alerts: int
    days: float
    delays_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        delays = sorted(self.delays_s)
        return {
            "labelled_anomalies": self.windows,
            "detected": self.detected,
            "detection_rate": round(self.detected / self.windows, 4) if self.windows else None,
            "false_alerts": self.false_alerts,
            "false_alerts_per_day": round(self.false_alerts / self.days, 3) if self.days else None,
            "days": round(self.days, 6),
            "delay_s_median": delays[len(delays) // 2] if delays else None,
            "delay_s_max": delays[-1] if delays else None,
        }


def event_metrics(
    alert_rows: Sequence[int],
    runs: Sequence[tuple[int, int]],
    ts_ms: Sequence[int],
    *,
    tolerance_rows: int = 0,
    skip_rows: int = 0,
) -> EventMetrics:
    """Operator's view: a labelled run is detected by the first alert raised between its start and
    ``tolerance_rows`` after its end; an alert that detects no run is false. Delay: alert time
    minus the run's first labelled time. Rows before ``skip_rows`` (learning) are not judged."""
    runs = [r for r in runs if r[1] >= skip_rows]
    alerts = sorted(r for r in set(alert_rows) if r >= skip_rows)
    used: set[int] = set()
    delays: list[float] = []
    for a, b in runs:
        for r in alerts:
            if a <= r <= b + tolerance_rows:
                used.add(r)
                delays.append((ts_ms[r] - ts_ms[max(a, skip_rows)]) / 1000.0)
                break
    # alerts inside a labelled run (plus tolerance) are part of that episode, not false
    false = [
        r
        for r in alerts
        if r not in used and not any(a <= r <= b + tolerance_rows for a, b in runs)
    ]
    span_ms = ts_ms[-1] - ts_ms[min(skip_rows, len(ts_ms) - 1)] if ts_ms else 0
    return EventMetrics(len(runs), len(delays), len(false), span_ms / 86_400_000.0, delays)
