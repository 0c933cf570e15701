"""The ``shift`` detector of the online detector: quiet on normal real-looking rows, a sustained
step of a few standard deviations in one sensor scores over the threshold within
``shift_short`` rows, and a sensor that sat on one value before moving settles within the
calibration span (the RMS floor); a configured threshold moves the default clear level with it.

Data: ``tests/edge/synth.py`` (synthetic, real-looking pump rows); the real labelled data is in
bench/bench_anomaly.py.
"""

from __future__ import annotations

import numpy as np

from edgegw.edge.online import OnlineParams, Shift, default_clear
from tests.edge import synth

P = OnlineParams()


def _scores(rows: np.ndarray) -> list[float | None]:
    det = Shift(rows.shape[1], P.shift_short, P.shift_long, P.shift_calib, P.min_history)
    return [det.update(r) for r in rows.tolist()]


def test_quiet_on_normal_rows_and_fires_on_a_step() -> None:
    rows = synth.normal_rows(1500, seed=3)
    normal = [s for s in _scores(rows) if s is not None]
    assert max(normal) < P.threshold
    stepped = rows.copy()
    at = 1200
    # pressure steps by 2.5 of its own standard deviations (it swings with the load) and stays
    stepped[at:, 1] += 2.5 * float(np.std(rows[:at, 1]))
    scores = _scores(stepped)
    fired = [i for i in range(at, len(scores)) if (scores[i] or 0.0) >= P.threshold]
    assert fired and fired[0] - at <= P.shift_short, fired[:3]
    assert all((s or 0.0) < P.threshold for s in scores[P.min_history : at])


def test_a_sensor_that_sat_still_settles_after_it_starts_moving() -> None:
    rows = synth.normal_rows(1100, seed=4)
    rows[:400, 0] = 32.0  # quantised flow sits on one value, then moves normally
    scores = [s or 0.0 for s in _scores(rows)]
    # the start of movement is a change (it may alert), but the learnt spread catches up: the
    # RMS floor keeps it from firing on every normal swing for longer than the calibration span
    assert all(s < P.threshold for s in scores[2 * P.min_history : 400])
    assert all(s < P.threshold for s in scores[400 + P.shift_calib :])


def test_a_configured_threshold_moves_the_clear_level_with_it() -> None:
    assert default_clear(None, None) == P.clear
    assert default_clear(4.0, None) == 4.0 - (P.threshold - P.clear)
    assert default_clear(4.0, 1.0) == 1.0
    assert default_clear(0.6, None) == 0.3  # never at or below zero
