"""Options of the RTSP camera driver (the ``options:`` block of a camera device in gateway.yaml).

Invariants:
- Every network wait is bounded: ``open_timeout`` and ``read_timeout`` are always positive, so a
  camera that accepts a connection and never answers cannot hang the decode thread.
- Durations are seconds as floats after validation; the YAML may say ``500ms``, ``10s``, ``5m``.
- Credentials live in the URL (``rtsp://user:${CAM_PASSWORD}@host/...``); ``redacted_url`` is
  what logs and errors show.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgegw.sdk import DriverOptions, Duration


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``: safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RtspOptions(DriverOptions):
    """One RTSP camera: where it is, what to emit and how much CPU decoding may take."""

    # the url may hold a password: keep raw input values out of validation errors
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str = Field(description="rtsp:// or rtsps:// URL; put credentials in ${ENV} variables")
    transport: Literal["tcp", "udp"] = Field(
        default="tcp",
        description="RTP transport; tcp survives lossy links and NAT, udp has less latency",
    )
    snapshot_every: Duration = Field(
        default=60.0, description="emit a JPEG snapshot this often (0 disables snapshots)"
    )
    snapshot_width: int | None = Field(
        default=None,
        ge=16,
        le=7680,
        description="snapshot width in pixels (aspect kept if height unset)",
    )
    snapshot_height: int | None = Field(
        default=None,
        ge=16,
        le=4320,
        description="snapshot height in pixels (aspect kept if width unset)",
    )
    jpeg_quality: int = Field(
        default=80, ge=1, le=100, description="JPEG quality 1 (smallest) - 100"
    )
    metrics_every: Duration = Field(
        default=10.0, description="emit brightness, motion, fps and counters this often"
    )
    frame_deadline: Duration = Field(
        default=10.0, description="no frame for this long -> samples with quality comm_error"
    )
    open_timeout: Duration = Field(default=10.0, description="bound on connecting + RTSP handshake")
    read_timeout: Duration = Field(default=5.0, description="bound on one read from an open stream")
    decode_every: int = Field(
        default=1,
        ge=1,
        description="process only every Nth frame (intra-only codecs skip decoding too)",
    )
    max_fps: float | None = Field(
        default=None, gt=0, description="process at most this many frames per second"
    )
    keyframes_only: bool = Field(
        default=False, description="decode key frames only (lowest CPU for H.264/H.265)"
    )
    analysis_width: int = Field(
        default=160, ge=16, le=1920, description="frames are downscaled to this width for metrics"
    )
    backoff_min: Duration = Field(default=1.0, description="first reconnect delay")
    backoff_max: Duration = Field(
        default=60.0, description="reconnect delay cap (exponential, jittered)"
    )
    low_latency: bool = Field(
        default=True, description="no demuxer buffering, short stream probing"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if "${" in url:
            raise ValueError(
                "url still contains '${...}': set the environment variable it names "
                "(credentials belong in the environment, not in gateway.yaml)"
            )
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("rtsp", "rtsps"):
            raise ValueError(
                f"url {redact_url(url)!r} must start with rtsp:// or rtsps:// "
                "(e.g. rtsp://user:${CAM_PASSWORD}@192.0.2.10:554/stream1)"
            )
        try:
            host = urlsplit(url).hostname
        except ValueError as exc:
            raise ValueError(f"url {redact_url(url)!r} is malformed: {exc}") from None
        if not host:
            raise ValueError(f"url {redact_url(url)!r} has no host")
        return url

    @field_validator("metrics_every", "frame_deadline", "open_timeout", "read_timeout")
    @classmethod
    def _positive(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("must be greater than 0 (a zero timeout would mean 'wait forever')")
        return seconds

    @field_validator("backoff_min", "backoff_max")
    @classmethod
    def _backoff_positive(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("must be greater than 0")
        return seconds

    @model_validator(mode="after")
    def _check_backoff(self) -> RtspOptions:
        if self.backoff_max < self.backoff_min:
            raise ValueError(
                f"backoff_max ({self.backoff_max}s) is below backoff_min ({self.backoff_min}s)"
            )
        return self

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


def scaled_size(
    src_width: int, src_height: int, width: int | None, height: int | None
) -> tuple[int, int]:
    """Target size for a frame of ``src_width x src_height``.

    Both given: exactly that. One given: the other follows the source aspect ratio. Neither:
    the source size. Results are rounded to even numbers (4:2:0 chroma needs them) and >= 2.
    """
    if width is None and height is None:
        width, height = src_width, src_height
    elif height is None:
        assert width is not None
        height = round(width * src_height / src_width)
    elif width is None:
        width = round(height * src_width / src_height)
    assert width is not None and height is not None
    return max(2, width - width % 2), max(2, height - height % 2)
