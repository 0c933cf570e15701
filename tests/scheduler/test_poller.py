"""DevicePoller: read results -> samples, every failure -> quality samples, nothing escapes.

The drivers here are small real PolledDriver subclasses written for the test (the behaviours
under test — raising each SDK error, hanging, returning garbage — are the driver's own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from edgegw import (
    BadDataError,
    DriverOptions,
    PermanentError,
    PointValue,
    PolledDriver,
    Quality,
    Sample,
    TransientError,
)
from edgegw.protocol.model import SampleBlock
from edgegw.runtime.poller import DevicePoller


class ScriptedDriver(PolledDriver):
    """Returns or raises the next item of ``script`` on each read."""

    known: ClassVar[tuple[str, ...]] = ("a", "b")

    def __init__(self, script: list[Any]) -> None:
        super().__init__(DriverOptions())
        self.script = script

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        return cls.known

    async def read(self) -> Any:
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        if item == "hang":
            await asyncio.Event().wait()
        return item


class NoPoints(ScriptedDriver):
    known = ()


def make(script: list[Any], cls: type[ScriptedDriver] = ScriptedDriver,
         sink: Any = None) -> tuple[DevicePoller, list[Sample]]:
    out: list[Sample] = []
    poller = DevicePoller("dev", cls(script), period=1.0, timeout=0.05,
                          sink=sink or out.extend, wall_clock=lambda: 1_700_000_000_000)
    return poller, out


async def test_values_and_point_values_become_samples() -> None:
    poller, out = make([{"a": 1.5, "b": PointValue(7, Quality.OUT_OF_RANGE, ts_ms=42),
                         "c": PointValue(None, Quality.BAD_DATA)}])
    assert await poller.poll() is True
    assert out == [
        Sample("dev", "a", 1_700_000_000_000, 1.5, Quality.GOOD),
        Sample("dev", "b", 42, 7, Quality.OUT_OF_RANGE),
        Sample("dev", "c", 1_700_000_000_000, None, Quality.BAD_DATA),
    ]


class LatePointValue(PointValue):
    """A driver's own PointValue subclass: still a PointValue."""


async def test_plain_values_become_samples_in_order() -> None:
    """The plain-values path (every poll of a register map) gives real, ordered Samples."""
    plain: dict[str, Any] = {f"r{i}": i * 7 for i in range(50)} | {"s": "RUN", "f": 2.5,
                                                                   "n": None, "t": True}
    poller, out = make([plain, {"a": 1, "b": LatePointValue(3, Quality.STALE, ts_ms=5)}])
    assert await poller.poll() is True
    assert out == [Sample("dev", k, 1_700_000_000_000, v, Quality.GOOD) for k, v in plain.items()]
    assert all(type(s) is Sample and s.good for s in out)
    assert out[3].metric == "r3" and out[3].value == 21 and out[3].ts_ms == 1_700_000_000_000
    out.clear()
    assert await poller.poll() is True  # a PointValue subclass takes the per-point path
    assert out == [Sample("dev", "a", 1_700_000_000_000, 1, Quality.GOOD),
                   Sample("dev", "b", 5, 3, Quality.STALE)]


@pytest.mark.parametrize(
    ("error", "quality", "kind"),
    [(TransientError("gone"), Quality.COMM_ERROR, "TransientError"),
     (BadDataError("crc"), Quality.BAD_DATA, "BadDataError"),
     (PermanentError("no such register"), Quality.CONFIG_ERROR, "PermanentError"),
     ("hang", Quality.COMM_ERROR, "timeout"),
     ([1, 2], Quality.COMM_ERROR, "unexpected")],  # not a mapping: the driver is broken
)
async def test_failures_give_one_sample_per_known_point(error: Any, quality: Quality,
                                                        kind: str) -> None:
    poller, out = make([error])
    assert await poller.poll() is False
    assert [(s.metric, s.value, s.quality) for s in out] == [("a", None, quality),
                                                             ("b", None, quality)]
    assert poller.errors == {kind: 1} and poller.failures == 1
    # skipped slots (breaker open) repeat the last failure's quality
    await poller.report_skipped()
    assert [s.quality for s in out[2:]] == [quality, quality]


async def test_unexpected_exception_is_logged_with_driver_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller, _ = make([ZeroDivisionError("oops"), {"a": 1}])
    with caplog.at_level(logging.ERROR, logger="edgegw.poller"):
        assert await poller.poll() is False
    assert "ScriptedDriver raised ZeroDivisionError" in caplog.text
    assert await poller.poll() is True  # the next poll works as usual
    assert poller.stats()["errors"] == {"unexpected": 1} and poller.stats()["polls"] == 2


async def test_no_known_points_gives_a_status_sample() -> None:
    poller, out = make([TransientError("x")], cls=NoPoints)
    await poller.poll()
    assert [(s.metric, s.quality) for s in out] == [("_status", Quality.COMM_ERROR)]


async def test_async_sink_and_failing_sink() -> None:
    got: list[Sample] = []

    async def async_sink(samples: list[Sample]) -> None:
        await asyncio.sleep(0)
        got.extend(samples)

    poller, _ = make([{"a": 1}], sink=async_sink)
    assert await poller.poll() is True and [s.value for s in got] == [1]

    def broken_sink(samples: list[Sample]) -> None:
        raise OSError("pipeline closed")

    poller, _ = make([{"a": 1}], sink=broken_sink)
    assert await poller.poll() is True  # the device is fine; the sink problem is counted
    assert poller.stats()["sink_errors"] == 1


async def test_plain_values_are_emitted_as_one_block_per_poll() -> None:
    """A poll of plain values reaches the sink as ONE SampleBlock (columns, no Sample objects
    made): the Samples it stands for, its series keys kept from poll to poll while the point
    names stay the same (the encoder and the series dictionary read them as they are)."""
    got: list[Any] = []
    poller, _ = make([{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 5, "c": 6}], sink=got.append)
    for _ in range(3):
        assert await poller.poll() is True
    assert all(type(b) is SampleBlock for b in got)
    first, second, third = got
    assert (first.device, first.metrics, first.ts_ms, first.values) == (
        "dev", ("a", "b"), 1_700_000_000_000, [1, 2])
    assert list(second) == [Sample("dev", "a", 1_700_000_000_000, 3),
                            Sample("dev", "b", 1_700_000_000_000, 4)]
    assert second.keys is first.keys and first.keys == (("dev", "a"), ("dev", "b"))
    assert third.keys == (("dev", "a"), ("dev", "c")) and poller.samples_out == 6
