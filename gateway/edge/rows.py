"""Rows of a device's metrics and the rules for accepting them, shared by the anomaly stage and
``edgegw model fit`` so both see exactly the same rows and windows.

Invariants: ``RowAssembler`` completes a row when every feature has a new GOOD value (timestamp:
the newest of them); ``Segmenter`` drops a row not newer than the previous one and marks a gap
longer than the max gap as a segment break. Non-GOOD and non-finite values are the caller's to
turn into a ``reset()`` and a break. No numpy here.
"""

from __future__ import annotations

from collections.abc import Sequence


class RowAssembler:
    """Rows of ``features`` from a stream of samples (shared with ``edgegw model fit``)."""

    __slots__ = ("_fresh", "_index", "_row", "_ts", "features")

    def __init__(self, features: Sequence[str]) -> None:
        self.features = list(features)
        self._index = {m: i for i, m in enumerate(self.features)}
        self._row: list[float] = [0.0] * len(self.features)
        self._fresh = [False] * len(self.features)
        self._ts = 0

    def reset(self) -> None:
        self._fresh = [False] * len(self.features)
        self._ts = 0

    def wants(self, metric: str) -> bool:
        return metric in self._index

    def add(self, metric: str, ts_ms: int, value: float) -> tuple[int, list[float]] | None:
        """Add a GOOD numeric value; returns ``(ts, row)`` when a row completes."""
        i = self._index[metric]
        self._row[i] = value
        self._fresh[i] = True
        if ts_ms > self._ts:
            self._ts = ts_ms
        if all(self._fresh):
            row, ts = list(self._row), self._ts
            self._fresh = [False] * len(self.features)
            self._ts = 0
            return ts, row
        return None


class Segmenter:
    """The row rules shared by ``edgegw model fit`` and the running anomaly stage.

    ``accept(ts)`` for a completed row returns ``"drop"`` (not newer than the last row: out of
    order), ``"break"`` (a gap longer than the max gap: the row starts a new segment) or ``"ok"``.
    The max gap is fixed (``max_gap_ms``, a fitted model's spec) or, when None and ``learn`` is
    set, 5x the median of the last 64 row intervals. Non-GOOD and non-finite values are the
    caller's: they call ``reset()`` and start a new segment.
    """

    __slots__ = ("_intervals", "last_ts", "learn", "max_gap_ms")

    def __init__(self, max_gap_ms: int | None, *, learn: bool = False) -> None:
        self.max_gap_ms = max_gap_ms
        self.learn = learn
        self.last_ts: int | None = None
        self._intervals: list[int] = []

    def limit(self) -> int | None:
        if self.max_gap_ms is not None or not self.learn or len(self._intervals) < 8:
            return self.max_gap_ms
        ordered = sorted(self._intervals[-64:])
        return 5 * ordered[len(ordered) // 2]

    def accept(self, ts: int) -> str:
        last = self.last_ts
        if last is not None and ts <= last:
            return "drop"
        self.last_ts = ts
        if last is None:
            return "ok"
        gap = ts - last
        limit = self.limit()
        if limit is not None and gap > limit:
            return "break"
        if self.learn:
            self._intervals.append(gap)
            if len(self._intervals) > 128:
                del self._intervals[:64]
        return "ok"
