"""RTSP camera driver (``driver: rtsp``): JPEG snapshots and video metrics from IP cameras.

Importing this package does not import PyAV: the gateway runs without the ``camera`` extra and
only opening an RTSP device fails, with an actionable error. See README.md for the options.
"""

from drivers.rtsp.driver import RtspDriver
from drivers.rtsp.options import RtspOptions

__all__ = ["RtspDriver", "RtspOptions"]
