"""The decode thread of one RTSP camera: connect, demux, decode, analyse, snapshot, reconnect.

One ``CameraWorker`` = one dedicated OS thread; video is never decoded on the event loop.
The thread talks to the asyncio side only through ``on_snapshot`` (called from this thread; the
driver makes it thread-safe) and through ``harvest()`` (lock-protected interval counters).

Invariants:
- Every blocking FFmpeg call is bounded: ``av.open`` gets both the FFmpeg socket timeout
  (microseconds) and PyAV's ``timeout=(open, read)``, so a silent peer cannot hang the thread.
- End of stream (a killed server ends the demux loop without an exception) is a disconnect.
- Reconnects back off exponentially from ``backoff_min`` to ``backoff_max`` with jitter
  (50-100 % of the step); the step resets after a session delivered frames for
  ``STABLE_AFTER`` seconds, so a flapping camera cannot cause a reconnect storm.
- No exception escapes the thread: anything unexpected is logged, counted and retried.
- ``stop()`` returns within about ``read_timeout`` (the longest uninterruptible wait) + 1 s.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import av
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from edgegw.drivers.rtsp.imaging import FrameAnalyzer, JpegEncoder
from edgegw.drivers.rtsp.options import RtspOptions
from edgegw.model import now_ms

STABLE_AFTER = 10.0  # seconds of frames before the reconnect backoff resets


@dataclass(frozen=True, slots=True)
class Snapshot:
    ts_ms: int
    jpeg: bytes
    width: int
    height: int


@dataclass
class IntervalStats:
    """What happened since the previous ``harvest()``."""

    frames_received: int = 0  # video packets that arrived
    frames_decoded: int = 0  # pictures the decoder produced
    frames_analysed: int = 0  # pictures that went into brightness/motion
    brightness_sum: float = 0.0
    motion_sum: float = 0.0
    motion_count: int = 0  # analysed frames that had a predecessor
    decode_errors: int = 0
    reconnects: int = 0
    elapsed_s: float = 0.0

    @property
    def brightness(self) -> float | None:
        return self.brightness_sum / self.frames_analysed if self.frames_analysed else None

    @property
    def motion(self) -> float | None:
        return self.motion_sum / self.motion_count if self.motion_count else None

    @property
    def fps(self) -> float:
        return self.frames_received / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class _Totals:
    frames_received: int = 0
    frames_decoded: int = 0
    decode_errors: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    snapshots: int = 0
    snapshot_errors: int = 0
    last_error: str = ""


class CameraWorker:
    """Owns the decode thread of one camera."""

    def __init__(
        self,
        options: RtspOptions,
        on_snapshot: Callable[[Snapshot], None],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        *,
        name: str = "rtsp",
    ) -> None:
        self.options = options
        self._on_snapshot = on_snapshot
        self._log = log
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"rtsp-{name}", daemon=True)
        self._interval = IntervalStats()
        self._interval_started = time.monotonic()
        self._totals = _Totals()
        self._analyzer = FrameAnalyzer(options.analysis_width)
        self._encoder = JpegEncoder(
            options.snapshot_width, options.snapshot_height, options.jpeg_quality
        )
        self._last_snapshot = float("-inf")
        self._last_processed = float("-inf")
        self._packet_index = 0
        self._snapshot_failing = False
        self._in_trouble = False
        self.started_at = time.monotonic()
        #: monotonic time of the last video packet received (None: none yet)
        self.last_frame_at: float | None = None
        self.connected = False

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> None:
        self.started_at = time.monotonic()
        self._interval_started = self.started_at
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to finish and wait for it; True when it has ended."""
        self._stop.set()
        if not self._thread.is_alive():
            return True
        if timeout is None:
            timeout = self.options.open_timeout + self.options.read_timeout + 1.0
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def harvest(self) -> IntervalStats:
        """Return the interval counters and start a new interval."""
        now = time.monotonic()
        with self._lock:
            stats = self._interval
            stats.elapsed_s = now - self._interval_started
            self._interval = IntervalStats()
            self._interval_started = now
        return stats

    def stats(self) -> dict[str, int | float | str]:
        with self._lock:
            t = self._totals
            return {
                "frames_received": t.frames_received,
                "frames_decoded": t.frames_decoded,
                "decode_errors": t.decode_errors,
                "connects": t.connects,
                "connect_failures": t.connect_failures,
                "disconnects": t.disconnects,
                "snapshots": t.snapshots,
                "snapshot_errors": t.snapshot_errors,
                "connected": int(self.connected),
                "last_error": t.last_error,
            }

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        step = 0
        while not self._stop.is_set():
            session_start = time.monotonic()
            frames_before = self._totals.frames_received
            try:
                self._session()
                reason = "end of stream"
            except Exception as exc:  # FFmpeg/network errors, and anything unexpected
                reason = self._redact(f"{type(exc).__name__}: {exc}")
            self.connected = False
            if self._stop.is_set():
                break
            got_frames = self._totals.frames_received > frames_before
            with self._lock:
                self._totals.last_error = reason
                if got_frames:
                    self._totals.disconnects += 1
                    self._interval.reconnects += 1
            if got_frames and time.monotonic() - session_start >= STABLE_AFTER:
                step = 0
            delay = min(self.options.backoff_max, self.options.backoff_min * 2**step)
            delay *= random.uniform(0.5, 1.0)
            step = min(step + 1, 30)
            # health flips are logged once (INFO); the retries of a dead camera only at DEBUG
            level = logging.DEBUG if self._in_trouble and not got_frames else logging.INFO
            self._in_trouble = True
            self._log.log(
                level,
                "camera %s: %s; reconnecting in %.1fs",
                self.options.redacted_url,
                reason,
                delay,
            )
            self._stop.wait(delay)

    def _redact(self, text: str) -> str:
        """Error texts from FFmpeg quote the URL: never let its password reach a log."""
        text = text.replace(self.options.url, self.options.redacted_url)
        password = urlsplit(self.options.url).password
        return text.replace(password, "***") if password else text

    def _open(self) -> InputContainer:
        o = self.options
        options = {"rtsp_transport": o.transport, "timeout": str(int(o.read_timeout * 1e6))}
        if o.low_latency:
            options |= {
                "fflags": "nobuffer",
                "flags": "low_delay",
                "probesize": "32768",
                "analyzeduration": "0",
            }
        try:
            container = av.open(o.url, options=options, timeout=(o.open_timeout, o.read_timeout))
        except Exception:
            with self._lock:
                self._totals.connect_failures += 1
            raise
        return container

    def _session(self) -> None:
        container = self._open()
        try:
            if not container.streams.video:
                raise ValueError("the stream has no video track")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            ctx.thread_count = 1  # bound CPU: one core per camera at most
            if self.options.keyframes_only:
                ctx.skip_frame = "NONKEY"
            intra_only = bool(ctx.codec.intra_only)
            self.connected = True
            with self._lock:
                self._totals.connects += 1
            self._analyzer.reset()
            self._in_trouble = False
            self._log.log(
                logging.INFO if self._in_trouble else logging.DEBUG,
                "camera %s: connected, codec %s %sx%s",
                self.options.redacted_url,
                ctx.name,
                ctx.width,
                ctx.height,
            )
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                if packet.size == 0:  # demuxer flush packet
                    continue
                self._on_packet(stream, packet, intra_only)
        finally:
            container.close()

    def _due(self) -> bool:
        """Whether the current frame is one to process (decode_every / max_fps)."""
        if self._packet_index % self.options.decode_every != 0:
            return False
        if self.options.max_fps is not None:
            return time.monotonic() - self._last_processed >= 1.0 / self.options.max_fps
        return True

    def _on_packet(self, stream: VideoStream, packet: Any, intra_only: bool) -> None:
        now = time.monotonic()
        self.last_frame_at = now
        self._packet_index += 1
        due = self._due()
        with self._lock:
            self._interval.frames_received += 1
            self._totals.frames_received += 1
        if intra_only and not due:
            return  # every picture stands alone: skipping the decode loses nothing
        try:
            frames = stream.codec_context.decode(packet)
        except av.FFmpegError as exc:
            with self._lock:
                self._interval.decode_errors += 1
                self._totals.decode_errors += 1
            self._log.debug("camera %s: undecodable packet: %s", self.options.redacted_url, exc)
            return
        for frame in frames:
            with self._lock:
                self._interval.frames_decoded += 1
                self._totals.frames_decoded += 1
            if due:
                self._process(frame)

    def _process(self, frame: VideoFrame) -> None:
        now = time.monotonic()
        self._last_processed = now
        metrics = self._analyzer.analyse(frame)
        with self._lock:
            iv = self._interval
            iv.frames_analysed += 1
            iv.brightness_sum += metrics.brightness
            if metrics.motion is not None:
                iv.motion_sum += metrics.motion
                iv.motion_count += 1
        every = self.options.snapshot_every
        if every > 0 and now - self._last_snapshot >= every:
            self._last_snapshot = now
            try:
                jpeg, width, height = self._encoder.encode(frame)
            except Exception as exc:  # an odd frame format must not kill the thread
                with self._lock:
                    self._totals.snapshot_errors += 1
                if not self._snapshot_failing:  # log the flip, not every failure
                    self._snapshot_failing = True
                    self._log.warning(
                        "camera %s: snapshot failed: %s: %s",
                        self.options.redacted_url,
                        type(exc).__name__,
                        exc,
                    )
                return
            if self._snapshot_failing:
                self._snapshot_failing = False
                self._log.info("camera %s: snapshots work again", self.options.redacted_url)
            with self._lock:
                self._totals.snapshots += 1
            self._on_snapshot(Snapshot(now_ms(), jpeg, width, height))
