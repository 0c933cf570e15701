"""The aggregation stage: tumbling windows, report-by-exception, or raw pass-through per metric.

Per device, ``aggregate:`` (with per-metric overrides under ``metrics:``) decides for each metric:
- raw pass-through: no ``aggregate`` config, ``raw: true``, or none of window/deadband/
  deadband_pct/max_silence set;
- windows: tumbling windows aligned to wall-clock multiples of ``window``
  (``start = floor(ts / w) * w``), closed once ``now >= start + w + lateness``; each closed window
  emits one sample per function at ``ts = start``, named by the ``name`` template
  (default ``{metric}.{fn}``, e.g. ``temp.mean``);
- report-by-exception (RBE): a value is sent when it differs from the last *sent* value by more
  than ``deadband`` (absolute) or ``deadband_pct`` percent of it (either one suffices), or when
  ``max_silence`` has passed since the last sent value (heartbeat, judged on sample timestamps);
  with neither deadband set, any change is sent. With a window too, RBE filters the window outputs.

Invariants:
- Non-GOOD samples pass through immediately and reset the RBE state of their metric, so a quality
  change, and the first good value after it, are never aggregated or filtered away.
- Non-numeric values (bool, str, bytes) pass through untouched.
- A sample for an already closed window is dropped and counted (``late_dropped``).
- ``stddev`` is the population standard deviation (Welford); ``mean``/``sum``/``stddev`` are
  floats, ``count`` an int, ``min``/``max``/``first``/``last`` keep the value's own type.
- The stage never reads the wall clock: windows close on the ``now_ms`` passed in.
- Wall-clock step back: a ``now_ms`` more than ``CLOCK_STEP_BACK_MS`` below the previous one is
  a clock step (NTP), not jitter. Every open window is closed at once (partial aggregates at
  ``ts = start``, as on shutdown), every series may open windows again in the stepped clock, and
  RBE baselines restart (counted ``clock_steps_back``). Without that, each new sample would be
  "late" and dropped until the clock passed the last closed window again, and the open windows
  would stay held (unsealed) for as long as the step. A window of the stepped clock may then
  repeat a ``ts`` already sent: both aggregates are delivered.
- Held samples (Stage API, ``edgegw.edge.stage``): a windowed sample is held until its window
  closes; the hold key is ``(series id, window start)``. ``flush`` closes every open window at
  once (partial aggregates at ``ts = start``, used on shutdown), after which a later sample for
  such a window counts as late.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgegw.edge.config import AggregateConfig, AggregateSpec
from edgegw.edge.expr import is_number
from edgegw.edge.stage import HoldKey, StageOutput
from edgegw.model import Sample

DEFAULT_LATENESS_S = 1.0
#: ``now_ms`` going back by more than this is a wall-clock step, not jitter between callers
CLOCK_STEP_BACK_MS = 2_000
DEFAULT_FUNCTIONS = ("mean",)
DEFAULT_NAME = "{metric}.{fn}"


@dataclass(frozen=True, slots=True)
class Plan:
    """The effective aggregation settings of one device metric."""

    raw: bool
    window_ms: int = 0
    functions: tuple[str, ...] = DEFAULT_FUNCTIONS
    lateness_ms: int = 0
    name: str = DEFAULT_NAME
    rbe: bool = False
    deadband: float | None = None
    deadband_pct: float | None = None
    max_silence_ms: int | None = None


RAW = Plan(raw=True)


def resolve_plan(cfg: AggregateConfig | None, metric: str) -> Plan:
    """Device-level settings overlaid with the metric's override (unset fields inherit)."""
    if cfg is None:
        return RAW
    over: AggregateSpec | None = cfg.metrics.get(metric)

    def pick(attr: str) -> Any:
        v = getattr(over, attr) if over is not None else None
        return v if v is not None else getattr(cfg, attr)

    if pick("raw"):
        return RAW
    window, deadband, pct, silence = (
        pick("window"),
        pick("deadband"),
        pick("deadband_pct"),
        pick("max_silence"),
    )
    rbe = deadband is not None or pct is not None or silence is not None
    if window is None and not rbe:
        return RAW
    lateness = pick("lateness")
    return Plan(
        raw=False,
        window_ms=round(window * 1000) if window else 0,
        functions=tuple(pick("functions") or DEFAULT_FUNCTIONS),
        lateness_ms=round((DEFAULT_LATENESS_S if lateness is None else lateness) * 1000),
        name=pick("name") or DEFAULT_NAME,
        rbe=rbe,
        deadband=deadband,
        deadband_pct=pct,
        max_silence_ms=round(silence * 1000) if silence else None,
    )


class Accumulator:
    """Running statistics of one window (Welford for mean/stddev)."""

    __slots__ = (
        "count",
        "first",
        "first_ts",
        "last",
        "last_ts",
        "m2",
        "max",
        "mean",
        "min",
        "total",
    )

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.total = 0.0
        self.min: float | int = math.inf
        self.max: float | int = -math.inf
        self.first: float | int = 0
        self.first_ts = 0
        self.last: float | int = 0
        self.last_ts = 0

    def add(self, ts: int, v: float | int) -> None:
        self.count += 1
        delta = v - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (v - self.mean)
        self.total += v
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        if self.count == 1 or ts < self.first_ts:
            self.first, self.first_ts = v, ts
        if self.count == 1 or ts >= self.last_ts:
            self.last, self.last_ts = v, ts

    def result(self, fn: str) -> float | int:
        if fn == "mean":
            return self.mean
        if fn == "count":
            return self.count
        if fn == "sum":
            return self.total
        if fn == "stddev":
            return math.sqrt(max(self.m2, 0.0) / self.count)
        value: float | int = getattr(self, fn)  # min, max, first, last
        return value


@dataclass(eq=False)
class _Series:
    device: str
    metric: str
    plan: Plan
    sid: int
    windows: dict[int, Accumulator] = field(default_factory=dict)
    closed_until: int = -(2**62)
    sent: dict[str, tuple[float, int]] = field(default_factory=dict)  # RBE: name -> (value, ts)
    names: dict[str, str] = field(default_factory=dict)


class AggregateStage:
    """Stage applying each device's ``aggregate:`` config; see the module docstring."""

    name = "aggregate"

    def __init__(self, configs: Mapping[str, AggregateConfig | None]) -> None:
        self._configs = {dev: cfg for dev, cfg in configs.items() if cfg is not None}
        self._series: dict[tuple[str, str], _Series] = {}
        self._deadlines: list[tuple[int, int, int]] = []  # (close at, series id, window start)
        self._by_id: list[_Series] = []
        self.counters: dict[str, int] = {
            "samples_in": 0,
            "passed_through": 0,
            "windows_closed": 0,
            "window_samples_out": 0,
            "late_dropped": 0,
            "rbe_sent": 0,
            "rbe_suppressed": 0,
            "heartbeats": 0,
            "flushed_windows": 0,
            "clock_steps_back": 0,
        }
        self._now: int | None = None
        self._held = 0
        self._new_holds: set[HoldKey] = set()
        self._released: set[HoldKey] = set()

    def _get(self, device: str, metric: str) -> _Series:
        key = (device, metric)
        series = self._series.get(key)
        if series is None:
            plan = resolve_plan(self._configs.get(device), metric)
            series = _Series(device, metric, plan, len(self._by_id))
            series.names = {fn: plan.name.format(metric=metric, fn=fn) for fn in plan.functions}
            self._series[key] = series
            self._by_id.append(series)
        return series

    # ------------------------------------------------------------------ stage protocol
    def _clock(self, now_ms: int) -> list[Sample]:
        """Notice a wall-clock step back (see the module docstring); returns the windows it
        closed."""
        prev, self._now = self._now, now_ms
        if prev is None or now_ms >= prev - CLOCK_STEP_BACK_MS:
            return []
        self.counters["clock_steps_back"] += 1
        n = len(self._deadlines)
        out = self._close(None)
        self.counters["flushed_windows"] += n
        for series in self._by_id:
            series.closed_until = -(2**62)
            series.sent.clear()  # RBE heartbeats are judged on timestamps: new baseline
        return out

    def process(self, samples: list[Sample], now_ms: int) -> StageOutput:
        c = self.counters
        c["samples_in"] += len(samples)
        if not self._configs:
            c["passed_through"] += len(samples)
            return samples, [], []
        out: list[Sample] = self._clock(now_ms)
        for s in samples:
            if s.device not in self._configs:
                out.append(s)
                c["passed_through"] += 1
                continue
            series = self._get(s.device, s.metric)
            plan = series.plan
            if plan.raw or not s.good or not is_number(s.value):
                if not s.good:
                    series.sent.clear()
                out.append(s)
                c["passed_through"] += 1
                continue
            v: float | int = s.value  # type: ignore[assignment]
            if plan.window_ms:
                w = plan.window_ms
                start = (s.ts_ms // w) * w
                if start < series.closed_until:
                    c["late_dropped"] += 1
                    continue
                acc = series.windows.get(start)
                if acc is None:
                    acc = series.windows[start] = Accumulator()
                    heapq.heappush(
                        self._deadlines, (start + w + plan.lateness_ms, series.sid, start)
                    )
                acc.add(s.ts_ms, v)
                self._held += 1
                self._new_holds.add((series.sid, start))
            elif self._rbe_pass(series, s.metric, s.ts_ms, v):
                out.append(s)
        out.extend(self._close(now_ms))
        return out, [], []

    def tick(self, now_ms: int) -> StageOutput:
        return self._clock(now_ms) + self._close(now_ms), [], []

    def flush(self, now_ms: int) -> StageOutput:
        """Close every open window now (shutdown): nothing stays held."""
        n = len(self._deadlines)
        out = self._close(None)
        self.counters["flushed_windows"] += n
        return out, [], []

    def held(self) -> int:
        return self._held

    def take_holds(self) -> frozenset[HoldKey]:
        holds, self._new_holds = frozenset(self._new_holds), set()
        return holds

    def take_released(self) -> frozenset[HoldKey]:
        released, self._released = frozenset(self._released), set()
        return released

    def stats(self) -> dict[str, Any]:
        open_windows = sum(len(s.windows) for s in self._series.values())
        return {
            **self.counters,
            "series": len(self._series),
            "open_windows": open_windows,
            "held": self._held,
        }

    # ------------------------------------------------------------------ internals
    def _close(self, now_ms: int | None) -> list[Sample]:
        """Close the windows due at ``now_ms`` (every open window when it is None)."""
        out: list[Sample] = []
        dl = self._deadlines
        while dl and (now_ms is None or dl[0][0] <= now_ms):
            _, sid, start = heapq.heappop(dl)
            series = self._by_id[sid]
            acc = series.windows.pop(start, None)
            if acc is None:
                continue
            self._held -= acc.count
            self._released.add((sid, start))
            plan = series.plan
            series.closed_until = max(series.closed_until, start + plan.window_ms)
            self.counters["windows_closed"] += 1
            for fn in plan.functions:
                name = series.names[fn]
                value = acc.result(fn)
                if plan.rbe and not self._rbe_pass(series, name, start, value):
                    continue
                out.append(Sample(series.device, name, start, value))
                self.counters["window_samples_out"] += 1
        return out

    def _rbe_pass(self, series: _Series, key: str, ts: int, v: float | int) -> bool:
        plan = series.plan
        last = series.sent.get(key)
        send = last is None
        if last is not None:
            lv, lts = last
            if plan.max_silence_ms is not None and ts - lts >= plan.max_silence_ms:
                send = True
                self.counters["heartbeats"] += 1
            else:
                diff = abs(v - lv)
                if plan.deadband is None and plan.deadband_pct is None:
                    send = diff != 0
                else:
                    send = (plan.deadband is not None and diff > plan.deadband) or (
                        plan.deadband_pct is not None and diff > abs(lv) * plan.deadband_pct / 100.0
                    )
        if send:
            series.sent[key] = (float(v), ts)
            self.counters["rbe_sent"] += 1
        else:
            self.counters["rbe_suppressed"] += 1
        return send
