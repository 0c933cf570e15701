"""Recalibration of surprises against what a detector really does (``online.Recalibration``):
a detector whose surprises are right keeps them, an over-confident one is corrected by its
observed excess and the correction is forgotten after ``memory`` rows; in the ``shift``
detector, a sensor that jumps every few hours (turbidity spikes on the GECCO water data, here
synthetic) stops raising alerts while a sustained step of another sensor still does.

Data: random draws with known tails and ``tests/edge/synth.py`` (synthetic, real-looking pump
rows); the real labelled data sets are in bench/bench_anomaly.py.
"""

from __future__ import annotations

import numpy as np

from edgegw.edge.online import OnlineParams, Recalibration, Shift
from tests.edge import synth

P = OnlineParams()
LEVELS = P.recal_levels


def _feed(rc: Recalibration, surprises: np.ndarray) -> None:
    for s in surprises.tolist():
        rc.learn(s)


def test_a_right_detector_keeps_its_surprise() -> None:
    rng = np.random.default_rng(1)
    rc = Recalibration(LEVELS, 10_000, P.recal_prior)
    _feed(rc, -np.log10(rng.uniform(size=30_000)))  # P(s >= L) = 10^-L exactly
    for s in (1.2, 2.2, 3.1):
        assert rc.excess(s) < 0.2, (s, rc.excess(s))
    # ~1 row in 10,000 reaches 4: two by chance are a small, bounded correction
    assert rc.excess(4.5) < 0.5


def test_an_over_confident_detector_is_corrected_by_its_excess_then_forgets() -> None:
    rng = np.random.default_rng(2)
    rc = Recalibration(LEVELS, 5_000, P.recal_prior)
    _feed(rc, 1.0 - np.log10(rng.uniform(size=20_000)))  # reaches L ten times too often
    for s in (2.1, 3.2):
        assert 0.75 < rc.excess(s) < 1.15, (s, rc.excess(s))
    assert rc.excess(0.5) == 0.0  # below every level: nothing to correct
    _feed(rc, -np.log10(rng.uniform(size=25_000)))  # right again for 5 memories
    assert rc.excess(2.1) < 0.2


def _shift_scores(rows: np.ndarray, recal: bool = True) -> list[float]:
    p = P
    det = Shift(
        rows.shape[1],
        p.shift_short,
        p.shift_long,
        p.shift_calib,
        p.min_history,
        (lambda: Recalibration(p.recal_levels, p.shift_recal_memory, p.recal_prior))
        if recal
        else None,
    )
    return [det.update(r) or 0.0 for r in rows.tolist()]


def _onsets(scores: list[float], lo: int, hi: int) -> int:
    return sum(1 for i in range(lo, hi) if scores[i] >= P.threshold and scores[i - 1] < P.threshold)


def test_shift_learns_a_sensor_that_jumps_every_few_hours_but_not_a_new_step() -> None:
    n = 12_000
    rows = synth.normal_rows(n, seed=11)
    sd = float(np.std(rows[:, 2]))
    # power jumps by 10 of its standard deviations for 5 rows every 150 rows (normal for it)
    for at in range(300, n, 150):
        rows[at : at + 5, 2] += 10.0 * sd
    step = n - 600
    rows[step:, 1] += 2.5 * float(np.std(rows[:step, 1]))  # pressure steps and stays
    plain = _shift_scores(rows, recal=False)
    scores = _shift_scores(rows)
    jumps = len(range(step - 6000, step, 150))
    # without recalibration every jump is an alert; with it, at most half: something a sensor
    # does every 150 rows is worth about log10(150) = 2.2 at its usual size, and only the jumps
    # that come out larger than usual (noise adds to them) stay over the threshold
    assert _onsets(plain, step - 6000, step) >= 0.9 * jumps
    assert _onsets(scores, step - 6000, step) <= 0.5 * jumps
    fired = [i for i in range(step, n) if scores[i] >= P.threshold]
    assert fired and fired[0] - step <= P.shift_short, fired[:3]
