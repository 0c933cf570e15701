"""Sliding time windows over one numeric series, for rule window functions.

A ``SeriesHistory`` keeps the GOOD numeric samples of one device metric for as long as the
longest window any rule asks of it (its ``horizon``), plus always the last two samples (``prev``).

Invariants:
- Samples are appended in timestamp order; an older-than-last sample is dropped and counted
  by the caller (``add`` returns False), so windows stay sorted and bisectable.
- A window of ``w`` seconds evaluated at ``t`` holds the samples with ``t - w < ts``.
- Functions over an empty window raise ``Unknown`` (except ``count``, which is 0); ``delta`` and
  ``rate`` need two samples. ``stddev`` is the population standard deviation (numpy's default).
- Memory is bounded by the horizon: trimming is amortised O(1) per sample.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from edgegw.edge.expr import Unknown


class SeriesHistory:
    __slots__ = ("_head", "horizon_ms", "last_ts", "ts", "values")

    def __init__(self, horizon_s: float = 0.0) -> None:
        self.horizon_ms = math.ceil(horizon_s * 1000)
        self.ts: list[int] = []
        self.values: list[float] = []
        self._head = 0
        self.last_ts: int | None = None

    def __len__(self) -> int:
        return len(self.ts) - self._head

    def add(self, ts_ms: int, value: float) -> bool:
        """Append a sample; False (not stored) when it is older than the last one."""
        if self.last_ts is not None and ts_ms < self.last_ts:
            return False
        self.ts.append(ts_ms)
        self.values.append(value)
        self.last_ts = ts_ms
        self._trim(ts_ms)
        return True

    def _trim(self, now_ms: int) -> None:
        cutoff = now_ms - self.horizon_ms
        head = self._head
        last_keep = len(self.ts) - 2  # always keep two samples for prev()
        while head < last_keep and self.ts[head] <= cutoff:
            head += 1
        self._head = head
        if head > 64 and head * 2 > len(self.ts):
            del self.ts[:head]
            del self.values[:head]
            self._head = 0

    def window(self, fn: str, seconds: float, now_ms: int) -> float:
        """``fn`` (avg, min, max, sum, count, stddev, delta, rate, prev, age) at ``now_ms``."""
        if fn == "prev":
            if len(self) < 2:
                raise Unknown
            return self.values[-2]
        if fn == "age":
            if self.last_ts is None:
                raise Unknown
            return max(0, now_ms - self.last_ts) / 1000.0
        start = bisect_right(self.ts, now_ms - int(seconds * 1000), self._head)
        n = len(self.ts) - start
        if fn == "count":
            return float(n)
        if n == 0:
            raise Unknown
        vals = self.values[start:]
        if fn == "avg":
            return math.fsum(vals) / n
        if fn == "min":
            return min(vals)
        if fn == "max":
            return max(vals)
        if fn == "sum":
            return math.fsum(vals)
        if fn == "stddev":
            mean = math.fsum(vals) / n
            return math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / n)
        if n < 2:
            raise Unknown
        if fn == "delta":
            return vals[-1] - vals[0]
        if fn == "rate":
            dt = (self.ts[-1] - self.ts[start]) / 1000.0
            if dt <= 0:
                raise Unknown
            return (vals[-1] - vals[0]) / dt
        raise ValueError(f"unknown window function {fn!r}")
