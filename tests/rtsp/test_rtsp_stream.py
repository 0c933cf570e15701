"""RTSP driver against a real GStreamer RTSP server on loopback: snapshots, metrics, CPU bounds.

Each test runs the driver through the in-test harness (conftest.running_driver) with short
intervals so a few seconds of video give several snapshots and metric rounds.
"""

from __future__ import annotations

import statistics
from typing import Any

import av
import pytest

from edgegw.model import Lane, Quality

pytestmark = pytest.mark.timeout(60)

FAST = {"snapshot_every": "400ms", "metrics_every": "500ms", "frame_deadline": "5s"}


def decode_jpeg(data: bytes) -> Any:
    """Decode JPEG bytes back to a frame with PyAV (raises on anything that is not a JPEG)."""
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG SOI marker"
    ctx = av.CodecContext.create("mjpeg", "r")
    frames = ctx.decode(av.Packet(data))
    frames += ctx.decode(None)
    assert len(frames) == 1
    return frames[0]


async def test_h264_moving_ball(rtsp_server: Any, run_driver: Any) -> None:
    async with run_driver(url=rtsp_server.url("h264-moving"), snapshot_width=160, **FAST) as (
        _,
        rec,
    ):
        await rec.wait_for(
            lambda: len(rec.values("snapshot")) >= 2 and len(rec.values("motion")) >= 2,
            30,
            "two snapshots and two motion readings",
        )
    snaps = [r for r in rec.records if r.sample.metric == "snapshot"]
    assert all(r.lane is Lane.BULK for r in snaps)
    for r in snaps:
        assert isinstance(r.sample.value, bytes)
        frame = decode_jpeg(r.sample.value)
        assert (frame.width, frame.height) == (160, 120)  # 320x240 source, aspect kept
    telemetry = [r for r in rec.records if r.sample.metric != "snapshot"]
    assert all(r.lane is Lane.TELEMETRY for r in telemetry)
    assert max(rec.values("motion")) > 0.3  # the ball moves
    brightness = rec.values("brightness")
    assert all(0 <= b < 60 for b in brightness), brightness  # a small ball on black
    assert max(rec.values("fps")) > 5  # 15 fps source
    assert sum(rec.values("frames_received")) >= sum(rec.values("frames_decoded")) > 0
    assert rec.samples(quality=Quality.COMM_ERROR) == []


@pytest.mark.parametrize(
    ("mount", "low", "high"),
    [("mjpeg-static", 60, 200), ("mjpeg-white", 200, 256), ("mjpeg-black", 0, 40)],
)
async def test_mjpeg_static_patterns(
    rtsp_server: Any, run_driver: Any, mount: str, low: float, high: float
) -> None:
    async with run_driver(
        url=rtsp_server.url(mount),
        snapshot_width=200,
        snapshot_height=100,
        jpeg_quality=50,
        **FAST,
    ) as (_, rec):
        await rec.wait_for(
            lambda: len(rec.values("motion")) >= 2 and rec.values("snapshot"),
            30,
            "two motion readings and a snapshot",
        )
    frame = decode_jpeg(rec.values("snapshot")[0])
    assert (frame.width, frame.height) == (200, 100)  # both given: exactly that size
    assert max(rec.values("motion")) < 0.5  # nothing moves (JPEG noise only)
    brightness = rec.values("brightness")
    assert all(low <= b < high for b in brightness), brightness


async def test_mjpeg_moving_decode_every_skips_decoding(rtsp_server: Any, run_driver: Any) -> None:
    async with run_driver(url=rtsp_server.url("mjpeg-moving"), decode_every=3, **FAST) as (
        drv,
        rec,
    ):
        await rec.wait_for(
            lambda: sum(rec.values("frames_received")) >= 30 and len(rec.values("motion")) >= 2,
            30,
            "30 frames received and two motion readings",
        )
        stats = drv.stats()
    received = sum(rec.values("frames_received"))
    decoded = sum(rec.values("frames_decoded"))
    # MJPEG is intra-only: 2 of 3 packets are never decoded
    assert 0 < decoded <= received / 3 + 1, (received, decoded)
    assert statistics.mean(rec.values("motion")) > 0.5  # scrolling bars
    assert stats["worker"]["frames_decoded"] >= decoded
    assert stats["worker"]["connects"] == 1


async def test_h264_keyframes_only_and_height_only(rtsp_server: Any, run_driver: Any) -> None:
    async with run_driver(
        url=rtsp_server.url("h264-static"),
        keyframes_only=True,
        snapshot_height=60,
        snapshot_every="100ms",
        metrics_every="500ms",
    ) as (_, rec):
        await rec.wait_for(
            lambda: sum(rec.values("frames_received")) >= 45 and len(rec.values("snapshot")) >= 2,
            30,
            "45 frames received and two snapshots",
        )
    received = sum(rec.values("frames_received"))
    decoded = sum(rec.values("frames_decoded"))
    # one key frame per 15 frames (key-int-max=15); allow for the interval boundaries
    assert 0 < decoded <= received / 15 + 2, (received, decoded)
    frame = decode_jpeg(rec.values("snapshot")[-1])
    assert (frame.width, frame.height) == (80, 60)  # width follows the 4:3 source
    assert max(rec.values("motion"), default=0.0) < 0.5


async def test_max_fps_bounds_processing(rtsp_server: Any, run_driver: Any) -> None:
    async with run_driver(
        url=rtsp_server.url("mjpeg-moving"),
        max_fps=2,
        snapshot_every=0,
        metrics_every="1s",
        frame_deadline="5s",
    ) as (_, rec):
        await rec.wait_for(
            lambda: sum(rec.values("frames_received")) >= 45, 30, "45 frames received"
        )
    received = sum(rec.values("frames_received"))
    decoded = sum(rec.values("frames_decoded"))
    # 15 fps in, at most 2 processed per second (+1 for the first frame of each interval edge)
    seconds = received / 15
    assert 0 < decoded <= 2 * seconds + 2, (received, decoded)
    assert rec.samples("snapshot") == []  # snapshot_every: 0 disables snapshots
