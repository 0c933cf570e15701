"""The OTA chunk server: answers a gateway's ``request`` with ``chunk`` messages.

The gateway pulls (``edgegw.protocol.ota_transfer``): it asks for up to 64 chunk indexes of a
release and paces itself (bandwidth cap, chunks in flight). For each request this server reads
the asked chunks from the release's ``payload.tar`` (a seek and a read of ``chunk_size`` bytes
each: never the whole file in memory) and sends one sealed ``chunk`` message per index.

Invariants:
- Nothing here runs on paho's network thread: ``submit`` only queues (bounded; a full queue
  drops the request, counted, and the gateway asks again), one worker thread reads and sends
  (``Downlink.send`` waits for the broker's PUBACK, which paho's own thread must not do).
- Only a gateway that ``authorize(gateway, release)`` admits (an offered, unfinished target of
  a running or halted rollout of that release) gets chunks; any other request is a counted
  refusal. A request for an unknown release, or an index past the last chunk, is counted and
  ignored (the other, valid indexes of the same request are still answered).
- The payload and manifest are read from disk at every request, so the bytes sent are the
  release's bytes as stored now.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgegw.protocol import ota_transfer as ot

log = logging.getLogger("edgegw.cloud.chunks")

Send = Callable[[str, dict[str, Any]], bool]
Authorize = Callable[[str, str], bool]


def _release_dir(releases_dir: Path, release_id: str) -> Path | None:
    """The release's directory, or None if ``release_id`` is not a published release."""
    if "/" in release_id or release_id.startswith(".") or release_id.endswith(".tmp"):
        return None
    d = releases_dir / release_id
    return d if (d / "manifest.json").is_file() and (d / "payload.tar").is_file() else None


def chunk_layout(release_dir: Path) -> tuple[int, int]:
    """(chunk_size, chunk count) from the stored manifest."""
    doc = json.loads((release_dir / "manifest.json").read_bytes())
    payload = doc["payload"]
    return int(payload["chunk_size"]), len(payload["chunks"])


class ChunkServer:
    """``submit(gateway, request)`` from any thread; ``start()``/``stop()`` the worker."""

    def __init__(self, releases_dir: Path, send: Send, authorize: Authorize, *,
                 max_queued: int = 256) -> None:
        self.releases_dir = Path(releases_dir)
        self.send = send
        self.authorize = authorize
        self._queue: queue.Queue[tuple[str, ot.Request] | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self.counts: dict[str, int] = defaultdict(int)
        self.bytes_sent = 0

    def start(self) -> ChunkServer:
        self._thread = threading.Thread(target=self._work, name="ota-chunks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        while True:  # make room for the stop mark: queued requests are dropped on stop
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout)
        self._thread = None

    def submit(self, gw: str, req: ot.Request) -> None:
        """Queue a request (never blocks: a full queue drops it, the gateway re-asks)."""
        self.counts["requests"] += 1
        try:
            self._queue.put_nowait((gw, req))
        except queue.Full:
            self.counts["requests_dropped_busy"] += 1
            log.info("chunk request from %s dropped: %d requests queued", gw, self._queue.qsize())

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.serve(*item)
            except Exception:
                self.counts["errors"] += 1
                log.exception("chunk request from %s failed", item[0])

    def serve(self, gw: str, req: ot.Request) -> int:
        """Answer one request now (the worker's job; tests may call it). Returns chunks sent."""
        rdir = _release_dir(self.releases_dir, req.release)
        if rdir is None:
            self.counts["refused_unknown_release"] += 1
            log.warning("chunk request from %s for unknown release %r ignored", gw, req.release)
            return 0
        if not self.authorize(gw, req.release):
            self.counts["refused_not_targeted"] += 1
            log.warning("chunk request from %s for %s refused: not an active target of a "
                        "rollout of this release", gw, req.release)
            return 0
        try:
            chunk_size, count = chunk_layout(rdir)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.counts["refused_bad_manifest"] += 1
            log.error("release %s: stored manifest unreadable: %s", req.release, exc)
            return 0
        sent = 0
        with (rdir / "payload.tar").open("rb") as payload:
            for index in req.chunks:
                if not 0 <= index < count:
                    self.counts["refused_index_out_of_range"] += 1
                    log.warning("chunk request from %s for %s index %d (of %d) ignored", gw,
                                req.release, index, count)
                    continue
                payload.seek(index * chunk_size)
                data = payload.read(chunk_size)
                if not self.send(gw, ot.Chunk(req.release, index, data).body()):
                    self.counts["chunks_unsent"] += 1
                    return sent  # not connected / no PUBACK: the gateway asks again
                self.counts["chunks_sent"] += 1
                self.bytes_sent += len(data)
                sent += 1
        return sent
