"""DevicePoller: the PollTarget that wraps one polled driver instance.

Invariants:
- Every poll yields samples: values (GOOD, or the ``PointValue``'s own quality and timestamp),
  or, when the read fails, one sample per known point (``Driver.points(options)``; a single
  ``_status`` metric if none are known) with ``value=None`` and the error's quality
  (timeout -> COMM_ERROR). A failed read is a quality change, never silence.
- ``poll`` never raises: driver errors, timeouts and unexpected exceptions are counted (by
  kind), logged (unexpected ones with the driver name) and reported as ``False``.
- Slots skipped by the scheduler's open breaker are reported by ``report_skipped`` with the
  quality of the last failure (COMM_ERROR for a device that stopped answering).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat
from typing import Any

from edgegw.model import Quality, Sample, now_ms
from edgegw.protocol.model import SampleBlock
from edgegw.runtime.deadline import Deadline
from edgegw.sdk import Columns, DriverError, PointValue, PolledDriver

log = logging.getLogger("edgegw.poller")

Sink = Callable[[Sequence[Sample]], Awaitable[None] | None]
STATUS_METRIC = "_status"
_new = tuple.__new__


class DevicePoller:
    """Polls one driver with a timeout and hands the resulting samples to ``sink``."""

    def __init__(
        self,
        device_id: str,
        driver: PolledDriver,
        *,
        period: float,
        timeout: float,
        sink: Sink,
        stagger: bool = True,
        driver_name: str | None = None,
        wall_clock: Callable[[], int] = now_ms,
    ) -> None:
        self.device_id = device_id
        self.driver = driver
        self.period = period
        self._deadline = Deadline(timeout)  # asyncio.timeout without a timer per poll
        self.stagger = stagger
        #: (index, count): its bus among the buses of the gateway with staggered devices (set
        #: by the device manager); None = its own index among its bus's devices
        self.stagger_slot: tuple[int, int] | None = None
        self.sink = sink
        self.driver_name = driver_name or type(driver).__name__
        self._wall_clock = wall_clock
        known: Sequence[str] = ()
        try:
            known = type(driver).points(driver.options)
        except Exception:  # a third-party driver's points() must not stop the device
            log.warning(
                "driver %s: points() failed for device %s",
                self.driver_name,
                device_id,
                exc_info=True,
            )
        self.known_points: tuple[str, ...] = tuple(known) or (STATUS_METRIC,)
        self.last_error_quality = Quality.COMM_ERROR
        self.last_quality: Quality | None = None  # None until the first poll (OTA health gate)
        self.polls = 0
        self.failures = 0
        self.samples_out = 0
        self.sink_errors = 0
        self.errors: dict[str, int] = {}
        self.last_latency = 0.0
        self.max_latency = 0.0
        # the last poll's metric names and their series keys (shared by its SampleBlocks)
        self._metrics: tuple[str, ...] = ()
        self._keys: tuple[tuple[str, str], ...] = ()

    @property
    def timeout(self) -> float:
        """Seconds one poll may take before it is abandoned as a COMM_ERROR."""
        return self._deadline.seconds

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._deadline.seconds = seconds

    async def poll(self) -> bool:
        """One read; returns False when it failed (the breaker counts those)."""
        self.polls += 1
        start = time.perf_counter()
        try:
            with self._deadline:  # (a plain with: entering and leaving never await)
                result = await self.driver.read()
            samples = self._samples(result)
            ok = True
        except DriverError as exc:
            ok, samples = False, self._failed(exc.quality, type(exc).__name__)
            log.debug("device %s: %s: %s", self.device_id, type(exc).__name__, exc)
        except TimeoutError:
            ok, samples = False, self._failed(Quality.COMM_ERROR, "timeout")
            log.debug("device %s: read timed out after %.3gs", self.device_id, self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ok, samples = False, self._failed(Quality.COMM_ERROR, "unexpected")
            log.error(
                "driver %s raised %s for device %s: %s",
                self.driver_name,
                type(exc).__name__,
                self.device_id,
                exc,
                exc_info=True,
            )
        self.last_latency = time.perf_counter() - start
        self.last_quality = Quality.GOOD if ok else self.last_error_quality
        self.max_latency = max(self.max_latency, self.last_latency)
        await self._emit(samples)
        return ok

    async def report_skipped(self) -> None:
        """Called by the scheduler for slots skipped while the device's breaker is open."""
        self._count("circuit_open")
        await self._emit(self._samples_for_failure(self.last_error_quality))

    def stats(self) -> dict[str, Any]:
        return {
            "polls": self.polls,
            "failures": self.failures,
            "samples": self.samples_out,
            "sink_errors": self.sink_errors,
            "errors": dict(self.errors),
            "last_latency_s": self.last_latency,
            "max_latency_s": self.max_latency,
        }

    # ----------------------------------------------------------------- internals
    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _failed(self, quality: Quality, kind: str) -> list[Sample]:
        self.failures += 1
        self._count(kind)
        self.last_error_quality = quality
        return self._samples_for_failure(quality)

    def _samples_for_failure(self, quality: Quality) -> list[Sample]:
        ts = self._wall_clock()
        return [Sample(self.device_id, name, ts, None, quality) for name in self.known_points]

    def _samples(self, result: Any) -> Sequence[Sample]:
        ts, dev, good = self._wall_clock(), self.device_id, Quality.GOOD
        if type(result) is Columns:  # the driver's columns as they are (issue 13)
            metrics, values = result.names, result.data
        elif any(issubclass(t, PointValue) for t in set(map(type, result.values()))):
            # Some point has a quality of its own: one Sample each, built as tuples in C
            # (``tuple.__new__``: what ``Sample._make`` does, without a Python call per reading)
            return [
                _new(Sample, (dev, name, ts, value, good))
                if not isinstance(value, PointValue)
                else _new(Sample, (
                    dev,
                    name,
                    value.ts_ms if value.ts_ms is not None else ts,
                    value.value,
                    value.quality,
                ))
                for name, value in result.items()
            ]
        else:
            metrics, values = tuple(result), list(result.values())  # plain values in a mapping
        # One SampleBlock (no object per reading). Its series keys are kept while the names
        # stay the same (every poll of a healthy device).
        if metrics is not self._metrics:
            if metrics != self._metrics:
                self._keys = tuple(zip(repeat(dev), metrics))
            self._metrics = metrics
        return SampleBlock(dev, metrics, ts, values, self._keys)

    async def _emit(self, samples: Sequence[Sample]) -> None:
        n = len(samples)
        if not n:
            return
        try:
            result = self.sink(samples)
            if result is not None and inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            self.sink_errors += 1
            log.exception("device %s: sink rejected %d samples", self.device_id, n)
            return
        self.samples_out += n
