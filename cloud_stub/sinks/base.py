"""The sink interface (see edgegw_cloud.sinks): what a sink gets and must implement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Reading(NamedTuple):
    """One decoded reading as sinks see it."""

    gateway: str
    device: str
    metric: str
    ts_ms: int
    value: Any  # float | int | bool | str | None | bytes
    quality: int


class SinkError(Exception):
    """A sink could not take readings (peer down, bad URL); the message says what."""


class Sink:
    """Base class: a sink gets a URL, then ``write`` calls from one thread, then ``close``."""

    schemes: tuple[str, ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url

    def write(self, readings: Sequence[Reading]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; flush what can be flushed quickly."""
