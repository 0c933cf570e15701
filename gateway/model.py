"""The data model under its SDK name: ``edgegw.model`` (drivers and the runtime import it here).

The types travel on the wire, so their one definition lives in the protocol package
(``edgegw.protocol.model``), which the cloud side imports too; this module is the public SDK
face of the same objects (not copies).
"""

from edgegw.protocol.model import (
    Alert,
    Lane,
    Quality,
    Reading,
    Sample,
    Severity,
    Value,
    now_ms,
)

__all__ = ["Alert", "Lane", "Quality", "Reading", "Sample", "Severity", "Value", "now_ms"]
