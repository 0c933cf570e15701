"""Benchmark of the RTSP camera driver: CPU per decoded frame and per snapshot, vs raw PyAV.

Starts the GStreamer test server (tests/rtsp/rtsp_server.py, system python3) at the given
resolution and, against the same live stream, measures in this process (``time.process_time``,
all threads):

- ``raw_decode``: a bare PyAV demux+decode loop (the ceiling: nothing cheaper decodes it);
- ``driver_metrics``: the driver with snapshots off (decode + brightness/motion per frame);
- ``driver_snapshots``: the driver encoding a JPEG snapshot for every processed frame;
- ``driver_keyframes``: the driver decoding key frames only (the low-CPU setting).

CPU per snapshot = (CPU/s with snapshots - CPU/s without) / snapshots per second.
Prints one JSON object. Usage: ``python bench/bench_rtsp.py [--width 1280 --height 720]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av

from edgegw.drivers.rtsp import RtspDriver, RtspOptions
from edgegw.model import Lane, Sample
from edgegw.sdk import DeviceContext

SERVER = Path(__file__).parents[1] / "tests" / "rtsp" / "rtsp_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, width: int, height: int, fps: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "/usr/bin/python3",
            str(SERVER),
            "--port",
            str(port),
            "--width",
            str(width),
            "--height",
            str(height),
            "--fps",
            str(fps),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("READY"):
        proc.kill()
        raise SystemExit("RTSP test server did not start")
    return proc


def raw_decode(url: str, seconds: float) -> dict[str, float]:
    container = av.open(
        url, options={"rtsp_transport": "tcp", "timeout": "5000000"}, timeout=(10.0, 5.0)
    )
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # same as the driver
    frames = 0
    cpu0 = wall0 = 0.0
    for packet in container.demux(stream):
        for _ in stream.codec_context.decode(packet):
            if frames == 0:  # steady state only, as for the driver: start at the first frame
                cpu0, wall0 = time.process_time(), time.monotonic()
            frames += 1
        if frames and time.monotonic() - wall0 >= seconds:
            break
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    frames -= 1  # the first frame's decode happened before cpu0
    container.close()
    return {"frames": frames, "cpu_s": cpu, "wall_s": wall}


async def run_driver(url: str, seconds: float, **options: Any) -> dict[str, float]:
    counts = {"snapshots": 0, "snapshot_bytes": 0}

    async def emit(
        samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> None:
        for s in samples:
            if s.metric == "snapshot" and isinstance(s.value, bytes):
                counts["snapshots"] += 1
                counts["snapshot_bytes"] += len(s.value)

    driver = RtspDriver(RtspOptions.model_validate({"url": url, "metrics_every": 1, **options}))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = DeviceContext("bench-cam", "rtsp", Path(tmp), logging.getLogger("bench"))
        await driver.open(ctx)
        task = asyncio.create_task(driver.run(emit))
        # measure from the first decoded frame on (connect/probe time is not steady state)
        deadline = time.monotonic() + 30
        while worker_stats(driver).get("frames_decoded", 0) == 0:  # polls the thread's counter
            if time.monotonic() > deadline:
                raise SystemExit("no frame decoded within 30 s")
            await asyncio.sleep(0.05)
        before = worker_stats(driver)
        snaps0 = counts["snapshots"]
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        after = worker_stats(driver)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()
    snaps = counts["snapshots"] - snaps0
    return {
        "frames_received": after["frames_received"] - before["frames_received"],
        "frames_decoded": after["frames_decoded"] - before["frames_decoded"],
        "snapshots": snaps,
        "mean_snapshot_bytes": counts["snapshot_bytes"] / max(1, counts["snapshots"]),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def worker_stats(driver: RtspDriver) -> dict[str, Any]:
    worker = driver.stats()["worker"]
    assert isinstance(worker, dict)
    return dict(worker)


def per_frame_ms(r: dict[str, float], key: str = "frames_decoded") -> float:
    return 1000 * r["cpu_s"] / max(1, r[key])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--codec", choices=["h264", "mjpeg"], default="h264")
    parser.add_argument("--snapshot-width", type=int, default=640)
    args = parser.parse_args(argv)

    port = free_port()
    server = start_server(port, args.width, args.height, args.fps)
    url = f"rtsp://127.0.0.1:{port}/{args.codec}-moving"
    try:
        raw = raw_decode(url, args.seconds)
        metrics = asyncio.run(run_driver(url, args.seconds, snapshot_every=0))
        snaps = asyncio.run(
            run_driver(url, args.seconds, snapshot_every="1ms", snapshot_width=args.snapshot_width)
        )
        keyframes = asyncio.run(
            run_driver(url, args.seconds, snapshot_every=0, keyframes_only=True)
        )
    finally:
        server.terminate()
        server.wait(10)

    raw_ms = 1000 * raw["cpu_s"] / max(1, raw["frames"])
    drv_ms = per_frame_ms(metrics)
    extra_cpu_per_s = snaps["cpu_s"] / snaps["wall_s"] - metrics["cpu_s"] / metrics["wall_s"]
    snaps_per_s = snaps["snapshots"] / snaps["wall_s"]
    result = {
        "bench": "rtsp",
        "stream": f"{args.codec} {args.width}x{args.height} @ {args.fps} fps (live, loopback)",
        "snapshot_width": args.snapshot_width,
        "raw_decode": {**raw, "cpu_ms_per_frame": round(raw_ms, 3)},
        "driver_metrics": {
            **metrics,
            "cpu_ms_per_frame": round(drv_ms, 3),
            "ratio_vs_raw": round(drv_ms / raw_ms, 3) if raw_ms else None,
            "cpu_percent_of_core": round(100 * metrics["cpu_s"] / metrics["wall_s"], 1),
        },
        "driver_snapshots": {
            **snaps,
            "cpu_ms_per_snapshot": round(1000 * extra_cpu_per_s / snaps_per_s, 3)
            if snaps_per_s
            else None,
            "cpu_percent_of_core": round(100 * snaps["cpu_s"] / snaps["wall_s"], 1),
        },
        "driver_keyframes": {
            **keyframes,
            "cpu_percent_of_core": round(100 * keyframes["cpu_s"] / keyframes["wall_s"], 1),
            "cpu_ratio_vs_all_frames": round(
                (keyframes["cpu_s"] / keyframes["wall_s"]) / (metrics["cpu_s"] / metrics["wall_s"]),
                3,
            ),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
