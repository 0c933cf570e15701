"""Driver SDK: what a third-party driver author writes against.

A driver is a class with a pydantic ``Options`` model, ``open(ctx)`` and ``close()``, and either
``read()`` (polled: returns the values of one poll) or ``run(emit)`` (push/streaming). ``write``
is optional (commands, rule actions, shadow desired state).

Drivers never retry, back off, schedule or buffer: the runtime owns all of that. A driver raises
``TransientError`` (timeout, connection lost: retried with backoff, quality ``comm_error``),
``BadDataError`` (the device answered garbage: counted, quality ``bad_data``) or
``PermanentError`` (configuration does not fit the device: quality ``config_error``, retried
only slowly).

Discovery: entry points in the group ``edgegw.drivers``; built-in drivers are registered the
same way. Loading is guarded per plugin: a broken plugin marks only its own devices unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from edgegw.model import Lane, Quality, Sample, Value

# Option types for driver Options models: the same grammar and errors as the gateway config.
from edgegw.protocol.ids import ID_PATTERN, check_id
from edgegw.units import ByteSize as ByteSize
from edgegw.units import Duration as Duration
from edgegw.units import HexBytes as HexBytes

log = logging.getLogger("edgegw.sdk")

ENTRY_POINT_GROUP = "edgegw.drivers"


def _check_id(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return check_id(value) if isinstance(value, str) else value


#: A gateway, device or sub-device id (the one grammar, ``edgegw.protocol.ids``): use it for any
#: option that names a device, so ids become MQTT topic levels safely.
Id = Annotated[
    str,
    BeforeValidator(_check_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN}),
]


# --------------------------------------------------------------------------- errors
class DriverError(Exception):
    """Base class of the errors a driver raises. ``quality`` is what the samples become."""

    quality: ClassVar[Quality] = Quality.COMM_ERROR


class TransientError(DriverError):
    """The device or link failed this time (timeout, refused, disconnected). Retried."""


class BadDataError(TransientError):
    """The device answered, but with something malformed (bad CRC, exception response)."""

    quality = Quality.BAD_DATA


class PermanentError(DriverError):
    """Retrying will not help until the configuration or the device changes."""

    quality = Quality.CONFIG_ERROR


# --------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class PointValue:
    """A point's value with an explicit quality (and optionally the device's own timestamp)."""

    value: Value
    quality: Quality = Quality.GOOD
    ts_ms: int | None = None


ReadResult = Mapping[str, "Value | PointValue"]


class Columns(Mapping[str, Value]):
    """A poll's result as two columns: the point names and their plain values, in the same
    order. A ``ReadResult`` (a read-only mapping) that the poller hands on as one block of
    GOOD readings without a dict per poll (issue 13): return one from ``read()`` when no
    point carries a quality of its own (use a dict with ``PointValue`` items otherwise).

    Reuse one ``names`` tuple from poll to poll (the poller keys its series by it); give a
    fresh ``values`` list each time (``data``) (it is kept, not copied). Values are plain (``int``,
    ``float``, ``bool``, ``str``, ``bytes`` or ``None``); anything else (a ``PointValue``,
    a numpy integer) is found when the batch is encoded and stored as ``bad_data`` with no
    value, counted in the pipeline's ``bad_values``.
    """

    __slots__ = ("_map", "data", "names")

    def __init__(self, names: tuple[str, ...], values: list[Value]) -> None:
        if len(names) != len(values):
            raise ValueError(f"{len(names)} names but {len(values)} values")
        self.names = names
        self.data = values  # (not ``values``: that is the Mapping method)
        self._map: dict[str, Value] | None = None

    def _as_dict(self) -> dict[str, Value]:
        if self._map is None:
            self._map = dict(zip(self.names, self.data, strict=True))
        return self._map

    def __getitem__(self, name: str) -> Value:
        return self._as_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Columns({self._as_dict()!r})"


class Emit(Protocol):
    """How a push driver hands samples to the runtime.

    ``await emit(samples, durable=True)`` returns only once the samples are committed to the
    outbox (for protocols that acknowledge to the device, e.g. CoAP 2.04 after durability): raw
    readings at once, readings of an aggregated metric once the aggregate containing them is
    sealed (at the end of its window; docs/architecture.md).
    """

    def __call__(
        self, samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> Awaitable[None]: ...


class DriverOptions(BaseModel):
    """Base for driver option models: unknown keys are errors (with did-you-mean in check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- context
R = TypeVar("R")


@dataclass
class DeviceContext:
    """What the runtime gives a driver instance for one device."""

    device_id: str
    driver_name: str
    state_dir: Path
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)
    _shared_refs: dict[str, int] = field(default_factory=dict, repr=False)
    _counters: dict[str, int] = field(default_factory=dict, repr=False)

    def shared(self, key: str, factory: Callable[[], R]) -> R:
        """A resource shared by all devices on one bus (a Modbus client, a serial port).

        Created by ``factory`` on first use; the same object is returned for the same key to
        every device of the gateway. Release it with ``release(key)`` in ``close()``.
        """
        if key not in self._shared:
            self._shared[key] = factory()
            self._shared_refs[key] = 0
        self._shared_refs[key] += 1
        return self._shared[key]

    def release(self, key: str) -> Any | None:
        """Drop one reference; returns the resource when the last user released it."""
        if key not in self._shared_refs:
            return None
        self._shared_refs[key] -= 1
        if self._shared_refs[key] <= 0:
            del self._shared_refs[key]
            return self._shared.pop(key)
        return None

    def count(self, event: str, n: int = 1) -> None:
        """Count a device event (``bad_frame``, ``checksum_error``...); exported as metrics."""
        self._counters[event] = self._counters.get(event, 0) + n

    @property
    def counters(self) -> Mapping[str, int]:
        return self._counters

    async def run_blocking(self, fn: Callable[..., R], *args: Any) -> R:
        """Run blocking work (decode, file I/O) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# --------------------------------------------------------------------------- firmware hook
@dataclass(frozen=True, slots=True)
class FirmwareImage:
    """A firmware image for one downstream device (from a verified OTA firmware release)."""

    name: str
    version: str
    data: bytes


#: progress(bytes_sent, total_bytes): called by ``update_firmware`` as the transfer advances
FirmwareProgress = Callable[[int, int], None]


# --------------------------------------------------------------------------- driver classes
class Driver:
    """Common base of polled and push drivers.

    Subclasses set ``Options`` (a ``DriverOptions`` subclass) and implement ``open``/``close``.
    """

    Options: ClassVar[type[DriverOptions]] = DriverOptions

    def __init__(self, options: DriverOptions) -> None:
        self.options = options

    @classmethod
    def bus_key(cls, options: DriverOptions) -> str | None:
        """Devices whose key is equal share one bus scheduler (one request in flight).

        ``None`` (the default) means the device is a bus of its own.
        """
        return None

    @classmethod
    def writable_points(cls, options: DriverOptions) -> Sequence[str] | None:
        """The points ``write`` accepts, when known from config (``edgegw check`` then flags
        rule write actions to other points). ``None``: unknown, not checked."""
        return [] if cls.write is Driver.write else None

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        """The metric names this device produces, when known from config (used by ``check``)."""
        return ()

    @classmethod
    def sub_devices(cls, options: DriverOptions) -> Mapping[str, Sequence[str]]:
        """Devices behind this one whose samples it emits under their own id (a CoAP server's
        constrained devices, several sensors on one serial line): ``{id: points}`` (empty
        points: not known from config). Resolved once at config time: rules, aggregation and
        anomaly detection address them by id, and ``edgegw check`` validates against them.
        The device's own ``aggregate:`` applies to its sub-devices' samples too."""
        return {}

    @property
    def pushes(self) -> bool:
        """True when the runtime should call ``run(emit)`` instead of polling ``read()``.

        A driver class that can do both (a serial port in request or streaming mode) overrides
        this from its options.
        """
        return isinstance(self, PushDriver)

    async def open(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    async def close(self) -> None:
        return None

    async def write(self, point: str, value: Value) -> None:
        raise PermanentError(f"driver {type(self).__name__} does not support writes")

    async def update_firmware(self, image: FirmwareImage, progress: FirmwareProgress) -> None:
        """Optional: send ``image`` to the device (e.g. to its bootloader) and return when the
        device has accepted it.

        The runtime calls it with the device's bus held (no polls or writes to this device run
        meanwhile; other devices keep their schedule). Cancellation is asyncio cancellation of
        the calling task: the driver must then abort the transfer on the wire (e.g. YMODEM's CAN
        CAN) and re-raise. Raise ``TransientError`` for a failure worth retrying (a cut line:
        the runtime retries with a fresh transfer), ``PermanentError`` for one that is not (the
        device refuses the image).
        """
        raise PermanentError(f"driver {type(self).__name__} cannot update firmware")

    @classmethod
    def supports_firmware_update(cls) -> bool:
        return cls.update_firmware is not Driver.update_firmware


class PolledDriver(Driver):
    """A driver the runtime polls on the device's schedule."""

    async def read(self) -> ReadResult:
        raise NotImplementedError


class PushDriver(Driver):
    """A driver that produces samples on its own (streams, servers, subscriptions)."""

    async def run(self, emit: Emit) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- driver commands
_COMMAND_ATTR = "__edgegw_command__"


@dataclass(frozen=True, slots=True)
class DriverCommand:
    """A named action a driver offers to the cloud (``edgegw-cloud command GW DEV NAME``)."""

    name: str
    method: str
    args: type[BaseModel] | None
    doc: str


def driver_command(
    name: str | None = None, *, args: type[BaseModel] | None = None
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Declare an async driver method as a cloud command with a typed argument model.

    ``args`` (a pydantic model) validates the command's arguments before the method runs; a
    validation error refuses the command with pydantic's message. The method runs on the
    device's bus ahead of polls, like writes, and returns the result value (JSON-able)::

        class ResetArgs(BaseModel):
            to: int = 0

        class Meter(PolledDriver):
            @driver_command("reset_counter", args=ResetArgs)
            async def reset_counter(self, args: ResetArgs) -> int: ...
    """

    def deco(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        setattr(fn, _COMMAND_ATTR, (name or fn.__name__, args))
        return fn

    return deco


def driver_commands(cls: type[Driver]) -> dict[str, DriverCommand]:
    """The commands a driver class declares with ``@driver_command``, by name."""
    out: dict[str, DriverCommand] = {}
    for attr in dir(cls):
        fn = getattr(cls, attr, None)
        spec = getattr(fn, _COMMAND_ATTR, None)
        if spec is not None:
            out[spec[0]] = DriverCommand(spec[0], attr, spec[1], (fn.__doc__ or "").strip())
    return out


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True, slots=True)
class DriverEntry:
    name: str
    distribution: str
    version: str
    target: str
    cls: type[Driver] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.cls is not None


def driver_names(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Names of the installed drivers, without importing any of them."""
    return sorted({ep.name for ep in metadata.entry_points(group=group)})


def discover_drivers(
    group: str = ENTRY_POINT_GROUP, *, only: Collection[str] | None = None
) -> dict[str, DriverEntry]:
    """Load driver entry points, each load guarded (one broken plugin breaks only itself).

    ``only`` limits loading to those names (the daemon imports just the drivers its config uses:
    every imported protocol stack costs resident memory on a small gateway).
    """
    found: dict[str, DriverEntry] = {}
    for ep in metadata.entry_points(group=group):
        if only is not None and ep.name not in only:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise TypeError(f"{ep.value} is not a edgegw.sdk.Driver subclass")
            entry = DriverEntry(ep.name, dist, version, ep.value, cls)
        except Exception as exc:  # a plugin may raise anything at import time
            log.error(
                "driver plugin %r from distribution %s %s failed to load: %s: %s",
                ep.name,
                dist,
                version,
                type(exc).__name__,
                exc,
            )
            entry = DriverEntry(
                ep.name, dist, version, ep.value, None, f"{type(exc).__name__}: {exc}"
            )
        if ep.name in found and found[ep.name].ok:
            log.warning(
                "driver name %r registered twice; keeping %s", ep.name, found[ep.name].distribution
            )
            continue
        found[ep.name] = entry
    return found
