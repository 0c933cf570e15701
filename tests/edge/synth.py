"""Synthetic plant data with labelled anomalies, for demos, benchmarks, tests and the shipped model.

A pump: ``flow``, ``pressure``, ``power`` and ``temp`` all follow one hidden load (two slow
sinusoids plus an AR(1) wander) with independent sensor noise, sampled once per ``period_ms``.
Injected anomalies (each a labelled interval of row indices):
- ``spike``: one sensor jumps for a single row;
- ``drift``: one sensor's offset ramps up, holds, then disappears;
- ``stuck``: one sensor repeats its last value while the others keep moving.

Invariants: deterministic for a given seed; needs numpy (extra ``ml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgegw.model import Sample

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FEATURES = ("flow", "pressure", "power", "temp")
_BASE = (50.0, 3.0, 5.0, 40.0)
_GAIN = (10.0, 0.8, 2.0, 3.0)
_NOISE = (0.3, 0.025, 0.06, 0.1)


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str  # spike | drift | stuck
    feature: int
    start: int  # first anomalous row
    end: int  # last anomalous row (inclusive)


def normal_rows(n: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """``n`` rows x 4 features of normal operation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    wander = np.zeros(n)
    for i in range(1, n):
        wander[i] = 0.98 * wander[i - 1] + rng.normal(0, 0.05)
    load = (
        0.6 * np.sin(2 * np.pi * t / 40 + phase[0])
        + 0.3 * np.sin(2 * np.pi * t / 11 + phase[1])
        + wander
    )
    rows = np.empty((n, len(FEATURES)))
    for f in range(len(FEATURES)):
        rows[:, f] = _BASE[f] + _GAIN[f] * load + rng.normal(0, _NOISE[f], size=n)
    return rows


def with_anomalies(
    n: int, count: int, seed: int = 1, *, gap: int = 120
) -> tuple[npt.NDArray[np.float64], list[Anomaly]]:
    """Normal rows with ``count`` anomalies injected (kinds in rotation, ``gap`` rows apart)."""
    import numpy as np

    rows = normal_rows(n, seed)
    rng = np.random.default_rng(seed + 1000)
    kinds = ("spike", "drift", "stuck")
    anomalies: list[Anomaly] = []
    pos = gap
    for i in range(count):
        kind = kinds[i % 3]
        f = int(rng.integers(0, len(FEATURES)))
        if kind == "spike":
            length = 1
            sign = 1.0 if rng.random() < 0.5 else -1.0
            rows[pos, f] += sign * 0.5 * _GAIN[f]
        elif kind == "drift":
            length = 40
            ramp = np.concatenate([np.linspace(0.0, 0.45, 25), np.full(length - 25, 0.45)])
            rows[pos : pos + length, f] += ramp * _GAIN[f]
        else:
            length = 30
            rows[pos : pos + length, f] = rows[pos - 1, f]
        anomalies.append(Anomaly(kind, f, pos, pos + length - 1))
        pos += length + gap
        if pos >= n - gap:
            break
    return rows, anomalies


def to_samples(
    rows: npt.NDArray[np.float64],
    device: str = "pump1",
    *,
    t0_ms: int = 1_700_000_000_000,
    period_ms: int = 1000,
) -> list[Sample]:
    """Rows as polled samples (all metrics of a row share its timestamp)."""
    out: list[Sample] = []
    for i, row in enumerate(rows):
        ts = t0_ms + i * period_ms
        out.extend(Sample(device, FEATURES[f], ts, float(v)) for f, v in enumerate(row))
    return out
