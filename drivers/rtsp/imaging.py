"""Per-frame image work of the RTSP driver: luma metrics and JPEG snapshots.

Runs only on the camera's decode thread (never on the event loop). Imports PyAV and numpy,
so it is imported lazily by the driver (both come with the ``edgegw[camera]`` extra).

Invariants:
- Scaling reuses one swscale context per stream (``VideoReformatter``), area-averaging.
- Metrics are computed on a small grey copy of the frame (``analysis_width`` wide, aspect
  kept), so their cost does not grow with the camera resolution.
- Brightness is the mean full-range luma, 0 (black) to 255 (white), whatever the source range.
- Motion is the mean absolute luma difference (0-255) between this frame and the previous
  analysed one; 0.0 for the first frame after a (re)connect or a size change.
- JPEGs are encoded with FFmpeg's own mjpeg encoder (no Pillow/OpenCV); quality 1-100 maps
  linearly onto FFmpeg's qscale 31 (worst) - 2 (best).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter

from edgegw.drivers.rtsp.options import scaled_size

_TIME_BASE = Fraction(1, 1000)


@dataclass(frozen=True, slots=True)
class FrameMetrics:
    brightness: float
    motion: float | None  # None: no previous frame to compare with


class FrameAnalyzer:
    """Brightness and motion of consecutive frames of one stream."""

    def __init__(self, analysis_width: int) -> None:
        self.analysis_width = analysis_width
        self._previous: np.ndarray | None = None
        # one reformatter per stream keeps its scaler context (building one per frame costs
        # more than the scaling itself); AREA averages pixels, which is what a mean wants
        self._scaler = VideoReformatter()

    def reset(self) -> None:
        """Forget the previous frame (after a reconnect the next frame has no predecessor)."""
        self._previous = None

    def analyse(self, frame: VideoFrame) -> FrameMetrics:
        width, height = scaled_size(frame.width, frame.height, self.analysis_width, None)
        if width > frame.width:  # never upscale a small stream
            width, height = scaled_size(frame.width, frame.height, None, None)
        grey = self._scaler.reformat(
            frame, width=width, height=height, format="gray", interpolation=Interpolation.AREA
        )
        luma = grey.to_ndarray().astype(np.int16)
        brightness = float(luma.mean())
        previous = self._previous
        motion: float | None = None
        if previous is not None and previous.shape == luma.shape:
            motion = float(np.abs(luma - previous).mean())
        self._previous = luma
        return FrameMetrics(brightness=brightness, motion=motion)


def jpeg_qscale(quality: int) -> int:
    """JPEG quality 1..100 -> FFmpeg mjpeg qscale 31..2 (lower qscale = better image)."""
    quality = min(100, max(1, quality))
    return round(31 - (quality - 1) * 29 / 99)


class JpegEncoder:
    """Encodes frames to JPEG at a fixed target size; the codec context is reused per size."""

    def __init__(self, width: int | None, height: int | None, quality: int) -> None:
        self.width = width
        self.height = height
        self.qscale = jpeg_qscale(quality)
        self._ctx: av.codec.context.CodecContext | None = None
        self._size: tuple[int, int] | None = None
        self._pts = 0
        self._scaler = VideoReformatter()

    def _context(self, size: tuple[int, int]) -> av.codec.context.CodecContext:
        if self._ctx is None or self._size != size:
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height = size
            ctx.pix_fmt = "yuvj420p"
            ctx.time_base = _TIME_BASE
            ctx.qmin = ctx.qmax = self.qscale
            self._ctx, self._size = ctx, size
        return self._ctx

    def encode(self, frame: VideoFrame) -> tuple[bytes, int, int]:
        """JPEG bytes of ``frame`` scaled to the configured size, and that size."""
        size = scaled_size(frame.width, frame.height, self.width, self.height)
        scaled = self._scaler.reformat(
            frame,
            width=size[0],
            height=size[1],
            format="yuvj420p",
            interpolation=Interpolation.AREA,
        )
        # The encoder wants strictly increasing pts in its own time base: a decoded frame
        # carries the stream's pts/time base, and repeated or missing pts give EINVAL.
        self._pts += 1
        scaled.time_base = _TIME_BASE
        scaled.pts = self._pts
        scaled.pict_type = PictureType.NONE  # let the encoder decide (it is intra-only)
        packets = self._context(size).encode(scaled)  # type: ignore[attr-defined]
        data = b"".join(bytes(p) for p in packets)
        if not data:
            raise ValueError("mjpeg encoder returned no data")
        return data, size[0], size[1]
