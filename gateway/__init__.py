"""edgegw: edge-gateway runtime and driver SDK.

The package root re-exports the public SDK names only; everything else is private.
"""

from edgegw.model import Alert, Lane, Quality, Reading, Sample, Severity, Value, now_ms
from edgegw.sdk import (
    BadDataError,
    ByteSize,
    Columns,
    DeviceContext,
    Driver,
    DriverCommand,
    DriverError,
    DriverOptions,
    Duration,
    Emit,
    FirmwareImage,
    FirmwareProgress,
    HexBytes,
    Id,
    PermanentError,
    PointValue,
    PolledDriver,
    PushDriver,
    ReadResult,
    TransientError,
    driver_command,
)

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "BadDataError",
    "ByteSize",
    "Columns",
    "DeviceContext",
    "Driver",
    "DriverCommand",
    "DriverError",
    "DriverOptions",
    "Duration",
    "Emit",
    "FirmwareImage",
    "FirmwareProgress",
    "HexBytes",
    "Id",
    "Lane",
    "PermanentError",
    "PointValue",
    "PolledDriver",
    "PushDriver",
    "Quality",
    "ReadResult",
    "Reading",
    "Sample",
    "Severity",
    "TransientError",
    "Value",
    "__version__",
    "driver_command",
    "now_ms",
]
