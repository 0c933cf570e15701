"""RTSP camera driver: JPEG snapshots on the bulk lane and per-interval video metrics.

The asyncio side of the driver. Decoding happens on one dedicated thread per camera
(``worker.CameraWorker``); this side turns what the thread reports into samples:

- ``snapshot`` (bytes, JPEG) on ``Lane.BULK`` every ``snapshot_every``;
- every ``metrics_every`` on ``Lane.TELEMETRY``: ``brightness`` (mean luma 0-255), ``motion``
  (mean absolute luma difference of consecutive processed frames, 0-255), ``fps`` (frames
  received per second), and the interval counts ``frames_received``, ``frames_decoded``,
  ``decode_errors``, ``reconnects``.

Invariants:
- A camera that delivers no frame for ``frame_deadline`` is reported, not silent: at once and
  then on every metrics interval, ``brightness``, ``motion`` and ``fps`` are emitted with
  quality ``comm_error`` (value None) until frames resume. Counts stay GOOD (they are true).
- Packets that arrived but never decoded in an interval give ``bad_data`` brightness/motion.
- PyAV (and numpy) are imported lazily: the gateway runs without the ``camera`` extra and only
  ``open()`` of an RTSP device fails, with PermanentError "install edgegw[camera]".
- The event loop never blocks: the thread hands snapshots over with ``call_soon_threadsafe``
  into a small bounded queue; when the uplink side is slower, snapshots are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from edgegw.drivers.rtsp.options import RtspOptions
from edgegw.model import Lane, Quality, Sample, now_ms
from edgegw.sdk import DeviceContext, DriverOptions, Emit, PermanentError, PushDriver

if TYPE_CHECKING:
    from edgegw.drivers.rtsp.worker import CameraWorker, IntervalStats, Snapshot

VIDEO_METRICS = ("brightness", "motion", "fps")
COUNT_METRICS = ("frames_received", "frames_decoded", "decode_errors", "reconnects")
SNAPSHOT_METRIC = "snapshot"
SNAPSHOT_QUEUE = 4  # snapshots waiting for emit(); more are dropped (and counted)

INSTALL_HINT = "install edgegw[camera] (pip install 'edgegw[camera]') to use RTSP cameras"


def _load_worker_module() -> object:
    """Import the decode side (PyAV + numpy) or fail with an actionable PermanentError."""
    try:
        return importlib.import_module("edgegw.drivers.rtsp.worker")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise PermanentError(f"RTSP driver needs {missing!r}: {INSTALL_HINT}") from exc


class RtspDriver(PushDriver):
    """Push driver for one RTSP camera (H.264, H.265, MJPEG... whatever FFmpeg decodes)."""

    Options: ClassVar[type[DriverOptions]] = RtspOptions

    def __init__(self, options: DriverOptions) -> None:
        super().__init__(options)
        assert isinstance(options, RtspOptions)
        self.opts: RtspOptions = options
        self._worker: CameraWorker | None = None
        self._queue: asyncio.Queue[Snapshot] | None = None
        self._stalled = False
        self._snapshots_dropped = 0
        self._samples_emitted = 0

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        return (*VIDEO_METRICS, *COUNT_METRICS, SNAPSHOT_METRIC)

    async def open(self, ctx: DeviceContext) -> None:
        await super().open(ctx)
        _load_worker_module()

    async def close(self) -> None:
        worker = self._worker
        if worker is None:
            return
        stopped = await self.ctx.run_blocking(worker.stop)
        if not stopped:  # cannot happen with bounded timeouts; say so loudly if it does
            self.ctx.log.error("camera %s: decode thread did not stop", self.opts.redacted_url)

    def stats(self) -> dict[str, int | float | dict[str, int | float | str]]:
        worker = self._worker.stats() if self._worker is not None else {}
        return {
            "stalled": int(self._stalled),
            "snapshots_dropped": self._snapshots_dropped,
            "samples_emitted": self._samples_emitted,
            "worker": worker,
        }

    # ------------------------------------------------------------------ main loop
    async def run(self, emit: Emit) -> None:
        module = _load_worker_module()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Snapshot] = asyncio.Queue(SNAPSHOT_QUEUE)
        self._queue = queue

        def offer(snapshot: Snapshot) -> None:  # on the loop
            try:
                queue.put_nowait(snapshot)
            except asyncio.QueueFull:
                self._snapshots_dropped += 1
                self.ctx.count("snapshots_dropped")

        def on_snapshot(snapshot: Snapshot) -> None:  # on the decode thread
            with contextlib.suppress(RuntimeError):  # loop already closed: nobody to tell
                loop.call_soon_threadsafe(offer, snapshot)

        worker: CameraWorker = module.CameraWorker(  # type: ignore[attr-defined]
            self.opts, on_snapshot, self.ctx.log, name=self.ctx.device_id
        )
        self._worker = worker
        worker.start()
        next_metrics = time.monotonic() + self.opts.metrics_every
        try:
            while True:
                now = time.monotonic()
                wake = min(next_metrics, self._deadline(worker))
                try:
                    # asyncio.timeout: 3.11's wait_for can swallow a cancellation (driver stop)
                    async with asyncio.timeout(max(0.0, wake - now)):
                        snapshot = await queue.get()
                except TimeoutError:
                    pass
                else:
                    sample = Sample(
                        self.ctx.device_id, SNAPSHOT_METRIC, snapshot.ts_ms, snapshot.jpeg
                    )
                    await self._emit(emit, [sample], Lane.BULK)
                now = time.monotonic()
                await self._check_stall(emit, worker, now)
                if now >= next_metrics:
                    await self._emit(emit, self._metric_samples(worker.harvest()), Lane.TELEMETRY)
                    # absolute schedule; skip intervals lost to a long emit instead of bursting
                    periods = int((now - next_metrics) // self.opts.metrics_every) + 1
                    next_metrics += periods * self.opts.metrics_every
        finally:
            worker.stop(timeout=0)  # only signals here; close() joins the thread

    def _deadline(self, worker: CameraWorker) -> float:
        if self._stalled:
            return float("inf")  # already reported; the metrics tick repeats it
        last = worker.last_frame_at if worker.last_frame_at is not None else worker.started_at
        return last + self.opts.frame_deadline

    async def _check_stall(self, emit: Emit, worker: CameraWorker, now: float) -> None:
        last = worker.last_frame_at if worker.last_frame_at is not None else worker.started_at
        stalled = now - last > self.opts.frame_deadline
        if stalled == self._stalled:
            return
        self._stalled = stalled
        if stalled:
            self.ctx.log.info(
                "camera %s: no frame for %.1fs, reporting comm_error (%s)",
                self.opts.redacted_url,
                now - last,
                worker.stats().get("last_error") or "no data",
            )
            ts = now_ms()
            await self._emit(
                emit,
                [
                    Sample(self.ctx.device_id, m, ts, None, Quality.COMM_ERROR)
                    for m in VIDEO_METRICS
                ],
                Lane.TELEMETRY,
            )
        else:
            self.ctx.log.info("camera %s: frames resumed", self.opts.redacted_url)

    def _metric_samples(self, iv: IntervalStats) -> list[Sample]:
        dev, ts = self.ctx.device_id, now_ms()
        samples = [
            Sample(dev, "frames_received", ts, iv.frames_received),
            Sample(dev, "frames_decoded", ts, iv.frames_decoded),
            Sample(dev, "decode_errors", ts, iv.decode_errors),
            Sample(dev, "reconnects", ts, iv.reconnects),
        ]
        if iv.decode_errors:
            self.ctx.count("decode_errors", iv.decode_errors)
        if iv.reconnects:
            self.ctx.count("reconnects", iv.reconnects)
        if self._stalled:
            samples += [Sample(dev, m, ts, None, Quality.COMM_ERROR) for m in VIDEO_METRICS]
            return samples
        samples.append(Sample(dev, "fps", ts, round(iv.fps, 3)))
        undecodable = iv.frames_analysed == 0 and iv.decode_errors > 0
        for metric, value in (("brightness", iv.brightness), ("motion", iv.motion)):
            if value is not None:
                samples.append(Sample(dev, metric, ts, round(value, 3)))
            elif undecodable:
                samples.append(Sample(dev, metric, ts, None, Quality.BAD_DATA))
            # else: no frame was due for analysis this interval (decode_every/max_fps/GOP)
        return samples

    async def _emit(self, emit: Emit, samples: list[Sample], lane: Lane) -> None:
        if samples:
            await emit(samples, lane=lane)
            self._samples_emitted += len(samples)
