"""Online, self-calibrating anomaly detection over one device's rows (the ``online`` detector).

One ``OnlineDetector`` judges a stream of rows (one value per feature, in time order). Each row
goes through six detectors; each turns a raw statistic into a *surprise* ``-log10 p``, the
probability ``p`` of a statistic this large given what the detector saw recently, so surprises of
different detectors are comparable and the combined score is their maximum after a per-detector
weight (``weights``: ``model`` 0.7, ``range`` 0; a hard-limit breach is never weighted down):

- ``model``: the reconstruction error of the last ``window`` rows by a PCA autoencoder (a TFLite
  model run by LiteRT, or its numpy reference), judged like HTM's anomaly likelihood: the mean of
  the last ``short`` log-errors against the distribution of that mean over the last ``history``
  rows (Gaussian tail; what the history learns is clipped at its mean + 3 sd, so one burst does
  not inflate the spread). Catches shape changes, broken correlations between sensors, spikes.
- ``shift``: per feature, ``d`` = EW mean over ``shift_short`` rows minus EW mean over
  ``shift_long`` rows in that long EW sd, judged against the feature's own learnt RMS of ``d``
  (over ``shift_calib`` rows, winsorised, floored): two-sided Gaussian tail of the largest
  ``|d| / rms``, Bonferroni over the features. Catches sustained changes of a few normal swings
  in any one sensor; the long spread is frozen during an alert episode.
- ``level``: per feature, an EW mean over ``level_short`` rows against an EW mean/variance over
  ``history`` rows; the largest standardised difference is judged against its own history like
  the model's error. Catches level shifts and steps the model reproduces.
- ``drift``: the same at the ``drift_rows`` time scale against a reference ``4 x history`` rows
  long. Catches drifts faster than about ``history`` rows; slower ones become the new normal.
- ``stuck``: per feature, a run of ``n`` identical values: ``p = q^(n - 2L)`` with ``q`` the
  learnt chance of a repeat and ``L`` the longest normal run of the last ``stuck_memory`` rows
  (quantised sensors that sit on a value for a while are not stuck).
- ``range``: per feature, a value beyond the min/max of the last ``history`` rows by a fraction
  ``e`` of that range: ``surprise = log10(rows seen / features) + 6 e`` (the largest over the
  features); a configured hard ``limits`` breach is always ``MAX_SURPRISE``.

Every surprise (each detector's, each sensor's inside ``shift``, and the combined score) is then
recalibrated (``Recalibration``): lowered by how much more often than its nominal ``10^-s`` the
detector really reached it outside alert episodes over the last ``recal_memory`` rows, so heavy
real-world tails stop raising an alert every few hours on long streams.

An alert episode starts when the combined score reaches ``threshold`` (2.5) and ends after
``clear_rows`` (10) rows below ``clear`` (2.0): one alert per episode. The weights, the ``shift``
settings, the recalibration and the threshold were chosen on part of the real labelled data
(SKAB valve1/valve2, the first half of the GECCO 2018 water stream) and judged on the rest
(``bench/bench_anomaly.py``, docs/edge.md). The model is fitted on
the device (numpy SVD, written as a flatbuffer, no TensorFlow) after ``learn_rows`` rows when none
was given,
and refitted every ``refit_every`` rows on the newest ``refit_rows`` rows outside alert episodes;
a refit is installed only if it validates (its median error on the newest held-out rows is at most
``1.25 x`` the current model's on the same scale, and its held-out error is not 10x its training
error).

Invariants:
- Rows must come in time order: ``prepare`` drops a row not newer than the last (counted by the
  caller), a row with a non-finite value or a gap longer than ``max_gap_ms`` (default: 5x the
  median row interval) starts a new segment: the window restarts and no statistic mixes both sides.
  ``edgegw model fit`` applies the same rules (``rows.Segmenter``, ``fit.segments_from_samples``).
- Re-learning: after a lasting change every statistic follows within about ``history`` rows (the
  EW references and the surprise histories are that long), so a new normal stops alerting then.
- Deterministic: the same rows give the same scores. numpy is needed (extra ``ml``); LiteRT is
  used when installed and ``use_litert`` is set, else the numpy reference.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgegw.edge import litert
from edgegw.edge.fit import (
    CALIBRATION_REFUSE_RATIO,
    FitError,
    fit_pca_autoencoder,
    make_windows,
)
from edgegw.edge.litert import dense_forward
from edgegw.edge.rows import Segmenter

if TYPE_CHECKING:
    import numpy as np  # lazy: optional extra [ml]
    import numpy.typing as npt

    from edgegw.edge.litert import ModelSpec

    Array = npt.NDArray[np.float64]

MAX_SURPRISE = 30.0
#: the surprise histories learn values clipped to mean + this many sd
LIKELIHOOD_CLIP = 3.0
#: range detector: surprise added per range-width beyond the envelope
RANGE_SLOPE = 6.0
_LN10 = math.log(10.0)


def tail_surprise(z: float) -> float:
    """``-log10 Q(z)`` for the upper Gaussian tail, capped at ``MAX_SURPRISE``."""
    if z <= 0:
        return max(0.0, -math.log10(0.5 * math.erfc(z / math.sqrt(2.0))))
    if z < 8.0:
        q = 0.5 * math.erfc(z / math.sqrt(2.0))
        return min(MAX_SURPRISE, -math.log10(q))
    # asymptotic: Q(z) ~ phi(z) / z
    return min(MAX_SURPRISE, (z * z / 2.0 + math.log(z * math.sqrt(2 * math.pi))) / _LN10)


@dataclass(frozen=True)
class OnlineParams:
    """Settings of the online detector; the defaults are the ones the bench scores."""

    window: int = 16
    history: int = 1000
    short: int = 4
    min_history: int = 48
    learn_rows: int = 160
    refit_every: int = 1000
    refit_rows: int = 4000
    threshold: float = 2.5
    clear: float = 2.0
    clear_rows: int = 10
    level_short: int = 12
    drift_rows: int = 120
    shift_short: int = 12
    shift_long: int = 400
    shift_calib: int = 300
    stuck_min_rows: int = 5
    #: rows a stuck detector remembers the longest normal run of a sensor (e-folding)
    stuck_memory: int = 10_000
    #: per-detector recalibration of the surprise against how often the detector actually
    #: reached it outside alert episodes, over this many rows (``Recalibration``; 0: off)
    recal_memory: int = 10_000
    recal_levels: tuple[float, ...] = (
        1.0,
        1.5,
        2.0,
        2.5,
        3.0,
        4.0,
        5.0,
        6.0,
        8.0,
        10.0,
        13.0,
        16.0,
        20.0,
        25.0,
    )
    #: rows of prior belief that the detector is right (at the nominal rate)
    recal_prior: float = 1000.0
    #: ``shift``: each sensor's statistic recalibrated against its own tail over this many rows
    #: (``Recalibration`` per sensor; 0: off): a sensor that jumps often (turbidity spikes, a
    #: pump switching) stops raising alerts for what it does every day
    shift_recal_memory: int = 10_000
    #: the combined score (the maximum over detectors) recalibrated the same way (needs
    #: ``recal_memory``): the maximum of several right surprises is reached more often than each
    score_recal: bool = True
    max_gap_ms: int | None = None
    detectors: tuple[str, ...] = ("model", "shift", "level", "drift", "stuck", "range")
    #: per-detector factor on its surprise before the maximum (hard-limit breaches excepted);
    #: chosen on the SKAB valve1+valve2 files, judged on the other files (docs/edge.md §4)
    weights: tuple[tuple[str, float], ...] = (("model", 0.7), ("range", 0.0))
    use_litert: bool = True


def default_clear(threshold: float | None, clear: float | None) -> float:
    """The clear level: as given, else the same distance below ``threshold`` as the defaults
    (a configured threshold of 4 clears below 3.5, one of 1.5 below 1.0)."""
    d = OnlineParams()
    if clear is not None:
        return clear
    if threshold is None:
        return d.clear
    return max(threshold - (d.threshold - d.clear), 0.5 * threshold)


def episodes(
    scores: Sequence[float | None], threshold: float, clear: float, clear_rows: int
) -> list[tuple[int, int | None]]:
    """Alert episodes ``(raised_row, cleared_row | None)`` of a score sequence: the rule
    ``OnlineDetector.judge`` applies row by row (missing or NaN scores are skipped)."""
    out: list[tuple[int, int | None]] = []
    active = False
    below = 0
    start = 0
    for i, s in enumerate(scores):
        if s is None or s != s:
            continue
        if not active:
            if s >= threshold:
                active, below, start = True, 0, i
        else:
            below = below + 1 if s < clear else 0
            if below >= clear_rows:
                active = False
                out.append((start, i))
    if active:
        out.append((start, None))
    return out


# --------------------------------------------------------------------------- surprise
class Likelihood:
    """Surprise of a non-negative statistic against its own recent distribution (log scale)."""

    __slots__ = ("_recent", "_rsum", "hist", "min_history", "s1", "s2")

    def __init__(self, history: int, short: int, min_history: int) -> None:
        self.hist: deque[float] = deque(maxlen=history)
        self._recent: deque[float] = deque(maxlen=short)
        self._rsum = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.min_history = min_history

    def reset_short(self) -> None:
        self._recent.clear()
        self._rsum = 0.0

    def rebase(self, stats: Sequence[float]) -> None:
        """Replace the history with the short-averaged log of ``stats`` (a new model's errors)."""
        self.hist.clear()
        self.s1 = self.s2 = 0.0
        self.reset_short()
        for s in stats:
            self.update(s)
        self.reset_short()

    def update(self, stat: float) -> float | None:
        v = math.log(max(stat, 0.0) + 1e-12)
        if len(self._recent) == self._recent.maxlen:
            self._rsum -= self._recent[0]
        self._recent.append(v)
        self._rsum += v
        avg = self._rsum / len(self._recent)
        result: float | None = None
        n = len(self.hist)
        if n >= self.min_history:
            mean = self.s1 / n
            var = max(self.s2 / n - mean * mean, 0.0)
            sd = max(math.sqrt(var), 0.05)
            if len(self._recent) == self._recent.maxlen:
                result = tail_surprise((avg - mean) / sd)
            # winsorise what is learnt: one burst must not inflate the spread for `history` rows
            # (a lasting change still moves the mean by up to CLIP sd per row, so it is learnt)
            avg = min(avg, mean + LIKELIHOOD_CLIP * sd)
        if n == self.hist.maxlen:
            old = self.hist[0]
            self.s1 -= old
            self.s2 -= old * old
        self.hist.append(avg)
        self.s1 += avg
        self.s2 += avg * avg
        return result


class Recalibration:
    """Shrinks a detector's surprise by how much more often than nominal it was reached.

    A surprise ``s = -log10 p`` is right when the detector reaches level ``L`` on a fraction
    ``10^-L`` of normal rows. Real sensors have heavier tails than the detectors' models, so some
    detectors reach ``L`` far more often: on a long stream that is a false alert every few hours
    at any fixed threshold. This keeps, for a few levels ``L``, the count ``E(L)`` of rows at or
    above ``L`` and the count ``N`` of rows judged (both decaying over ``memory`` rows; the
    detector learns only outside alert episodes, plus each episode's first row, so an anomaly
    does not teach itself away). The rate of reaching ``L`` is estimated as
    ``r = (E(L) + a 10^-L) / (N + a)``: ``a`` rows of prior belief that the detector is right.
    The surprise becomes ``s - log10(max(1, r / 10^-L))`` with ``L`` the highest level at or
    below ``s``. A detector that is right (or quiet) keeps its surprise; an over-confident one is
    corrected by its observed excess, down to ``-log10 r`` at the level: something a sensor does
    every 150 rows is worth about 2.2, however unlikely a Gaussian finds it."""

    __slots__ = ("_grow", "_nominal", "_w", "counts", "levels", "n", "prior")

    def __init__(self, levels: Sequence[float], memory: int, prior: float) -> None:
        self.levels = tuple(levels)
        self._nominal = tuple(10.0**-lv for lv in self.levels)
        # exponential forgetting without touching every count on every row: each new row weighs
        # ``_w``, which grows by 1/decay per row (counts and ``n`` share the scale; rescaled now
        # and then so the numbers stay finite)
        self.counts = [0.0] * len(self.levels)
        self.n = 0.0
        self.prior = prior
        self._grow = 1.0 / (1.0 - 1.0 / memory)
        self._w = 1.0

    def excess(self, s: float) -> float:
        """``log10`` of the observed / expected exceedance ratio at the level below ``s``."""
        k = -1
        for i, lv in enumerate(self.levels):
            if s < lv:
                break
            k = i
        if k < 0:
            return 0.0
        a = self.prior * self._w  # the prior is in rows of the current weight
        nominal = self._nominal[k]
        ratio = (self.counts[k] + a * nominal) / ((self.n + a) * nominal)
        return math.log10(ratio) if ratio > 1.0 else 0.0

    def learn(self, s: float) -> None:
        w = self._w * self._grow
        if w > 1e150:
            self.counts = [c / w for c in self.counts]
            self.n /= w
            w = 1.0
        self._w = w
        self.n += w
        counts = self.counts
        for i, lv in enumerate(self.levels):
            if s < lv:
                break
            counts[i] += w


# --------------------------------------------------------------------------- cheap detectors
class LevelShift:
    """max over features of |EW mean (short) - EW mean (long)| / EW std (long), as a surprise."""

    def __init__(self, n: int, short_rows: int, long_rows: int, lik: Likelihood) -> None:
        self.a_s = 2.0 / (short_rows + 1)
        self.a_l = 2.0 / (long_rows + 1)
        self.short = [0.0] * n
        self.mean = [0.0] * n
        self.var = [0.0] * n
        self.count = 0
        self.warm = short_rows
        self.lik = lik

    def reset(self) -> None:
        self.lik.reset_short()

    def update(self, row: Sequence[float]) -> float | None:
        if self.count == 0:
            self.short = list(row)
            self.mean = list(row)
        self.count += 1
        stat2 = 0.0  # the largest squared standardised difference
        a_s, a_l = self.a_s, self.a_l
        short, mean, var = self.short, self.mean, self.var
        for i, x in enumerate(row):
            s = short[i]
            s += a_s * (x - s)
            short[i] = s
            m = mean[i]
            v = var[i]
            d = s - m
            if v > 1e-24 * max(1.0, m * m) and d * d > stat2 * v:
                stat2 = d * d / v
            dx = x - m
            mean[i] = m + a_l * dx
            var[i] = (1.0 - a_l) * (v + a_l * dx * dx)
        stat = math.sqrt(stat2)
        if self.count <= self.warm:
            return None
        return self.lik.update(stat)


class Shift:
    """Per feature, the EW mean of the last ``short_rows`` rows minus an EW mean over
    ``long_rows``, in units of that long EW standard deviation (``d``), judged against the
    feature's own recent spread of ``d``: ``z = |d| / rms(d)`` with ``rms`` learnt over
    ``calib_rows`` rows (winsorised at 4 rms, floored at 0.1 sd, so a quiet sensor does not
    become hair-trigger), learnt from ``warm`` rows on and judged from ``2 warm`` rows on.
    Surprise: the two-sided Gaussian tail of the largest ``z``, Bonferroni-corrected for the
    number of features. Unlike ``level`` (which judges the *log* of its statistic, whose spread
    is huge near zero) this keeps the statistic linear: a sustained change of a few normal
    spreads in one sensor scores high within ``short_rows`` rows. The long spread is not updated
    while ``frozen`` (the detector sets it during an alert episode)."""

    FLOOR = 0.01  # rms(d)^2 never below this (0.1 long sd)

    def __init__(
        self,
        n: int,
        short_rows: int,
        long_rows: int,
        calib_rows: int,
        warm: int,
        recal: Callable[[], Recalibration] | None = None,
    ) -> None:
        self.recal = [recal() for _ in range(n)] if recal is not None else None
        self.a_s = 2.0 / (short_rows + 1)
        self.a_l = 2.0 / (long_rows + 1)
        self.short = [0.0] * n
        self.mean = [0.0] * n
        self.var = [0.0] * n
        self.c2 = [1.0] * n
        self.count = 0
        self.calib = calib_rows
        self.warm = warm
        self.correction = math.log10(2.0) - math.log10(max(n, 1))
        self.frozen = False  # set by the detector during an alert episode

    def reset(self) -> None:
        pass

    def update(self, row: Sequence[float]) -> float | None:
        r = self.count
        self.count += 1
        if r == 0:
            self.short = list(row)
            self.mean = list(row)
        a_s, a_l = self.a_s, self.a_l
        short, mean, var, c2 = self.short, self.mean, self.var, self.c2
        judged = r >= self.warm
        alpha = 1.0 / min(r - self.warm + 1, self.calib) if judged else 0.0
        zmax = 0.0
        smax = 0.0
        recal = self.recal
        learn = not self.frozen
        for i, x in enumerate(row):
            s = short[i] + a_s * (x - short[i])
            short[i] = s
            m = mean[i]
            v = var[i]
            d2 = (s - m) * (s - m) / v if v > 1e-20 * max(1.0, m * m) else 0.0
            c = c2[i]
            if judged:
                z2 = d2 / max(c, self.FLOOR)
                if recal is not None:
                    # below z = 2 the surprise is under every level: no tail to compute
                    rc = recal[i]
                    raw = tail_surprise(math.sqrt(z2)) if z2 >= 4.0 else 0.0
                    si = raw - rc.excess(raw) if raw > 0.0 else 0.0
                    if learn and r >= 2 * self.warm:
                        rc.learn(raw)
                    if si > smax:
                        smax = si
                elif z2 > zmax:
                    zmax = z2
                c2[i] = c + alpha * (min(d2, 16.0 * max(c, self.FLOOR)) - c)
            elif r == 2:
                c2[i] = max(d2, 1e-6)
            elif r > 2:
                w = 1.0 / (r - 1)
                c2[i] = (1.0 - w) * c + w * min(d2, 1e6)
            dx = x - m
            mean[i] = m + a_l * dx
            if not self.frozen:  # an episode does not teach the normal spread
                var[i] = (1.0 - a_l) * (v + a_l * dx * dx)
        if r < 2 * self.warm:  # the learnt spread is young: learn, do not judge yet
            return None
        if recal is not None:
            return max(0.0, smax + self.correction)
        return max(0.0, tail_surprise(math.sqrt(zmax)) + self.correction)


class Stuck:
    """Runs of identical values: ``p = q^(n - 2 L)`` with ``q`` the feature's learnt chance that
    a value repeats the previous one (at least ``1 - 1/(1 + mean run)``) and ``L`` the longest
    run seen recently (decaying over ``history`` rows): quantised sensors that sit on one value
    for a while are not "stuck", a run far longer than any normal one is."""

    def __init__(
        self, n: int, history: int, min_rows: int, min_history: int, memory: int | None = None
    ) -> None:
        self.history = history
        self.memory = memory or history
        self.q = [0.0] * n
        self.mean_run = [0.0] * n
        self.longest = [0.0] * n
        self.run = [0] * n
        self.prev: list[float] | None = None
        self.seen = 0
        self.min_rows = min_rows
        self.min_history = min_history
        self.bonferroni = math.log10(max(n, 1))

    def reset(self) -> None:
        self.prev = None
        self.run = [0] * len(self.run)

    def update(self, row: Sequence[float]) -> float | None:
        prev = self.prev
        self.prev = list(row)
        if prev is None:
            return None
        self.seen += 1
        alpha = 1.0 / min(self.seen, self.history)
        best = 0.0
        for i, x in enumerate(row):
            same = x == prev[i]
            n = self.run[i]
            if same:
                n += 1
            elif n:
                # a run ended: learn its length (runs longer than min_rows only slowly, so a stuck
                # sensor becomes the new normal only after about `history` rows)
                w = alpha if n < self.min_rows else alpha / 4
                self.mean_run[i] += w * (n - self.mean_run[i])
                if n > self.longest[i]:
                    self.longest[i] = float(n)
                n = 0
            self.longest[i] *= 1.0 - 1.0 / self.memory
            self.run[i] = n
            if n < self.min_rows:
                self.q[i] += alpha * ((1.0 if same else 0.0) - self.q[i])
            excess = n - 2.0 * self.longest[i]
            if n >= self.min_rows and excess > 0:
                q = max(self.q[i], 1.0 - 1.0 / (1.0 + self.mean_run[i]))
                q = min(max(q, 1e-3), 0.999)
                best = max(best, -excess * math.log10(q) - self.bonferroni)
        if self.seen < self.min_history:
            return None
        return min(best, MAX_SURPRISE)


class _SlidingExtreme:
    """Min or max of the last ``size`` values (monotonic deque, amortised O(1))."""

    __slots__ = ("_q", "_sign", "i", "size")

    def __init__(self, size: int, is_max: bool) -> None:
        self._q: deque[tuple[int, float]] = deque()
        self._sign = 1.0 if is_max else -1.0
        self.size = size
        self.i = 0

    def value(self) -> float | None:
        return self._sign * self._q[0][1] if self._q else None

    def add(self, x: float) -> None:
        v = self._sign * x
        q = self._q
        while q and q[-1][1] <= v:
            q.pop()
        q.append((self.i, v))
        self.i += 1
        while q[0][0] <= self.i - 1 - self.size:
            q.popleft()


class Range:
    """Values beyond the recent min/max envelope, and breaches of configured hard limits."""

    def __init__(
        self, n: int, history: int, min_history: int, limits: Sequence[tuple[float, float] | None]
    ) -> None:
        self.lo = [_SlidingExtreme(history, False) for _ in range(n)]
        self.hi = [_SlidingExtreme(history, True) for _ in range(n)]
        self.limits = list(limits) if limits else [None] * n
        self.n = n
        self.seen = 0
        self.min_history = min_history

    def reset(self) -> None:
        pass

    def update(self, row: Sequence[float]) -> float | None:
        best = 0.0
        judged = self.seen >= self.min_history
        for i, x in enumerate(row):
            lim = self.limits[i]
            if lim is not None and not lim[0] <= x <= lim[1]:
                best = MAX_SURPRISE
            if judged:
                lo, hi = self.lo[i].value(), self.hi[i].value()
                if lo is not None and hi is not None:
                    span = max(hi - lo, 1e-9 * max(1.0, abs(hi)))
                    excess = max(lo - x, x - hi) / span
                    if excess > 0:
                        seen = min(self.seen, self.lo[i].size)
                        s = math.log10(seen / self.n) + RANGE_SLOPE * excess
                        best = max(best, min(s, MAX_SURPRISE))
            self.lo[i].add(x)
            self.hi[i].add(x)
        self.seen += 1
        return best if judged or best >= MAX_SURPRISE else None


# --------------------------------------------------------------------------- model
class WindowModel:
    """A fitted window model: the numpy reference layers, the spec, optionally LiteRT."""

    def __init__(
        self, layers: list[tuple[Any, Any]] | None, spec: ModelSpec, tflite: Any = None
    ) -> None:
        import numpy as np  # lazy: optional extra [ml]

        self.layers = layers
        self.spec = spec
        self.tflite = tflite
        scale = spec.residual_scale or (spec.scaling.std if spec.scaling is not None else None)
        self.inv_scale = (
            1.0 / np.tile(np.asarray(scale, dtype=np.float64), spec.window)
            if scale is not None
            else np.ones(spec.input_size)
        )
        self.offset = (
            np.tile(np.asarray(spec.input_offset, dtype=np.float64), spec.window)
            if spec.input_offset is not None
            else None
        )

    def score(self, window: Array) -> float:
        """Mean squared normalised reconstruction error of one flattened raw window."""
        import numpy as np  # lazy: optional extra [ml]

        if self.tflite is not None:
            return float(self.tflite.score(window))
        x = window if self.offset is None else window - self.offset
        assert self.layers is not None
        out = dense_forward(self.layers, x[None, :].astype(np.float32))[0]
        d = (x - out) * self.inv_scale
        return float(np.dot(d, d) / d.size)

    def residuals(self, windows: Array) -> Array:
        """Raw reconstruction residuals ``x - x_hat`` of several windows (model input space)."""
        import numpy as np  # lazy: optional extra [ml]

        x = windows if self.offset is None else windows - self.offset[None, :]
        if self.tflite is not None:
            out = np.stack([self.tflite.forward(w) for w in x])
        else:
            assert self.layers is not None
            out = dense_forward(self.layers, x.astype(np.float32))
        result: Array = x - out
        return result

    def score_many(self, windows: Array) -> Array:
        import numpy as np  # lazy: optional extra [ml]

        if self.tflite is not None or self.layers is None:
            return np.array([self.score(w) for w in windows])
        x = windows if self.offset is None else windows - self.offset[None, :]
        out = dense_forward(self.layers, x.astype(np.float32))
        d = (x - out) * self.inv_scale[None, :]
        result: Array = np.mean(d * d, axis=1)
        return result


def load_window_model(result: Any, use_litert: bool) -> WindowModel:
    """A ``WindowModel`` of a ``fit.FitResult`` (LiteRT from the flatbuffer bytes if wanted)."""
    tflite = None
    if use_litert and litert.runtime_available() is not None:
        tflite = litert.TFLiteModel(None, result.spec, model_content=result.model)
    return WindowModel(result.layers, result.spec, tflite)


@dataclass
class RefitOutcome:
    """What a background refit produced: the model to install, or why not."""

    model: WindowModel | None
    reason: str
    baseline: list[float] = field(default_factory=list)  # new model's errors, newest rows
    cpu_s: float = 0.0
    generation: int = 0


def refit(
    segments: list[Array],
    features: Sequence[str],
    window: int,
    current: WindowModel | None,
    *,
    use_litert: bool,
    history: int,
    generation: int,
    recent: list[Array] | None = None,
) -> RefitOutcome:
    """Fit a PCA autoencoder on ``segments`` and validate it against ``current`` (worker side)."""
    import numpy as np  # lazy: optional extra [ml]

    started = time.process_time()
    try:
        parts: list[Any] = [(list(range(len(s))), s) for s in segments]
        result = fit_pca_autoencoder(parts, features, window, source="online refit")
    except FitError as exc:
        return RefitOutcome(None, f"fit failed: {exc}", cpu_s=time.process_time() - started)
    # the static threshold is not used here: only a held-out error far above the training error
    # (the newest rows are not like the rest) stops a refit
    ratio = float(result.spec.calibration.get("holdout_to_train_ratio", 1.0))
    if ratio >= CALIBRATION_REFUSE_RATIO:
        return RefitOutcome(
            None,
            f"rejected: held-out error {ratio:.3g}x the training error",
            cpu_s=time.process_time() - started,
        )
    model = load_window_model(result, use_litert)
    usable = [s for s in segments if len(s) >= window]
    hold = make_windows(usable[-1], window) if usable else np.empty((0, window * len(features)))
    hold = hold[-max(1, len(hold) // 5) :]
    reason = "installed"
    if current is not None and len(hold):
        # compare on one scale: squared residuals in units of the data's own spread (each
        # model's normalised score divides by its own training residual, not comparable)
        assert result.spec.scaling is not None
        unit = 1.0 / np.tile(np.asarray(result.spec.scaling.std), window)[None, :]
        new_err = np.mean((model.residuals(hold) * unit) ** 2, axis=1)
        old_err = np.mean((current.residuals(hold) * unit) ** 2, axis=1)
        if np.median(new_err) > 1.25 * np.median(old_err):
            return RefitOutcome(
                None,
                f"rejected: median error on the newest rows {np.median(new_err):.3g} vs "
                f"{np.median(old_err):.3g} with the current model",
                cpu_s=time.process_time() - started,
            )
    # the new model's errors on every recent window (alerting ones too: a change the refit did
    # not train on must not look new again the moment the model is swapped)
    base_src = [s for s in (recent or usable) if len(s) >= window]
    all_windows = np.concatenate([make_windows(s, window) for s in base_src])
    baseline = model.score_many(all_windows[-history:]).tolist()
    return RefitOutcome(
        model, reason, baseline, cpu_s=time.process_time() - started, generation=generation
    )


# --------------------------------------------------------------------------- detector
class RowBuffer:
    """The newest ``size`` rows (float64 ring buffer), their segment and whether they were part
    of an alert episode: what a refit trains on. ~8 bytes per value, allocated on first use."""

    def __init__(self, size: int, n: int) -> None:
        self.size = size
        self.n = n
        self.count = 0
        self.pos = 0
        self._rows: Any = None
        self._seg: Any = None
        self._flag: Any = None

    def __len__(self) -> int:
        return self.count

    def append(self, seg: int, row: Sequence[float], flagged: bool) -> None:
        if self._rows is None:
            import numpy as np  # lazy: optional extra [ml]

            self._rows = np.empty((self.size, self.n), dtype=np.float64)
            self._seg = np.empty(self.size, dtype=np.int64)
            self._flag = np.empty(self.size, dtype=bool)
        i = self.pos
        self._rows[i] = row
        self._seg[i] = seg
        self._flag[i] = flagged
        self.pos = (i + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def ordered(self) -> tuple[Any, Any, Any]:
        """Copies of (segments, rows, flagged), oldest first."""
        import numpy as np  # lazy: optional extra [ml]

        if self._rows is None:
            return (
                np.empty(0, dtype=np.int64),
                np.empty((0, self.n)),
                np.empty(0, dtype=bool),
            )
        idx = (np.arange(self.count) + (self.pos - self.count)) % self.size
        return self._seg[idx], self._rows[idx], self._flag[idx]


def _runs(rows: Any, seg: Any, keep: Any, min_len: int) -> list[Array]:
    """Maximal runs of kept rows within one segment, at least ``min_len`` long."""
    out: list[Array] = []
    start = None
    for i in range(len(rows) + 1):
        ok = i < len(rows) and bool(keep[i]) and (start is None or seg[i] == seg[start])
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start >= min_len:
                out.append(rows[start:i].copy())
            start = i if i < len(rows) and bool(keep[i]) else None
    return out


@dataclass(slots=True)
class Prepared:
    """A row accepted by ``prepare``: the window to score (or None) and the model generation."""

    ts: int
    row: list[float]
    window: Any
    generation: int


@dataclass(slots=True)
class Verdict:
    score: float | None
    components: dict[str, float]
    raised: bool = False
    cleared: bool = False


class OnlineDetector:
    """See the module docstring. Not thread-safe: call it from one thread (the event loop);
    ``refit`` jobs are pure functions of a snapshot and may run in a worker."""

    def __init__(
        self,
        features: Sequence[str],
        params: OnlineParams | None = None,
        *,
        model: WindowModel | None = None,
        limits: Sequence[tuple[float, float] | None] | None = None,
    ) -> None:
        self.features = list(features)
        self.p = p = params or OnlineParams()
        n = len(self.features)
        self.model = model
        self.window_len = model.spec.window if model is not None else p.window
        self.generation = 0
        self.window: deque[list[float]] = deque(maxlen=self.window_len)
        self._flat: deque[float] = deque(maxlen=self.window_len * len(self.features))
        max_gap = p.max_gap_ms
        if max_gap is None and model is not None:
            max_gap = model.spec.max_gap_ms
        self.gate = Segmenter(max_gap, learn=max_gap is None)
        self.rows = RowBuffer(p.refit_rows, n)
        self.segment = 0
        self.rows_seen = 0
        self.since_fit = 0
        self.refit_pending = False
        self.model_lik = Likelihood(p.history, p.short, p.min_history)
        self.level = LevelShift(
            n, p.level_short, p.history, Likelihood(p.history, p.short, p.min_history)
        )
        self.drift = LevelShift(
            n, p.drift_rows, 4 * p.history, Likelihood(p.history, p.short, p.min_history)
        )
        self.shift = Shift(
            n,
            p.shift_short,
            p.shift_long,
            p.shift_calib,
            p.min_history,
            (lambda: Recalibration(p.recal_levels, p.shift_recal_memory, p.recal_prior))
            if p.shift_recal_memory > 0
            else None,
        )
        self.weights = dict(p.weights)
        self.stuck = Stuck(n, p.history, p.stuck_min_rows, p.min_history, p.stuck_memory)
        self.recal = (
            {k: Recalibration(p.recal_levels, p.recal_memory, p.recal_prior) for k in p.detectors}
            if p.recal_memory > 0
            else {}
        )
        self.score_recal = (
            Recalibration(p.recal_levels, p.recal_memory, p.recal_prior)
            if p.recal_memory > 0 and p.score_recal
            else None
        )
        self.range = Range(n, p.history, p.min_history, list(limits) if limits else [])
        self.active = False
        self.below = 0
        self.counters = {
            "out_of_order": 0,
            "segments": 0,
            "refits": 0,
            "refits_rejected": 0,
            "episodes": 0,
        }
        self.last_refit: RefitOutcome | None = None

    # ------------------------------------------------------------------ rows
    def prepare(self, ts: int, row: Sequence[float]) -> Prepared | None:
        """Accept a row (None: dropped as out of order, or invalid); restart the window at gaps
        and non-finite values (``rows.Segmenter``, as ``edgegw model fit``); return the window
        to score."""
        import numpy as np  # lazy: optional extra [ml]

        if not all(math.isfinite(x) for x in row):
            self.break_segment()
            return None
        verdict = self.gate.accept(ts)
        if verdict == "drop":
            self.counters["out_of_order"] += 1
            return None
        if verdict == "break":
            self.break_segment()
        values = [float(x) for x in row]
        self.window.append(values)
        self._flat.extend(values)
        win = None
        if self.model is not None and len(self.window) == self.window_len:
            win = np.array(self._flat, dtype=np.float64)
        return Prepared(ts, values, win, self.generation)

    def break_segment(self) -> None:
        """A gap or an invalid value: nothing short-term spans it."""
        if self.window:
            self.counters["segments"] += 1
        self.window.clear()
        self._flat.clear()
        self.segment += 1
        self.model_lik.reset_short()
        self.level.reset()
        self.shift.reset()
        self.drift.reset()
        self.stuck.reset()

    def step(self, ts: int, row: Sequence[float]) -> Verdict | None:
        """Synchronous path: prepare, score the window inline, judge (bench, eval, tests)."""
        prep = self.prepare(ts, row)
        if prep is None:
            return None
        raw = self.model.score(prep.window) if prep.window is not None and self.model else None
        return self.judge(prep, raw)

    def judge(self, prep: Prepared, raw: float | None) -> Verdict:
        """Combine the detectors for one prepared row (``raw``: the model error of its window)."""
        p = self.p
        comps: dict[str, float] = {}
        on = p.detectors
        weights = self.weights
        if raw is not None and prep.generation == self.generation and "model" in on:
            s = self.model_lik.update(raw)
            if s is not None:
                comps["model"] = s
        row = prep.row
        self.shift.frozen = self.active
        for name, det in (
            ("shift", self.shift),
            ("level", self.level),
            ("drift", self.drift),
            ("stuck", self.stuck),
            ("range", self.range),
        ):
            if name in on:
                s = det.update(row)
                if s is not None:
                    comps[name] = s
        recal = self.recal
        if recal:
            learn = not self.active
            for name, s in comps.items():
                rc = recal.get(name)
                if rc is None or s >= MAX_SURPRISE:
                    continue
                shrink = rc.excess(s)
                if learn:
                    rc.learn(s)
                comps[name] = max(0.0, s - shrink)
        if weights:
            for name, s in comps.items():
                if name in weights and s < MAX_SURPRISE:
                    comps[name] = s * weights[name]
        score = max(comps.values()) if comps else None
        if score is not None and self.score_recal is not None and score < MAX_SURPRISE:
            shrink = self.score_recal.excess(score)
            if not self.active:
                self.score_recal.learn(score)
            score = max(0.0, score - shrink)
        verdict = Verdict(score, comps)
        if score is not None:
            if not self.active and score >= p.threshold:
                self.active = True
                self.below = 0
                self.counters["episodes"] += 1
                verdict.raised = True
            elif self.active:
                self.below = self.below + 1 if score < p.clear else 0
                if self.below >= p.clear_rows:
                    self.active = False
                    verdict.cleared = True
        flagged = score is not None and score >= p.clear
        self.rows.append(self.segment, row, flagged or self.active)
        self.rows_seen += 1
        self.since_fit += 1
        return verdict

    # ------------------------------------------------------------------ refit
    def refit_due(self) -> bool:
        p = self.p
        if self.refit_pending or "model" not in p.detectors:
            return False
        if self.model is not None and self.model.spec.kind != "pca_autoencoder":
            return False  # a model brought from elsewhere is never replaced by a PCA refit
        if self.model is None:
            return self.since_fit >= p.learn_rows
        return p.refit_every > 0 and self.since_fit >= p.refit_every

    def refit_job(self) -> Callable[[], RefitOutcome]:
        """A snapshot of the newest normal rows and a function fitting on it (run anywhere)."""
        import numpy as np  # lazy: optional extra [ml]

        self.refit_pending = True
        self.since_fit = 0
        seg, rows, flagged = self.rows.ordered()
        w = self.window_len
        # training: runs of unflagged rows inside one segment
        keep = ~flagged
        segments = _runs(rows, seg, keep, w)
        # baseline: every recent row (alerting ones too), by segment
        tail = slice(max(0, len(rows) - (self.p.history + w)), len(rows))
        recent = _runs(rows[tail], seg[tail], np.ones(len(rows[tail]), dtype=bool), w)
        current = self.model
        features = list(self.features)
        window = self.window_len
        use_litert = self.p.use_litert
        history = self.p.history
        generation = self.generation + 1
        return lambda: refit(
            segments,
            features,
            window,
            current,
            use_litert=use_litert,
            history=history,
            generation=generation,
            recent=recent,
        )

    def install(self, outcome: RefitOutcome) -> bool:
        """Swap in a validated refit (on the detector's thread); True if installed."""
        self.refit_pending = False
        self.last_refit = outcome
        if outcome.model is None:
            self.counters["refits_rejected"] += 1
            return False
        self.counters["refits"] += 1
        self.model = outcome.model
        self.generation = outcome.generation
        self.model_lik.rebase(outcome.baseline)
        return True

    def refit_now(self) -> RefitOutcome | None:
        """Inline refit when due (bench, eval, tests without a worker)."""
        if not self.refit_due():
            return None
        outcome = self.refit_job()()
        self.install(outcome)
        return outcome

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "rows": self.rows_seen, "active": self.active}
