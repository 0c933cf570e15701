"""Config models of the edge stages (rules, aggregation, anomaly) and their semantic checks.

The root config (gateway/config.py) holds ``rules: list[RuleConfig]``, ``anomaly:
list[AnomalyConfig]`` and, per device, ``aggregate: AggregateConfig | None``. Every model forbids
unknown keys. ``validate_edge`` is the semantic phase run by ``edgegw check``: it compiles every
expression, checks device and metric names (with did-you-mean), model files, the ML runtime and
model shapes, and returns ``(dotted path, message, hint)`` per problem - it never raises.

Invariants:
- Paths in issues use the YAML keys (``rules.2.when``, ``rules.0.actions.1.device``,
  ``devices.3.aggregate.metrics.temp``, ``anomaly.0.model``).
- A device whose metric names are unknown (``points_by_device[id] is None``) skips metric checks.
"""

from __future__ import annotations

import importlib.util
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgegw.edge import litert
from edgegw.edge.expr import ExprError, compile_expr
from edgegw.protocol.suggest import did_you_mean
from edgegw.units import Duration

SeverityName = Literal["info", "warning", "critical"]
AggFn = Literal["min", "max", "mean", "count", "first", "last", "sum", "stddev"]
Issue = tuple[str, str, str | None]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------- rules
class AlertAction(_Model):
    """Raise an Alert when the rule fires and clear it when the rule clears (the default)."""

    type: Literal["alert"] = "alert"


class WriteAction(_Model):
    """Write ``value`` to ``device.point`` (the rule's device by default) through the bus
    scheduler, at most once per ``min_interval``."""

    type: Literal["write"]
    device: str | None = None
    point: str = Field(min_length=1)
    value: bool | int | float | str
    edge: Literal["raise", "clear"] = "raise"  # `on:` would be a YAML 1.1 boolean
    min_interval: Duration = 0.0


class LogAction(_Model):
    """Log the rule's message when it raises and/or clears."""

    type: Literal["log"]
    level: Literal["debug", "info", "warning", "error"] = "warning"
    edge: Literal["raise", "clear", "both"] = "both"


Action = Annotated[AlertAction | WriteAction | LogAction, Field(discriminator="type")]


def _default_actions() -> list[Action]:
    return [AlertAction()]


class RuleConfig(_Model):
    """A condition over one device's values; one alert per episode."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    device: str = Field(min_length=1)
    when: str = Field(min_length=1)
    for_: Duration = Field(default=0.0, alias="for")
    clear: str | None = None
    clear_for: Duration = 0.0
    severity: SeverityName = "warning"
    message: str | None = None
    actions: list[Action] = Field(default_factory=lambda: _default_actions())
    enabled: bool = True


# --------------------------------------------------------------------------- aggregation
class AggregateSpec(_Model):
    """Settings shared by the device level and the per-metric overrides (unset = inherit)."""

    window: Duration | None = None
    functions: list[AggFn] | None = None
    lateness: Duration | None = None
    deadband: float | None = Field(default=None, ge=0)
    deadband_pct: float | None = Field(default=None, ge=0)
    max_silence: Duration | None = None
    raw: bool | None = None
    name: str | None = None

    @field_validator("window")
    @classmethod
    def _positive_window(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("window must be longer than 0 (e.g. 10s, 1m)")
        return v

    @field_validator("max_silence")
    @classmethod
    def _positive_silence(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("max_silence must be longer than 0 (e.g. 5m)")
        return v

    @field_validator("functions")
    @classmethod
    def _some_functions(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError(
                "functions must name at least one of min, max, mean, count, first, "
                "last, sum, stddev"
            )
        if v is not None and len(set(v)) != len(v):
            raise ValueError("functions lists a function twice")
        return v

    @field_validator("name")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad name template {v!r}: {exc}") from None
        bad = fields - {"metric", "fn"}
        if bad:
            raise ValueError(
                f"name template {v!r} may only use {{metric}} and {{fn}}, not {sorted(bad)}"
            )
        return v


class AggregateConfig(AggregateSpec):
    """A device's aggregation: ``window`` (tumbling, wall-clock aligned) and/or report-by-exception
    (``deadband``/``deadband_pct``/``max_silence``); ``metrics`` overrides per metric."""

    metrics: dict[str, AggregateSpec] = Field(default_factory=dict)


# --------------------------------------------------------------------------- anomaly
OnlineDetectorName = Literal["model", "shift", "level", "drift", "stuck", "range"]


class AnomalyConfig(_Model):
    """Anomaly detection over a device's metrics: the online detector (around a TFLite model,
    given or fitted on the device), a fixed model + threshold, or a statistical detector."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    device: str = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)
    kind: Literal["online", "model", "zscore", "ewma"] = "model"
    #: kind model: run the model inside the online detector (False: fixed spec threshold)
    online: bool = True
    #: online: rows of history the surprises are judged against (the re-learn horizon)
    history: int = Field(default=1000, ge=50, le=100_000)
    #: online without a model: rows before the first on-device fit
    learn_rows: int = Field(default=160, ge=32)
    #: online: rows between background refits (0: never refit)
    refit_every: int = Field(default=1000, ge=0)
    #: online: which detectors run (default all)
    detectors: list[OnlineDetectorName] | None = None
    #: online: hard limits per metric, [low, high]; outside is always an anomaly
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    #: a gap between rows longer than this restarts the window (default: the model spec's, else
    #: 5x the median row interval)
    max_gap: Duration | None = None
    model: str | None = None
    spec: str | None = None
    window: int | None = Field(default=None, ge=1, le=4096)
    threshold: float | None = Field(default=None, gt=0)
    clear_threshold: float | None = Field(default=None, gt=0)
    min_consecutive: int = Field(default=1, ge=1)
    step: int = Field(default=1, ge=1)
    score_metric: str = "anomaly.score"
    severity: SeverityName = "warning"
    message: str | None = None
    fallback: Literal["zscore", "ewma"] | None = None
    alpha: float = Field(default=0.05, gt=0, lt=1)
    warmup: int = Field(default=20, ge=2)
    max_queue: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _model_needed(self) -> AnomalyConfig:
        if self.kind == "model" and not self.model:
            raise ValueError(
                "kind: model needs `model: path/to/model.tflite` "
                "(or use kind: zscore / ewma for a statistical detector)"
            )
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("metrics lists a metric twice")
        unknown = [m for m in self.limits if m not in self.metrics]
        if unknown:
            raise ValueError(f"limits names metric(s) {unknown} that are not in metrics")
        bad = [m for m, (lo, hi) in self.limits.items() if not lo < hi]
        if bad:
            raise ValueError(f"limits of {bad} must be [low, high] with low < high")
        return self


# --------------------------------------------------------------------------- checks
def resolve_path(path: str, base_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def _did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    close = did_you_mean(name, choices)
    return f"did you mean {close!r}?" if close else None


def _known_names(points: set[str] | None, extra: Iterable[str]) -> set[str] | None:
    return None if points is None else set(points) | set(extra)


def derived_metrics(cfg: Any) -> dict[str, set[str]]:
    """Metrics the edge itself adds to a device (anomaly scores), visible to rules."""
    out: dict[str, set[str]] = {}
    for det in getattr(cfg, "anomaly", None) or []:
        out.setdefault(det.device, set()).add(det.score_metric)
    return out


def validate_edge(
    cfg: Any, points_by_device: Mapping[str, set[str] | None], base_dir: Path | None = None
) -> list[Issue]:
    """Semantic checks of the edge sections: ``(dotted path, message, hint)`` per problem.

    ``base_dir`` resolves relative model paths (default: the config's ``base_dir`` attribute if it
    has one, else the working directory).
    """
    if base_dir is None:
        base = getattr(cfg, "base_dir", None)
        base_dir = Path(base) if base else None
    # every addressable id: the devices and their drivers' sub-devices (resolved by the config)
    devices = list(points_by_device) or [d.id for d in getattr(cfg, "devices", None) or []]
    extra = derived_metrics(cfg)
    issues: list[Issue] = []
    issues += _check_rules(getattr(cfg, "rules", None) or [], devices, points_by_device, extra)
    issues += _check_aggregates(cfg, points_by_device, extra)
    issues += _check_anomaly(
        getattr(cfg, "anomaly", None) or [], devices, points_by_device, base_dir
    )
    return issues


def _unknown_device(path: str, device: str, devices: list[str]) -> Issue:
    hint = _did_you_mean(device, devices) or (
        f"known devices: {', '.join(devices)}" if devices else "no devices are configured"
    )
    return (path, f"unknown device {device!r}", hint)


def _check_rules(
    rules: list[RuleConfig],
    devices: list[str],
    points: Mapping[str, set[str] | None],
    extra: Mapping[str, set[str]],
) -> list[Issue]:
    issues: list[Issue] = []
    names: set[str] = set()
    for i, rule in enumerate(rules):
        base = f"rules.{i}"
        if rule.name in names:
            issues.append(
                (f"{base}.name", f"duplicate rule name {rule.name!r}", "rule names must be unique")
            )
        names.add(rule.name)
        known_device = rule.device in devices
        if not known_device:
            issues.append(_unknown_device(f"{base}.device", rule.device, devices))
        known = (
            _known_names(points.get(rule.device), extra.get(rule.device, ()))
            if known_device
            else None
        )
        for key in ("when", "clear"):
            source = getattr(rule, key)
            if source is None:
                continue
            try:
                compiled = compile_expr(source)
            except ExprError as exc:
                issues.append((f"{base}.{key}", exc.message, exc.hint))
                continue
            if known is None:
                continue
            for metric in compiled.metrics:
                if metric not in known:
                    hint = (
                        _did_you_mean(metric, known)
                        or f"{rule.device} has: {', '.join(sorted(known))}"
                    )
                    issues.append(
                        (
                            f"{base}.{key}",
                            f"unknown metric {metric!r} of device {rule.device!r}",
                            hint,
                        )
                    )
        for j, action in enumerate(rule.actions):
            if (
                isinstance(action, WriteAction)
                and action.device is not None
                and action.device not in devices
            ):
                issues.append(_unknown_device(f"{base}.actions.{j}.device", action.device, devices))
    return issues


def _check_aggregates(
    cfg: Any, points: Mapping[str, set[str] | None], extra: Mapping[str, set[str]]
) -> list[Issue]:
    issues: list[Issue] = []
    for i, dev in enumerate(getattr(cfg, "devices", None) or []):
        agg: AggregateConfig | None = getattr(dev, "aggregate", None)
        if agg is None:
            continue
        known = _known_names(points.get(dev.id), extra.get(dev.id, ()))
        owned = [a for a, owner in getattr(cfg, "addresses", {}).items() if owner == dev.id]
        for addr in owned:  # the device's aggregate applies to its sub-devices' samples too
            if addr != dev.id and known is not None:
                more = _known_names(points.get(addr), extra.get(addr, ()))
                known = None if more is None else known | more
        for metric in agg.metrics:
            if known is not None and metric not in known:
                hint = _did_you_mean(metric, known) or f"{dev.id} has: {', '.join(sorted(known))}"
                issues.append(
                    (f"devices.{i}.aggregate.metrics.{metric}", f"unknown metric {metric!r}", hint)
                )
        for where, spec in [("", agg), *((f".metrics.{m}", s) for m, s in agg.metrics.items())]:
            if where and (spec.raw or (spec.functions is None and spec.name is None)):
                continue  # inherits the device-level settings, already checked
            fns = spec.functions if spec.functions is not None else agg.functions
            name = spec.name if spec.name is not None else agg.name
            if fns and len(fns) > 1 and name is not None and "{fn}" not in name:
                issues.append(
                    (
                        f"devices.{i}.aggregate{where}.name",
                        f"name template {name!r} gives every function the same metric name",
                        "include {fn}, e.g. '{metric}.{fn}'",
                    )
                )
    return issues


def _check_anomaly(
    dets: list[AnomalyConfig],
    devices: list[str],
    points: Mapping[str, set[str] | None],
    base_dir: Path | None,
) -> list[Issue]:
    issues: list[Issue] = []
    seen: dict[tuple[str, str], int] = {}
    for i, det in enumerate(dets):
        base = f"anomaly.{i}"
        key = (det.device, det.score_metric)
        if key in seen:
            issues.append(
                (
                    f"{base}.score_metric",
                    f"anomaly.{seen[key]} already writes {det.score_metric!r} for {det.device!r}",
                    "set a distinct score_metric",
                )
            )
        seen[key] = i
        if det.device not in devices:
            issues.append(_unknown_device(f"{base}.device", det.device, devices))
        else:
            known = points.get(det.device)
            for j, metric in enumerate(det.metrics):
                if known is not None and metric not in known:
                    hint = (
                        _did_you_mean(metric, known)
                        or f"{det.device} has: {', '.join(sorted(known))}"
                    )
                    issues.append((f"{base}.metrics.{j}", f"unknown metric {metric!r}", hint))
        online = det.kind == "online" or (det.kind == "model" and det.online)
        if online and det.fallback is None and importlib.util.find_spec("numpy") is None:
            issues.append(
                (
                    f"{base}.kind",
                    "the online detector needs numpy, which is not installed",
                    "pip install 'edgegw[ml]', or set fallback: zscore",
                )
            )
        if det.kind not in ("model", "online") or det.model is None:
            continue
        model_path = resolve_path(det.model, base_dir)
        if not model_path.is_file():
            issues.append(
                (
                    f"{base}.model",
                    f"model file {str(model_path)!r} does not exist",
                    "fit one with `edgegw model fit` or fix the path",
                )
            )
            continue
        spec_path = (
            resolve_path(det.spec, base_dir) if det.spec else litert.spec_path_for(model_path)
        )
        try:
            spec = litert.ModelSpec.load(spec_path)
        except FileNotFoundError:
            issues.append(
                (
                    f"{base}.spec",
                    f"model spec {str(spec_path)!r} does not exist",
                    "a model needs its JSON spec (window, features, scaling) beside it",
                )
            )
            continue
        except ValueError as exc:
            issues.append((f"{base}.spec", f"bad model spec {str(spec_path)!r}: {exc}", None))
            continue
        if spec.features != det.metrics:
            issues.append(
                (
                    f"{base}.metrics",
                    f"metrics {det.metrics} differ from the model's features {spec.features}",
                    "list the metrics in the model's feature order",
                )
            )
        if det.window is not None and det.window != spec.window:
            issues.append(
                (
                    f"{base}.window",
                    f"window {det.window} differs from the model's window {spec.window}",
                    "omit window to use the model's",
                )
            )
        if det.threshold is None and spec.threshold is None:
            issues.append(
                (
                    f"{base}.threshold",
                    "no threshold: neither the config nor the model spec has one",
                    "set threshold: (score above which it is an anomaly)",
                )
            )
        if litert.runtime_available() is None:
            if det.fallback is None:
                issues.append(
                    (
                        f"{base}.kind",
                        "no TFLite runtime is installed for this model",
                        "pip install 'edgegw[ml]' (ai-edge-litert), or set fallback: zscore",
                    )
                )
            continue
        try:
            in_shape, out_shape = litert.inspect_model_shapes(model_path)
            litert.check_shapes(spec, in_shape, out_shape, det.model)
        except litert.ModelShapeError as exc:
            issues.append(
                (f"{base}.model", str(exc), "refit the model or fix window/metrics in its spec")
            )
        except (ValueError, RuntimeError) as exc:
            issues.append(
                (f"{base}.model", f"{det.model} is not a loadable TFLite model: {exc}", None)
            )
    return issues
