"""Test RTSP server: GStreamer's RTSP server serving synthetic video on loopback.

Run with the SYSTEM python3 (``/usr/bin/python3``): ``gi`` is a Debian package
(python3-gi, gir1.2-gst-rtsp-server-1.0) and is not importable from the project venv.

Mounts (320x240 at 15 fps unless --width/--height/--fps say otherwise; live sources, so
frames are paced in real time):
- ``/h264-moving``  x264 H.264, a bouncing ball (motion everywhere it moves)
- ``/h264-static``  x264 H.264, SMPTE 75 % colour bars (no motion)
- ``/mjpeg-moving`` JPEG/RTP, SMPTE 75 % bars scrolling horizontally
- ``/mjpeg-static`` JPEG/RTP, SMPTE 75 % colour bars
- ``/mjpeg-white``  JPEG/RTP, a white frame (brightness near the top of the scale)
- ``/mjpeg-black``  JPEG/RTP, a black frame (brightness near the bottom)

Prints ``READY <port>`` on stdout once the server listens; exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

X264 = "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15"


def launch_lines(width: int, height: int, fps: int) -> dict[str, str]:
    raw = f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1"
    h264 = f"! {raw} ! {X264} ! rtph264pay name=pay0 pt=96"
    mjpeg = f"! {raw} ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26"
    return {
        "/h264-moving": f"videotestsrc is-live=true pattern=ball {h264}",
        "/h264-static": f"videotestsrc is-live=true pattern=smpte75 {h264}",
        "/mjpeg-moving": f"videotestsrc is-live=true pattern=smpte75 horizontal-speed=8 {mjpeg}",
        "/mjpeg-static": f"videotestsrc is-live=true pattern=smpte75 {mjpeg}",
        "/mjpeg-white": f"videotestsrc is-live=true pattern=white {mjpeg}",
        "/mjpeg-black": f"videotestsrc is-live=true pattern=black {mjpeg}",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for path, launch in launch_lines(args.width, args.height, args.fps).items():
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(f"( {launch} )")
        factory.set_shared(True)
        mounts.add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 2

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
