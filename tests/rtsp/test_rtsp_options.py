"""RTSP driver options and the pure helpers: validation messages, sizes, JPEG quality mapping."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgegw.drivers.rtsp import RtspDriver, RtspOptions
from edgegw.drivers.rtsp.imaging import FrameAnalyzer, JpegEncoder, jpeg_qscale
from edgegw.drivers.rtsp.options import redact_url, scaled_size

EXAMPLE = Path(__file__).parents[2] / "examples" / "rtsp-camera.yaml"


def test_defaults_bound_every_wait() -> None:
    o = RtspOptions(url="rtsp://cam.local/stream1")
    assert o.transport == "tcp"
    assert o.open_timeout > 0 and o.read_timeout > 0 and o.frame_deadline > 0
    assert o.backoff_min <= o.backoff_max


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), (3, 3.0), ("0", 0.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert RtspOptions(url="rtsp://h/x", snapshot_every=text).snapshot_every == seconds


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("snapshot_every", "5 sex", "bad duration '5 sex'"),
        ("read_timeout", "0s", "greater than 0"),
        ("open_timeout", -1, "non-negative"),
        ("jpeg_quality", 0, "greater than or equal to 1"),
        ("transport", "http", "'tcp' or 'udp'"),
        ("decode_every", 0, "greater than or equal to 1"),
        ("colour", "red", "Extra inputs are not permitted"),
    ],
)
def test_bad_options_name_the_problem(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        RtspOptions.model_validate({"url": "rtsp://h/x", field: value})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cam/stream", "must start with rtsp:// or rtsps://"),
        ("rtsp://user:${CAM_PW}@cam/stream", "set the environment variable"),
        ("rtsp:///stream", "has no host"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RtspOptions(url=url)


def test_bad_url_error_does_not_leak_the_password() -> None:
    with pytest.raises(ValidationError) as info:
        RtspOptions(url="http://admin:hunter2@cam/stream")
    assert "hunter2" not in str(info.value)


def test_backoff_order() -> None:
    with pytest.raises(ValidationError, match="backoff_max"):
        RtspOptions(url="rtsp://h/x", backoff_min="10s", backoff_max="1s")


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:pw@10.0.0.5:554/s?x=1") == "rtsp://admin:***@10.0.0.5:554/s?x=1"
    assert redact_url("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"


@pytest.mark.parametrize(
    ("src", "want", "expected"),
    [
        ((1920, 1080), (640, None), (640, 360)),
        ((1920, 1080), (None, 360), (640, 360)),
        ((320, 240), (200, 100), (200, 100)),
        ((320, 240), (None, None), (320, 240)),
        ((1280, 720), (101, None), (100, 56)),  # rounded down to even numbers
    ],
)
def test_scaled_size(
    src: tuple[int, int], want: tuple[int | None, int | None], expected: tuple[int, int]
) -> None:
    assert scaled_size(*src, *want) == expected


@given(st.integers(16, 4096), st.integers(16, 4096), st.integers(16, 4096), st.booleans())
def test_scaled_size_is_even_and_keeps_aspect(
    sw: int, sh: int, target: int, by_width: bool
) -> None:
    w, h = scaled_size(sw, sh, target if by_width else None, None if by_width else target)
    assert w % 2 == 0 and h % 2 == 0 and w >= 2 and h >= 2
    if min(w, h) >= 64:  # rounding to even pixels distorts tiny images most
        assert abs(w / h - sw / sh) / (sw / sh) < 0.05


def test_jpeg_quality_maps_monotonically_onto_qscale() -> None:
    scales = [jpeg_qscale(q) for q in range(1, 101)]
    assert scales[0] == 31 and scales[-1] == 2
    assert all(a >= b for a, b in itertools.pairwise(scales))


def _frame(seed: int, width: int = 320, height: int = 240) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def test_jpeg_quality_changes_size_and_output_decodes() -> None:
    frame = _frame(1)
    small, w, h = JpegEncoder(160, None, 10).encode(frame)
    large, _, _ = JpegEncoder(160, None, 95).encode(frame)
    assert (w, h) == (160, 120)
    assert len(small) < len(large)
    decoded = av.CodecContext.create("mjpeg", "r").decode(av.Packet(large))
    assert (decoded[0].width, decoded[0].height) == (160, 120)


def test_analyzer_brightness_and_motion() -> None:
    analyzer = FrameAnalyzer(64)
    black = av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24")
    white = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 255, np.uint8), format="rgb24")
    first = analyzer.analyse(black)
    assert first.motion is None and first.brightness < 5
    same = analyzer.analyse(black)
    assert same.motion == 0.0
    flip = analyzer.analyse(white)
    assert flip.brightness > 250 and flip.motion is not None and flip.motion > 250
    analyzer.reset()
    assert analyzer.analyse(white).motion is None


def test_example_yaml_options_validate() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    cameras = [d for d in doc["devices"] if d["driver"] == "rtsp"]
    assert cameras
    for dev in cameras:
        opts = dict(dev["options"])
        opts["url"] = opts["url"].replace("${CAM_PASSWORD}", "pw")  # the config loader's job
        RtspOptions.model_validate(opts)
    points = RtspDriver.points(RtspOptions(url="rtsp://h/x"))
    assert "snapshot" in points and "motion" in points and "brightness" in points
