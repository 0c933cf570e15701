"""RTSP camera driver (``driver: rtsp``): JPEG snapshots and video metrics from IP cameras.

Importing this package does not import PyAV: the gateway runs without the ``camera`` extra and
only opening an RTSP device fails, with an actionable error. See README.md for the options.
"""

from edgegw.drivers.rtsp.driver import RtspDriver
from edgegw.drivers.rtsp.options import RtspOptions

__all__ = ["RtspDriver", "RtspOptions"]
