"""The gateway configuration: YAML -> validated model, every mistake reported with its location.

Two phases, both reporting ``ConfigIssue``s formatted ``file:line:col: dotted.path: message
(hint: ...)``:

1. ``load_config(path)``: YAML (with ``include:`` and ``${ENV}``, see ``edgegw.yamlsrc``) ->
   ``GatewayConfig`` (pydantic, unknown keys forbidden everywhere). Raises ``ConfigError``.
2. ``check_config(cfg, drivers)``: semantic checks that need the installed drivers: the driver
   exists, ``options`` fit the driver's ``Options`` model, device ids are unique, ``bus:``
   references exist, and the edge checks (``edgegw.edge.config.validate_edge``).

``load_and_check(path, drivers)`` runs both and is the one call the CLI and the daemon use.

The format (reference: docs/configuration.md, examples/gateway.example.yaml)::

    include: [devices/*.yaml]          # merged first; this file wins (lists are concatenated)
    gateway:  {id: plant1-gw1, state_dir: ./var/edgegw, log_level: info}
    metrics:  {enabled: true, listen: "127.0.0.1:9108"}
    outbox:   {path: null, max_bytes: 64MiB, when_full: drop_oldest_telemetry, vacuum_every: 60s,
               min_free_bytes: 32MiB}
    batch:    {max_readings: 5000, max_age: 250ms, quiet: 5ms, min_interval: 50ms,
               max_bytes: 256KiB}
    uplink:   {enabled: false, broker: "mqtts://127.0.0.1:8883", identity_dir: null, window: 32,
               ack_timeout: 10s, keepalive: 30s, backoff_min: 0.5s, backoff_max: 10s,
               stable_after: 20s, probe_interval: 1s, reconnect_spread: 1s, max_attempts: 10}
    breaker:  {failure_threshold: 3, backoff_min: 1s, backoff_max: 30s, jitter: 0.2}
    buses:    {line1: {inter_frame_delay: 5ms, timeout: 1s, breaker: {...}}}
    devices:  [{id: pump1, driver: modbus, enabled: true, poll: 1s, timeout: 2s, stagger: true,
                bus: line1, options: {...}, aggregate: {...}}]
    rules:    [...]                    # edgegw.edge.config.RuleConfig
    anomaly:  [...]                    # edgegw.edge.config.AnomalyConfig

Invariants:
- Gateway and device ids follow the one id grammar (``edgegw.protocol.ids``) and the broker URL
  the one broker-URL grammar (``edgegw.protocol.broker_url``), so ``edgegw check`` refuses
  exactly what the daemon refuses.
- Relative paths (``state_dir``, ``outbox.path``, ``uplink.identity_dir``, anomaly models) are
  relative to the folder of the main config file, never to the working directory.
- Bad input never raises anything but ``ConfigError``; the semantic phase never raises at all
  (a crashing plugin validator becomes an issue).
"""

from __future__ import annotations

import logging
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo

from edgegw.edge.config import AggregateConfig, AnomalyConfig, RuleConfig, validate_edge
from edgegw.protocol.broker_url import BrokerUrl, parse_broker_url
from edgegw.protocol.cron import CronError, cron_trigger
from edgegw.protocol.identity import default_identity_dir
from edgegw.protocol.suggest import did_you_mean
from edgegw.sdk import Driver, DriverEntry, DriverOptions, Id
from edgegw.units import ByteSize, Duration
from edgegw.yamlsrc import ConfigError, ConfigIssue, Loc, PathT, SourceMap, load_yaml

__all__ = [
    "BatchConfig",
    "BreakerConfig",
    "BusConfig",
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "GatewayConfig",
    "GatewaySection",
    "HintedValueError",
    "MetricsConfig",
    "OtaConfig",
    "OutboxConfig",
    "UplinkConfig",
    "check_config",
    "config_json_schema",
    "drivers_from_registry",
    "load_and_check",
    "load_config",
]

log = logging.getLogger("edgegw.config")



# --------------------------------------------------------------------------- field types
class HintedValueError(ValueError):
    """A validation error with a separate hint (shown as ``(hint: ...)``)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LogLevel = Annotated[
    Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- sections
class GatewaySection(_Section):
    """Identity and local state of this gateway."""

    id: Id = Field(description="gateway id = certificate CN = MQTT client id and topic level")
    state_dir: Path = Field(
        default=Path("./var/edgegw"),
        description="local state (outbox, identity); relative to the config",
    )
    log_level: LogLevel = "info"


class MetricsConfig(_Section):
    """Prometheus metrics endpoint."""

    enabled: bool = True
    listen: str = Field(default="127.0.0.1:9108", description="host:port ([::1]:9108 for IPv6)")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        _split_host_port(v)
        return v

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.listen)[1]


def _split_host_port(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text.strip())
    if match is None:
        raise ValueError(f"bad listen address '{text}' (use host:port, e.g. 127.0.0.1:9108)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"bad port {port} in '{text}' (0-65535)")
    return host, port


class OutboxConfig(_Section):
    """The store-and-forward buffer (SQLite)."""

    path: Path | None = Field(default=None, description="default: <state_dir>/outbox.db")
    max_bytes: ByteSize = Field(
        default=64 * 1024**2, description="size bound of the buffer on disk"
    )
    when_full: Literal["drop_oldest_telemetry", "drop_oldest", "reject_new"] = (
        "drop_oldest_telemetry"
    )
    vacuum_every: Duration = 60.0
    min_free_bytes: ByteSize = Field(
        default=32 * 1024**2,
        description="free space the outbox leaves on its file system: below it the outbox "
        "stops growing and makes room by when_full, with gap records (0 disables)",
    )

    @field_validator("max_bytes")
    @classmethod
    def _min_size(cls, v: int) -> int:
        if v < 64 * 1024:
            raise ValueError(f"outbox max_bytes {v} is too small (at least 64KiB)")
        return v


class BatchConfig(_Section):
    """When the batcher seals a batch: whichever limit is reached first."""

    # the caps are the cloud's decode limits (codec.MAX_SAMPLES, MAX_BODY_BYTES): a bigger
    # batch would be refused there, so it is refused here, at check time
    max_readings: int = Field(default=5000, gt=0, le=100_000)
    max_age: Duration = Field(default=0.25, gt=0)
    quiet: Duration = Field(
        default=0.005, ge=0,
        description="seal the telemetry batch once no reading arrived for this long (a poll "
        "round's readings are in) instead of waiting for max_age; 0 turns round seals off")
    min_interval: Duration = Field(
        default=0.05, ge=0,
        description="at most one round seal per interval (bounds batches per second under a "
        "steady stream of polls; max_age still bounds the age)")
    max_bytes: ByteSize = Field(
        default=256 * 1024, gt=0, le=8 * 1024 * 1024,
        description="telemetry: seal once the str and bytes values pending reach this many "
        "bytes (numbers are bounded by max_readings)")
    max_age_slow: Duration = Field(
        default=3.0, gt=0,
        description="on a slow link telemetry batches grow up to this age (fewer bytes per "
        "reading); set it equal to max_age to turn adaptive batching off")
    # each re-packed part carries the digest prefix of its original batch (codec version 3),
    # so the cloud's sequence-conflict check (docs/delivery.md) covers it as any batch
    repack: bool = Field(
        default=True, description="re-pack a backlog (telemetry: into bigger batches; alerts: "
        "a cut's one-alert batches into one) before sending; needs codec v2 "
        "(docs/weak-networks.md)")
    codec: Literal["v1", "v2"] = Field(
        default="v2",
        description="v2: series dictionary + step-aware columns (docs/weak-networks.md)")


class UplinkConfig(_Section):
    """MQTT v5 session to the cloud (mutual TLS)."""

    enabled: bool = False
    broker: str = Field(default="mqtts://127.0.0.1:8883", description="mqtts://host:port")
    enroll_broker: str | None = Field(
        default=None,
        description="the cloud's enrollment/service listener for enroll and renewal "
        "(default: the broker's host, port + 1)",
    )
    identity_dir: Path | None = Field(default=None, description="default: <state_dir>/identity")
    window: int = Field(default=32, gt=0, le=65535, description="batches in flight")
    ack_timeout: Duration = Field(default=10.0, gt=0)
    keepalive: Duration = Field(default=30.0, gt=0)
    backoff_min: Duration = Field(default=0.5, gt=0)
    backoff_max: Duration = Field(default=10.0, gt=0)
    stable_after: Duration = 20.0
    probe_interval: Duration = Field(
        default=1.0, ge=0,
        description="while the broker refuses TCP, probe it every probe_interval x U(1, 2) "
        "and connect as soon as it listens (0 disables; docs/delivery.md)",
    )
    reconnect_spread: Duration = Field(
        default=1.0, ge=0,
        description="after a successful probe, connect after a random U(0, reconnect_spread) "
        "so a fleet does not reconnect in one instant",
    )
    max_attempts: int = Field(
        default=10, ge=1,
        description="counted delivery attempts before a batch the cloud keeps skipping is "
        "given up (quarantined, gap record)",
    )
    renew_before: Duration = Field(
        default=30 * 86400.0,
        description="renew the gateway certificate this long before it expires "
        "(0 disables automatic renewal)",
    )
    renew_check_every: Duration = Field(
        default=6 * 3600.0, gt=0, description="how often the daemon checks the expiry"
    )

    @field_validator("broker", "enroll_broker")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v is not None:
            parse_broker_url(v)  # the one grammar: check refuses exactly what the daemon refuses
        return v

    @model_validator(mode="after")
    def _backoff_order(self) -> UplinkConfig:
        if self.backoff_min > self.backoff_max:
            raise ValueError(
                f"backoff_min ({self.backoff_min:g}s) is longer than backoff_max "
                f"({self.backoff_max:g}s)"
            )
        return self

    @property
    def broker_url(self) -> BrokerUrl:
        return parse_broker_url(self.broker)

    @property
    def host(self) -> str:
        return self.broker_url.host

    @property
    def port(self) -> int:
        return self.broker_url.port


class OtaConfig(_Section):
    """Over-the-air updates from the cloud (docs/ota.md "Transfer (gateway side)").

    The gateway pulls a release in chunks: at most ``chunks_in_flight`` requested at a time,
    paced by a token bucket of ``max_rate`` bytes/s of chunk payload (the cap for metered
    links), a chunk not received within ``chunk_timeout`` is requested again. The install step
    waits for the maintenance ``window`` (5-field cron, UTC: the install starts the next time it
    fires; an offer's own window overrides it).
    """

    enabled: bool = Field(default=True, description="accept offers on the `ota` downlink kind")
    max_rate: ByteSize | None = Field(
        default=None, gt=0, description="bandwidth cap, bytes/s of chunk payload (null: none)"
    )
    window: str | None = Field(
        default=None, description="maintenance window for the install step (cron, 5 fields, UTC)"
    )
    chunks_in_flight: int = Field(default=4, gt=0, le=64, description="requested, not received")
    chunk_timeout: Duration = Field(default=15.0, gt=0, description="re-request after this")
    slots: Path | None = Field(
        default=None, description="A/B slots dir (default: EDGEGW_SLOTS, set by the launcher)"
    )
    confirm_within: Duration = Field(
        default=60.0, gt=0, description="config releases: revert unless confirmed in this time"
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="local labels for label-targeted releases; the registry's labels, sent "
        "with each offer by the cloud, take precedence",
    )

    @field_validator("window")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                cron_trigger(v)  # the one grammar (edgegw.protocol.cron)
            except CronError as exc:
                raise HintedValueError(f"window: {exc}", "e.g. '0 2 * * *' = every day at "
                                       "02:00 UTC; '* 2-4 * * 1-5' = 02:00-04:59 on weekdays"
                                       ) from None
        return v


class BreakerConfig(_Section):
    """Per-device circuit breaker of the bus schedulers (a dead device never delays the others).

    After ``failure_threshold`` consecutive failed polls the device is only probed every
    ``backoff`` (doubling from ``backoff_min`` to ``backoff_max``, +-``jitter``); a good probe
    closes the breaker.
    """

    failure_threshold: int = Field(default=3, gt=0, description="failed polls that open it")
    backoff_min: Duration = Field(default=1.0, gt=0, description="first probe interval")
    backoff_max: Duration = Field(default=30.0, gt=0, description="longest probe interval")
    jitter: float = Field(default=0.2, ge=0, lt=1, description="+- fraction of the interval")

    @model_validator(mode="after")
    def _ordered(self) -> BreakerConfig:
        if float(self.backoff_max) < float(self.backoff_min):
            raise ValueError("backoff_max must be >= backoff_min")
        return self


class BusConfig(_Section):
    """Tuning of one physical bus (a serial line, a Modbus TCP endpoint)."""

    inter_frame_delay: Duration = Field(default=0.0, description="pause between two requests")
    timeout: Duration | None = Field(default=None, description="overrides the devices' timeout")
    breaker: BreakerConfig | None = Field(
        default=None, description="overrides the gateway-wide `breaker:` for this bus"
    )


class DeviceConfig(_Section):
    """One field device; ``options`` are checked against the driver's ``Options`` model."""

    id: Id
    driver: str = Field(min_length=1, description="driver name, see `edgegw drivers`")
    enabled: bool = True
    poll: Duration = Field(default=1.0, gt=0, description="poll period (polled drivers)")
    timeout: Duration = Field(default=2.0, gt=0)
    stagger: bool = Field(
        default=True,
        description="spread first polls over one period, bus by bus (a bus's devices back to back)",
    )
    bus: str | None = Field(
        default=None, description="name of a `buses:` entry tuning this device's bus"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="driver options")
    aggregate: AggregateConfig | None = None


_SECTIONS = (
    "metrics", "outbox", "batch", "uplink", "breaker", "buses", "devices", "rules", "anomaly"
)


class GatewayConfig(_Section):
    """The root of a gateway configuration file."""

    gateway: GatewaySection
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig())
    outbox: OutboxConfig = Field(default_factory=lambda: OutboxConfig())
    batch: BatchConfig = Field(default_factory=lambda: BatchConfig())
    uplink: UplinkConfig = Field(default_factory=lambda: UplinkConfig())
    breaker: BreakerConfig = Field(default_factory=lambda: BreakerConfig())
    buses: dict[str, BusConfig] = Field(default_factory=dict)
    devices: list[DeviceConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)
    anomaly: list[AnomalyConfig] = Field(default_factory=list)
    ota: OtaConfig = Field(default_factory=lambda: OtaConfig())

    _source: SourceMap | None = PrivateAttr(None)
    _data: dict[str, Any] = PrivateAttr(default_factory=dict)
    _file: str | None = PrivateAttr(None)
    _options: dict[str, DriverOptions] = PrivateAttr(default_factory=dict)
    _addresses: dict[str, str] | None = PrivateAttr(None)
    _warnings: list[ConfigIssue] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """``devices:`` with nothing under it means "none", not "null is not a list"."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        return data

    # ----------------------------------------------------------------- derived values
    @property
    def source(self) -> SourceMap | None:
        """Where each value came from (``None`` for a config built in code)."""
        return self._source

    def release_source(self) -> None:
        """Forget what only the check needs once the config is checked: the YAML source map,
        the raw loaded data and the check's copy of the validated driver options.

        The daemon calls this after its check: they are the biggest part of its config's
        resident memory (~5 MB at 100 devices x 20 points; the drivers validate and keep
        their own options). A later ``check_config`` of this object reports locations as
        ``<file>:0:0`` and fills ``options_for`` again."""
        self._source = None
        self._data = {}
        self._options = {}

    @property
    def file(self) -> str | None:
        return self._file

    @property
    def base_dir(self) -> Path | None:
        """Folder of the main config file: relative paths in values are relative to it."""
        return Path(self._file).resolve().parent if self._file else None

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.gateway.state_dir / "outbox.db"

    @property
    def identity_dir(self) -> Path:
        return default_identity_dir(self.gateway.state_dir, self.uplink.identity_dir)

    @property
    def warnings(self) -> list[ConfigIssue]:
        """Non-fatal issues of the last ``check_config`` (e.g. a driver plugin failed to load)."""
        return list(self._warnings)

    @property
    def addresses(self) -> dict[str, str]:
        """Every addressable device id -> the configured device that produces its samples:
        each device itself and its drivers' sub-devices (resolved by ``check_config``; before
        that, the devices alone)."""
        if self._addresses is not None:
            return self._addresses
        return {d.id: d.id for d in self.devices}

    def options_for(self, device_id: str) -> DriverOptions | None:
        """The device's options as validated by its driver's model (after ``check_config``)."""
        return self._options.get(device_id)

    def _resolve_paths(self, base: Path) -> None:
        def absolute(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else base / p

        self.gateway.state_dir = absolute(self.gateway.state_dir)
        if self.outbox.path is not None:
            self.outbox.path = absolute(self.outbox.path)
        if self.uplink.identity_dir is not None:
            self.uplink.identity_dir = absolute(self.uplink.identity_dir)
        if self.ota.slots is not None:
            self.ota.slots = absolute(self.ota.slots)


# --------------------------------------------------------------------------- error mapping
def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    """A pydantic model or a pydantic dataclass (a driver may use either for its options)."""
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or is_pydantic_dataclass(tp))


def _fields(model: Any) -> dict[str, FieldInfo]:
    """The field definitions of a pydantic model or dataclass."""
    return model.model_fields if issubclass(model, BaseModel) else model.__pydantic_fields__


def _field_names(model: Any) -> list[str]:
    return [f.alias or name for name, f in _fields(model).items()]


def _field(model: Any, key: Any) -> Any | None:
    for name, f in _fields(model).items():
        if key in (name, f.alias):
            return f.annotation
    return None


def _union_member(tp: Any, part: Any) -> Any | None:
    """The member of a (discriminated) union that a pydantic loc part names."""
    for member in typing.get_args(tp):
        member = _unwrap(member)
        if not _is_model(member):
            continue
        if member.__name__ == part:
            return member
        for f in _fields(member).values():
            if typing.get_origin(f.annotation) is Literal and part in typing.get_args(f.annotation):
                return member
    return None


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> Any | None:
    """The model class that validates the value at pydantic ``loc`` (for did-you-mean)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if _is_model(tp):
            nxt = _field(tp, part)
            if nxt is None:
                return None
            tp = nxt
        elif origin in (list, Sequence, tuple) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif origin in (dict, Mapping):
            tp = typing.get_args(tp)[1]
        elif origin in (Union, types.UnionType):
            member = _union_member(tp, part)
            if member is None:
                return None
            tp = member
        else:
            return None
    tp = _unwrap(tp)
    return tp if _is_model(tp) else None


def _data_path(data: Any, loc: Sequence[Any]) -> PathT:
    """Map a pydantic loc onto the data, dropping union tags that are not data keys."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif not last:
            continue  # a union member / function tag in the loc, not a data key
        path.append(part)
    return tuple(path)


def _did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    close = did_you_mean(word, choices)
    return f"did you mean '{close}'?" if close else None


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a text value",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
    "dataclass_type": "expected a mapping of keys",
    "dict_type": "expected a mapping",
    "list_type": "expected a list (items starting with '- ')",
    "path_type": "expected a file path",
}


def _issue_from_error(
    err: Mapping[str, Any],
    data: Any,
    source: SourceMap,
    model: type[BaseModel],
    prefix: PathT,
) -> ConfigIssue:
    loc = tuple(err["loc"])
    kind = err["type"]
    path = (*prefix, *_data_path(_get(data, prefix), loc))
    value = err.get("input")
    ctx = err.get("ctx") or {}
    hint: str | None = None
    if kind == "missing":
        where = source.value(path[:-1])
        return ConfigIssue.at(where, path, f"missing required key '{path[-1]}'")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # model / dataclass
        key = str(path[-1])
        owner = _model_at(model, loc[:-1])
        names = _field_names(owner) if owner else []
        hint = _did_you_mean(key, names) or (f"valid keys: {', '.join(names)}" if names else None)
        return ConfigIssue.at(source.key(path), path, f"unknown key '{key}'", hint)
    where = source.value(path)
    if kind == "value_error":
        message = str(ctx.get("error") or err["msg"])
        hint = getattr(ctx.get("error"), "hint", None)
    elif kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        message = f"expected one of {expected}, got {_shown(value)}"
        choices = re.findall(r"'([^']*)'", expected)
        hint = _did_you_mean(str(value), choices) if isinstance(value, str) else None
    elif kind in _TYPE_WORDS:
        message = f"{_TYPE_WORDS[kind]}, got {_shown(value)}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        message = err["msg"].replace("Input should be", "must be") + f", got {_shown(value)}"
    else:
        msg = str(err["msg"])
        message = (msg[:1].lower() + msg[1:]) + (
            f", got {_shown(value)}" if not isinstance(value, dict | list) else ""
        )
    return ConfigIssue.at(where, path, message, hint)


def _get(data: Any, path: PathT) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _issues(
    exc: ValidationError, data: Any, source: SourceMap, model: type[BaseModel], prefix: PathT = ()
) -> list[ConfigIssue]:
    return [_issue_from_error(e, data, source, model, prefix) for e in exc.errors()]


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda i: i.sort_key)


# --------------------------------------------------------------------------- loading
def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Load and validate a config file (phase 1). Raises ``ConfigError`` listing every issue."""
    loaded = load_yaml(path, env=env)
    try:
        cfg = GatewayConfig.model_validate(loaded.data)
    except ValidationError as exc:
        raise ConfigError(
            _sorted(_issues(exc, loaded.data, loaded.source, GatewayConfig))
        ) from None
    cfg._source = loaded.source
    cfg._data = loaded.data
    cfg._file = os.fspath(path)
    assert cfg.base_dir is not None
    cfg._resolve_paths(cfg.base_dir)
    return cfg


def drivers_from_registry(
    entries: Mapping[str, DriverEntry],
) -> tuple[dict[str, type[Driver]], dict[str, str]]:
    """Split ``discover_drivers()`` into loadable classes and ``{name: load error}``."""
    ok = {name: e.cls for name, e in entries.items() if e.cls is not None}
    broken = {name: e.error or "failed to load" for name, e in entries.items() if e.cls is None}
    return ok, broken


def check_config(
    cfg: GatewayConfig,
    drivers: Mapping[str, type[Driver]],
    *,
    unavailable: Mapping[str, str] | None = None,
) -> list[ConfigIssue]:
    """Semantic checks (phase 2); never raises. ``unavailable``: drivers installed but broken.

    Devices of an unavailable driver get a warning (the daemon runs them as unavailable), not
    an error. Validated driver options are kept on ``cfg`` (``cfg.options_for(device_id)``).
    """
    broken = dict(unavailable or {})
    source = cfg.source or SourceMap(Loc(cfg.file or "<config>", 0, 0))
    data = cfg._data
    issues: list[ConfigIssue] = []
    first_id: dict[str, PathT] = {}
    points: dict[str, set[str] | None] = {}
    writable: dict[str, set[str] | None] = {}
    bus_keys: dict[str, tuple[str, int]] = {}  # bus key -> (bus name, device index)
    all_keys: set[str] = set()  # every driver bus key (a `buses:` entry may be named by one)
    subs: dict[str, tuple[str, PathT, set[str] | None]] = {}  # sub id -> (owner, path, points)
    cfg._options = {}

    for i, dev in enumerate(cfg.devices):
        base: PathT = ("devices", i)
        points[dev.id] = None
        if dev.id in first_id:
            first = source.value((*first_id[dev.id], "id"))
            here = source.value((*base, "id"))
            where = (
                f"line {first.line}" if first.file == here.file else f"{first.file}:{first.line}"
            )
            issues.append(
                ConfigIssue.at(
                    here,
                    (*base, "id"),
                    f"duplicate device id '{dev.id}' (first defined at {where})",
                    "device ids must be unique within a gateway",
                )
            )
        else:
            first_id[dev.id] = base
        if dev.bus is not None and dev.bus not in cfg.buses:
            hint = _did_you_mean(dev.bus, list(cfg.buses)) or (
                f"defined buses: {', '.join(cfg.buses)}"
                if cfg.buses
                else "define it under 'buses:'"
            )
            issues.append(
                ConfigIssue.at(
                    source.value((*base, "bus")), (*base, "bus"), f"unknown bus '{dev.bus}'", hint
                )
            )
        cls = drivers.get(dev.driver)
        if cls is None:
            issues.append(_driver_issue(dev, base, source, drivers, broken))
            continue
        opts = _check_options(cls, dev, base, data, source, issues)
        if opts is None:
            continue
        cfg._options[dev.id] = opts
        try:
            pts = set(cls.points(opts))
            key = cls.bus_key(opts)
            can_write = cls.writable_points(opts)
            writable[dev.id] = None if can_write is None else set(can_write)
            for sub_id, sub_pts in cls.sub_devices(opts).items():
                if sub_id in subs:
                    issues.append(
                        ConfigIssue.at(
                            source.value((*base, "options")),
                            (*base, "options"),
                            f"sub-device '{sub_id}' of device '{dev.id}' is also a sub-device "
                            f"of device '{subs[sub_id][0]}'",
                            "sub-device ids must be unique within a gateway",
                        )
                    )
                    continue
                subs[sub_id] = (dev.id, base, set(sub_pts) or None)
        except Exception as exc:  # plugin code: never let it crash the check
            issues.append(
                ConfigIssue.at(
                    source.value((*base, "options")),
                    (*base, "options"),
                    f"driver '{dev.driver}' failed on these options: {type(exc).__name__}: {exc}",
                )
            )
            continue
        points[dev.id] = pts or None
        if key is not None:
            all_keys.add(key)
        if key is not None and dev.bus is not None:
            other = bus_keys.setdefault(key, (dev.bus, i))
            if other[0] != dev.bus:
                issues.append(
                    ConfigIssue.at(
                        source.value((*base, "bus")),
                        (*base, "bus"),
                        f"device '{dev.id}' is on the same bus ({key}) as device "
                        f"'{cfg.devices[other[1]].id}', which uses bus '{other[0]}'",
                        f"use 'bus: {other[0]}' for every device on {key}",
                    )
                )

    addresses = {d.id: d.id for d in cfg.devices}
    for sub_id, (owner, sub_base, known_pts) in subs.items():
        if sub_id in addresses:
            issues.append(
                ConfigIssue.at(
                    source.value((*sub_base, "options")),
                    (*sub_base, "options"),
                    f"sub-device '{sub_id}' of device '{owner}' has the id of a configured "
                    "device",
                    "ids of devices and sub-devices must be unique within a gateway",
                )
            )
            continue
        addresses[sub_id] = owner
        points[sub_id] = known_pts
    cfg._addresses = addresses
    issues += _unused_buses(cfg, source, all_keys)
    issues += _edge_issues(cfg, points, data, source)
    issues += _located(_write_action_issues(cfg, writable), data, source)
    return _sorted(issues)


def _write_action_issues(
    cfg: GatewayConfig, writable: Mapping[str, set[str] | None]
) -> list[tuple[str, str, str | None]]:
    """Rule write actions must target a point the device's driver can write."""
    found: list[tuple[str, str, str | None]] = []
    for i, rule in enumerate(cfg.rules):
        for j, action in enumerate(getattr(rule, "actions", [])):
            if getattr(action, "type", None) != "write":
                continue
            device = action.device or rule.device
            owner = cfg.addresses.get(device, device)
            if owner != device:
                found.append(
                    (f"rules.{i}.actions.{j}" + (".device" if action.device else ""),
                     f"'{device}' is a sub-device of '{owner}': writes go to configured devices",
                     f"write through device '{owner}' (device: {owner})")
                )
                continue
            can = writable.get(device)
            if can is None or action.point in can:
                continue  # unknown device (reported elsewhere) or a driver that cannot tell
            hint = _did_you_mean(action.point, sorted(can)) or (
                f"writable points of '{device}': {', '.join(sorted(can))}"
                if can
                else "mark the point writable in the driver options (e.g. Modbus writable: true)"
            )
            found.append(
                (f"rules.{i}.actions.{j}.point",
                 f"point '{action.point}' of device '{device}' is not writable", hint)
            )
    return found


def _driver_issue(
    dev: DeviceConfig,
    base: PathT,
    source: SourceMap,
    drivers: Mapping[str, type[Driver]],
    broken: Mapping[str, str],
) -> ConfigIssue:
    where = source.value((*base, "driver"))
    if dev.driver in broken:
        return ConfigIssue.at(
            where,
            (*base, "driver"),
            f"driver '{dev.driver}' is installed but failed to load ({broken[dev.driver]}); "
            f"device '{dev.id}' will be unavailable",
            "run 'edgegw drivers' for details",
            severity="warning",
        )
    known = sorted({*drivers, *broken})
    hint = _did_you_mean(dev.driver, known) or (
        f"installed drivers: {', '.join(known)}" if known else "no drivers are installed"
    )
    return ConfigIssue.at(where, (*base, "driver"), f"unknown driver '{dev.driver}'", hint)


def _check_options(
    cls: type[Driver],
    dev: DeviceConfig,
    base: PathT,
    data: Any,
    source: SourceMap,
    issues: list[ConfigIssue],
) -> DriverOptions | None:
    prefix = (*base, "options")
    try:
        return cls.Options.model_validate(dev.options)
    except ValidationError as exc:
        issues.extend(_issues(exc, data, source, cls.Options, prefix))
    except Exception as exc:  # a plugin's validator may raise anything
        issues.append(
            ConfigIssue.at(
                source.value(prefix),
                prefix,
                f"driver '{dev.driver}' could not check its options: {type(exc).__name__}: {exc}",
            )
        )
    return None


def _unused_buses(cfg: GatewayConfig, source: SourceMap, bus_keys: set[str]) -> list[ConfigIssue]:
    """A `buses:` entry is used when a device names it (`bus:`) or it is a driver's bus key."""
    used = {d.bus for d in cfg.devices if d.bus is not None} | bus_keys
    out = []
    for name in cfg.buses:
        if name in used:
            continue
        hint = _did_you_mean(name, sorted(used)) or f"add 'bus: {name}' to the devices on that bus"
        out.append(
            ConfigIssue.at(
                source.key(("buses", name)),
                ("buses", name),
                f"bus '{name}' is not used by any device",
                hint,
                severity="warning",
            )
        )
    return out


def _edge_issues(
    cfg: GatewayConfig, points: dict[str, set[str] | None], data: Any, source: SourceMap
) -> list[ConfigIssue]:
    try:
        found = validate_edge(cfg, points)
    except Exception as exc:  # another module's bug must not crash `check`
        log.exception("edge config checks failed")
        return [
            ConfigIssue.at(
                source.root, (), f"edge checks failed unexpectedly: {type(exc).__name__}: {exc}"
            )
        ]
    return _located(found, data, source)


def _located(found: Sequence[Any], data: Any, source: SourceMap) -> list[ConfigIssue]:
    """(dotted path, message, hint) tuples -> issues at their file:line:col."""
    out = []
    for item in found:
        dotted, message, hint = (*tuple(item), None, None, None)[:3]
        path = source.resolve(str(dotted), data)
        out.append(ConfigIssue.at(source.value(path), path, str(message), hint))
    return out


def load_and_check(
    path: str | os.PathLike[str],
    drivers: Mapping[str, type[Driver]],
    *,
    unavailable: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Both phases. Raises ``ConfigError`` (errors and warnings) if any error was found;
    otherwise returns the config with warnings logged and kept in ``cfg.warnings``."""
    return check_loaded(load_config(path, env=env), drivers, unavailable=unavailable)


def check_loaded(
    cfg: GatewayConfig,
    drivers: Mapping[str, type[Driver]],
    *,
    unavailable: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """The semantic phase of ``load_and_check`` for a config already loaded (same contract)."""
    issues = check_config(cfg, drivers, unavailable=unavailable)
    if any(i.severity == "error" for i in issues):
        raise ConfigError(issues)
    cfg._warnings = issues
    for issue in issues:
        log.warning("%s", issue)
    return cfg


# --------------------------------------------------------------------------- JSON schema
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema(drivers: Mapping[str, type[Driver]] | None = None) -> dict[str, Any]:
    """JSON Schema of the config file for editors (yaml-language-server, VS Code, PyCharm).

    With ``drivers``, each driver's ``Options`` schema is added under ``$defs`` as
    ``driver.<name>`` and applied to ``options`` when ``driver:`` names it.
    """
    body = GatewayConfig.model_json_schema()
    schema: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://edgegw.invalid/schema/gateway-config.json",
        "title": "edgegw gateway configuration",
        "description": "Root of an edgegw config file; see docs/configuration.md.",
        **{k: v for k, v in body.items() if k not in ("title", "description")},
    }
    schema["properties"]["include"] = {
        "description": "files merged before this one (relative to this file; globs allowed)",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    device = defs.get("DeviceConfig")
    if drivers and device is not None:
        conditions = []
        for name, cls in sorted(drivers.items()):
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            prefix = f"driver.{safe}"
            sub = cls.Options.model_json_schema(ref_template=f"#/$defs/{prefix}.{{model}}")
            for inner, inner_schema in sub.pop("$defs", {}).items():
                defs[f"{prefix}.{inner}"] = inner_schema
            defs[prefix] = sub
            conditions.append(
                {
                    "if": {"properties": {"driver": {"const": name}}, "required": ["driver"]},
                    "then": {"properties": {"options": {"$ref": f"#/$defs/{prefix}"}}},
                }
            )
        device["allOf"] = conditions
        device["properties"]["driver"]["examples"] = sorted(drivers)
    return schema
