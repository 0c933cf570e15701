"""Serial sensor driver (entry point ``serial``): line/binary framed sensors, stream/request mode.

Public names: ``SerialDriver`` (the entry point; returns the stream or request variant),
``SerialOptions``, and the I/O-free decoders ``LineDecoder`` / ``BinaryDecoder``.
"""

from .driver import SerialDriver, SerialRequestDriver, SerialStreamDriver
from .framing import BinaryDecoder, FeedResult, LineDecoder, make_decoder
from .options import BinaryOptions, LineOptions, SerialOptions

__all__ = [
    "BinaryDecoder",
    "BinaryOptions",
    "FeedResult",
    "LineDecoder",
    "LineOptions",
    "SerialDriver",
    "SerialOptions",
    "SerialRequestDriver",
    "SerialStreamDriver",
    "make_decoder",
]
