"""CoAP push driver (entry point ``coap``): constrained devices POST JSON/CBOR to ``/d/{id}``.

Public names: ``CoapDriver`` (the entry point), ``CoapOptions``, ``ConstrainedDevice``,
``OscoreKey``.
"""

from .driver import CoapDriver
from .options import CoapOptions, ConstrainedDevice, OscoreKey

__all__ = ["CoapDriver", "CoapOptions", "ConstrainedDevice", "OscoreKey"]
