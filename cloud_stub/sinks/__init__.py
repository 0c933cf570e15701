"""Sinks: hand decoded readings to the tools a plant already runs (like Telegraf outputs).

A sink is a small class: ``Sink(url)``, ``write(readings)``, ``close()``. ``edgegw-cloud serve
--forward URL`` (repeatable) picks one by the URL scheme:

- ``mqtt://HOST:PORT/PREFIX`` (``mqtts://`` with ``?ca=FILE``): JSON per reading on
  ``PREFIX/<gateway>/<device>/<metric>`` (edgegw_cloud.sinks.mqtt_json);
- ``influx+udp://HOST:PORT``, ``influx+tcp://HOST:PORT``, ``influx+file:///PATH``: InfluxDB line
  protocol (Telegraf's socket_listener, InfluxDB 1.x UDP, or a file) (edgegw_cloud.sinks.influx).

Third-party sinks register a scheme under the entry-point group ``edgegw_cloud.sinks``
(``myscheme = "pkg.module:MySink"``); a broken plugin fails ``serve`` at start with its name.

Invariants (the ``Forwarder``):
- Forwarding happens AFTER the durable commit, only for batches stored for the first time (a
  re-sent duplicate is never forwarded twice by the same ingest). The store stays the source of
  truth: a sink is best effort, fed from a bounded queue; when the queue is full or a sink
  fails, the readings for that sink are dropped and COUNTED (``stats()``), never retried
  forever, and the ingest is never slowed down by a sink.
- A sink failure is logged at WARNING once per episode (first failure, then when it recovers
  with the count dropped meanwhile), never once per reading.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from edgegw.protocol.broker_url import parse_endpoint_url
from edgegw_cloud.sinks.base import Reading, Sink, SinkError
from edgegw_cloud.sinks.influx import InfluxLineSink
from edgegw_cloud.sinks.mqtt_json import MqttJsonSink

__all__ = ["Forwarder", "Reading", "Sink", "SinkError", "open_sink", "safe_url", "sink_class"]

log = logging.getLogger("edgegw.cloud.sinks")

ENTRY_POINT_GROUP = "edgegw_cloud.sinks"
QUEUE_BATCHES = 10_000


def _builtin() -> dict[str, type[Sink]]:
    out: dict[str, type[Sink]] = {}
    for cls in (MqttJsonSink, InfluxLineSink):
        for scheme in cls.schemes:
            out[scheme] = cls
    return out


def sink_class(url: str) -> type[Sink]:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    found = _builtin()
    if scheme in found:
        return found[scheme]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            try:
                cls = ep.load()
            except Exception as exc:
                raise SinkError(
                    f"sink plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
            return cls
    known = sorted({*found, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise SinkError(f"no sink for {url!r}: known schemes {', '.join(known)}")


def open_sink(url: str) -> Sink:
    return sink_class(url)(url)


def safe_url(url: str) -> str:
    """The URL for logs, without a password."""
    try:
        u = parse_endpoint_url(url)
    except ValueError:
        return url.split("@", 1)[-1]
    if u.password:
        return url.replace(f":{u.password}@", ":***@", 1)
    return url


class _SinkState:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.written = 0
        self.dropped = 0
        self.failing = False
        self.dropped_in_episode = 0


class Forwarder:
    """Feeds every sink from one bounded queue in one thread; ``offer`` never blocks."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._states = [_SinkState(s) for s in sinks]
        self._queue: queue.Queue[list[Reading] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.queue_dropped = 0
        self._thread.start()

    @classmethod
    def from_urls(cls, urls: Sequence[str]) -> Forwarder:
        return cls([open_sink(u) for u in urls])

    def offer(self, readings: list[Reading]) -> None:
        if not readings:
            return
        try:
            self._queue.put_nowait(readings)
        except queue.Full:
            self.queue_dropped += len(readings)
            if self.queue_dropped == len(readings):
                log.warning("forwarder queue full: readings for the sinks are dropped (counted)")

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                self._queue.task_done()
                return
            try:
                self._write_all(batch)
            finally:
                self._queue.task_done()

    def _write_all(self, batch: list[Reading]) -> None:
        for st in self._states:
            try:
                st.sink.write(batch)
            except Exception as exc:
                st.dropped += len(batch)
                st.dropped_in_episode += len(batch)
                if not st.failing:
                    st.failing = True
                    log.warning("sink %s failed (%s): its readings are dropped until it "
                                "recovers", safe_url(st.sink.url), exc)
                continue
            st.written += len(batch)
            if st.failing:
                st.failing = False
                log.warning("sink %s recovered; %d readings were dropped meanwhile",
                            safe_url(st.sink.url), st.dropped_in_episode)
                st.dropped_in_episode = 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every offered batch went through the sinks (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "queue_dropped": self.queue_dropped,
            "sinks": {safe_url(s.sink.url): {"written": s.written, "dropped": s.dropped}
                      for s in self._states},
        }

    def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        for st in self._states:
            try:
                st.sink.close()
            except Exception as exc:
                log.debug("closing sink %s: %s", safe_url(st.sink.url), exc)
