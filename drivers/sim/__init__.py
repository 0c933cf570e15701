"""``sim`` driver: synthetic sensor signals, for demos, load tests and benchmarks.

Like Telegraf's ``inputs.mock``: no hardware needed. Polled by default (``read()`` returns one
value per point); with ``push_rate`` set it becomes a free-running source that emits
``push_rate`` samples per second per point in bursts of ``burst`` (for pipeline load tests).
Signals: ``sine`` (period, amplitude, offset), ``walk`` (bounded random walk), ``counter``,
``constant``. Values are deterministic per (device, point) given ``seed``.
"""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from edgegw import (
    DeviceContext,
    DriverOptions,
    Emit,
    PermanentError,
    PolledDriver,
    ReadResult,
    Sample,
    driver_command,
    now_ms,
)


class SimPoint(DriverOptions):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    signal: Literal["sine", "walk", "counter", "constant"] = "walk"
    amplitude: float = 10.0
    offset: float = 50.0
    period: float = Field(60.0, gt=0, description="seconds, for sine")
    step: float = Field(0.1, ge=0, description="random-walk step / counter increment")


class SimOptions(DriverOptions):
    points: list[SimPoint] = Field(min_length=1)
    seed: int = 0
    push_rate: float | None = Field(
        None, gt=0, description="samples/s per point; set to make this a push source"
    )
    burst: int = Field(100, ge=1, description="samples per point per emit in push mode")


class ResetArgs(BaseModel):
    """Arguments of the ``reset`` command."""

    point: str | None = Field(None, description="the counter to reset; all when omitted")
    to: int = Field(0, ge=0, description="restart the count here")


class _Signal:
    def __init__(self, p: SimPoint, seed: int) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.value = p.offset
        self.n = 0

    def next(self, ts_ms: int) -> float:
        p = self.p
        self.n += 1
        if p.signal == "sine":
            return p.offset + p.amplitude * math.sin(2 * math.pi * (ts_ms / 1000.0) / p.period)
        if p.signal == "counter":
            return p.offset + self.n * p.step
        if p.signal == "constant":
            return p.offset
        lo, hi = p.offset - p.amplitude, p.offset + p.amplitude
        self.value = min(hi, max(lo, self.value + self.rng.uniform(-p.step, p.step)))
        return round(self.value, 4)


class SimDriver(PolledDriver):
    """Synthetic signals; polled, or a push source when ``push_rate`` is set."""

    Options = SimOptions

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        assert isinstance(options, SimOptions)
        return [p.name for p in options.points]

    @property
    def pushes(self) -> bool:
        assert isinstance(self.options, SimOptions)
        return self.options.push_rate is not None

    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)
        opts = self.options
        assert isinstance(opts, SimOptions)
        base = zlib.crc32(ctx.device_id.encode()) ^ opts.seed
        self._signals = [_Signal(p, base + i) for i, p in enumerate(opts.points)]

    async def read(self) -> ReadResult:
        ts = now_ms()
        return {s.p.name: s.next(ts) for s in self._signals}

    @driver_command("reset", args=ResetArgs)
    async def reset(self, args: ResetArgs) -> dict[str, int]:
        """Restart counter signals (all, or ``point``) at ``to``; returns the points reset."""
        hit = [s for s in self._signals if args.point in (None, s.p.name)]
        if not hit:
            raise PermanentError(f"no point {args.point!r}")
        for sig in hit:
            sig.n = args.to
        return {sig.p.name: args.to for sig in hit}

    async def run(self, emit: Emit) -> None:
        """Push mode: ``push_rate`` samples/s per point, emitted in bursts."""
        opts = self.options
        assert isinstance(opts, SimOptions) and opts.push_rate
        loop = asyncio.get_running_loop()
        interval = opts.burst / opts.push_rate
        deadline = loop.time()
        dev = self.ctx.device_id
        while True:
            ts0 = now_ms()
            step_ms = 1000.0 / opts.push_rate
            batch = [
                Sample(dev, s.p.name, ts0 + int(i * step_ms), s.next(ts0))
                for i in range(opts.burst)
                for s in self._signals
            ]
            await emit(batch)
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
