"""The rules stage: conditions over a device's values with ``for``/``clear`` episodes and actions.

Each rule is a small state machine: IDLE -> PENDING (``when`` true) -> ACTIVE (true for ``for``)
-> CLEARING (clear condition true) -> IDLE (true for ``clear_for``). The clear condition is the
``clear`` expression if given (hysteresis), else ``not when``.

Invariants:
- One ``Alert(active=True)`` when an episode starts and one ``Alert(active=False)`` when it ends;
  never one per reading.
- The stage never reads the wall clock. Time is the samples' timestamps (clamped to the
  ``now_ms`` the pipeline passes, and never going backwards per device) and the ``now_ms`` of
  ``tick()``. ``for: 10s`` fires at the first evaluation at or after ``since + 10s``; ``tick``
  evaluates pending/clearing rules (so a rule fires on time even when no new sample arrives) and
  rules with window functions not evaluated in the last second (windows age without samples).
- Samples of one device with the same timestamp (one poll) are applied together before the rules
  that read them are evaluated once, so a rule never sees half of a poll.
- An unknown condition (a value missing, a non-GOOD latest sample, an empty window, a runtime
  error such as division by zero) changes nothing, except that a PENDING rule falls back to IDLE
  (``for`` means *continuously* true). An ACTIVE rule is never cleared by missing data.
- Samples pass through unchanged; write actions become ``WriteRequest``s (rate limited per action
  by ``min_interval``), which the runtime executes through the bus scheduler.
- A new configuration (``RuleStage(rules, previous=old)``): a rule whose settings did not change
  carries its episode on (state, timers, write rate limits), and every device keeps its latest
  values and window histories; the old stage's ``retire`` then ends each episode it alone still
  holds (a rule removed or changed while active) with ``Alert(active=False)`` saying so, so the
  cloud never shows an alert active forever. Retiring runs no write action.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

from edgegw.edge.config import LogAction, RuleConfig, WriteAction
from edgegw.edge.expr import Compiled, Unknown, compile_expr, is_number
from edgegw.edge.stage import NoHolds, StageOutput, WriteRequest
from edgegw.edge.windows import SeriesHistory
from edgegw.model import Alert, Sample, Severity

log = logging.getLogger("edgegw.edge.rules")

_MISSING = object()
#: rules with window functions are re-evaluated by tick() at least this often without samples
TIME_RULE_REFRESH_MS = 1000
_FORMATTER = string.Formatter()


class RuleState(Enum):
    IDLE = "idle"
    PENDING = "pending"
    ACTIVE = "active"
    CLEARING = "clearing"


@dataclass(eq=False)
class _Device:
    values: dict[str, Any] = field(default_factory=dict)
    history: dict[str, SeriesHistory] = field(default_factory=dict)
    rules_by_metric: dict[str, list[_Rule]] = field(default_factory=dict)
    rules: list[_Rule] = field(default_factory=list)
    clock: int = 0


class _Context:
    """The EvalContext of one device at one instant."""

    __slots__ = ("dev", "now")

    def __init__(self, dev: _Device, now: int) -> None:
        self.dev = dev
        self.now = now

    def value(self, metric: str) -> Any:
        v = self.dev.values.get(metric, _MISSING)
        if v is _MISSING or v is None:
            raise Unknown
        return v

    def window(self, fn: str, metric: str, seconds: float) -> float:
        h = self.dev.history.get(metric)
        if h is None:
            raise Unknown
        return h.window(fn, seconds, self.now)


@dataclass(eq=False)
class _Rule:
    cfg: RuleConfig
    when: Compiled
    clear: Compiled | None
    for_ms: int
    clear_for_ms: int
    severity: Severity
    state: RuleState = RuleState.IDLE
    since: int = 0
    last_write_ms: dict[int, int] = field(default_factory=dict)
    error_logged: bool = False
    last_eval: int = -(2**62)

    @property
    def uses_time(self) -> bool:
        return self.when.uses_time or (self.clear is not None and self.clear.uses_time)


def _alert(rule: _Rule, ts_ms: int, active: bool, message: str, value: float | None) -> Alert:
    """The alert of one edge of ``rule``'s episode (one per alert action)."""
    return Alert(
        rule=rule.cfg.name,
        device=rule.cfg.device,
        ts_ms=ts_ms,
        active=active,
        severity=rule.severity,
        message=message,
        metric=rule.when.metrics[0] if rule.when.metrics else "",
        value=value,
    )


def render_message(template: str, lookup: Callable[[str], Any]) -> str:
    """``str.format``-style template; field names may contain dots (``{anomaly.score:.2f}``)."""
    out: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError:
        return template
    for literal, name, spec, _conv in parsed:
        out.append(literal)
        if name is None:
            continue
        value = lookup(name)
        if value is _MISSING or value is None:
            out.append("?")
            continue
        try:
            out.append(format(value, spec or ""))
        except (ValueError, TypeError):
            out.append(str(value))
    return "".join(out)


class RuleStage(NoHolds):
    """Stage evaluating ``rules:``; see the module docstring for the semantics."""

    name = "rules"

    def __init__(self, rules: Sequence[RuleConfig], previous: RuleStage | None = None) -> None:
        self._devices: dict[str, _Device] = {}
        self._rules: list[_Rule] = []
        #: rules of this stage a newer stage carries on (``retire`` leaves their episodes)
        self._handed_over: set[int] = set()
        self.counters: dict[str, int] = {
            "evaluations": 0,
            "unknown": 0,
            "eval_errors": 0,
            "raised": 0,
            "cleared": 0,
            "writes": 0,
            "writes_suppressed": 0,
            "out_of_order": 0,
            "retired": 0,
        }
        for cfg in rules:
            if not cfg.enabled:
                continue
            rule = _Rule(
                cfg=cfg,
                when=compile_expr(cfg.when),
                clear=compile_expr(cfg.clear) if cfg.clear else None,
                for_ms=round(cfg.for_ * 1000),
                clear_for_ms=round(cfg.clear_for * 1000),
                severity=Severity[cfg.severity.upper()],
            )
            self._rules.append(rule)
            dev = self._devices.setdefault(cfg.device, _Device())
            dev.rules.append(rule)
            for compiled in (rule.when, rule.clear):
                if compiled is None:
                    continue
                for metric in compiled.metrics:
                    deps = dev.rules_by_metric.setdefault(metric, [])
                    if rule not in deps:
                        deps.append(rule)
                for metric, seconds in compiled.windows.items():
                    h = dev.history.get(metric)
                    if h is None:
                        dev.history[metric] = SeriesHistory(seconds)
                    elif seconds * 1000 > h.horizon_ms:
                        h.horizon_ms = int(seconds * 1000 + 0.999)

        if previous is not None:
            self._adopt(previous)

    def _adopt(self, old: RuleStage) -> None:
        """Carry on what ``old`` knows: its unchanged rules' episodes, its devices' values."""
        before = {r.cfg.name: r for r in old._rules}
        for rule in self._rules:
            prev = before.get(rule.cfg.name)
            if prev is None or prev.cfg != rule.cfg:
                continue
            rule.state, rule.since, rule.last_eval = prev.state, prev.since, prev.last_eval
            rule.last_write_ms = dict(prev.last_write_ms)
            rule.error_logged = prev.error_logged
            old._handed_over.add(id(prev))
        for dev_id, dev in self._devices.items():
            was = old._devices.get(dev_id)
            if was is None:
                continue
            dev.values.update(was.values)
            dev.clock = was.clock
            for metric, h in dev.history.items():
                kept = was.history.get(metric)
                if kept is not None:
                    kept.horizon_ms = max(kept.horizon_ms, h.horizon_ms)
                    dev.history[metric] = kept

    def retire(self, now_ms: int) -> StageOutput:
        """This stage is replaced by a new configuration: end each episode no newer stage
        carries on (its rule was removed or changed) with a clear alert saying why."""
        alerts: list[Alert] = []
        for rule in self._rules:
            if id(rule) in self._handed_over or rule.state not in (
                RuleState.ACTIVE, RuleState.CLEARING
            ):
                continue
            rule.state = RuleState.IDLE
            self.counters["retired"] += 1
            message = (f"{rule.cfg.name}: ended because a new configuration changed or removed "
                       "the rule")
            alerts += [_alert(rule, now_ms, False, message, None) for action in rule.cfg.actions
                       if not isinstance(action, WriteAction | LogAction)]
        return [], alerts, []

    # ------------------------------------------------------------------ stage protocol
    def process(self, samples: list[Sample], now_ms: int) -> StageOutput:
        alerts: list[Alert] = []
        writes: list[WriteRequest] = []
        dirty: list[_Rule] = []
        group_dev: _Device | None = None
        group_key: tuple[str, int] | None = None
        for s in samples:
            dev = self._devices.get(s.device)
            if dev is None:
                continue
            key = (s.device, s.ts_ms)
            if key != group_key and group_dev is not None:
                self._evaluate_all(group_dev, dirty, alerts, writes)
                dirty = []
            group_key, group_dev = key, dev
            dev.clock = max(dev.clock, min(s.ts_ms, now_ms))
            self._apply(dev, s)
            for rule in dev.rules_by_metric.get(s.metric, ()):
                if rule not in dirty:
                    dirty.append(rule)
        if group_dev is not None:
            self._evaluate_all(group_dev, dirty, alerts, writes)
        return samples, alerts, writes

    def tick(self, now_ms: int) -> StageOutput:
        alerts: list[Alert] = []
        writes: list[WriteRequest] = []
        for dev in self._devices.values():
            dev.clock = max(dev.clock, now_ms)
            due = [
                r
                for r in dev.rules
                if r.state in (RuleState.PENDING, RuleState.CLEARING)
                or (r.uses_time and now_ms - r.last_eval >= TIME_RULE_REFRESH_MS)
            ]
            if due:
                self._evaluate_all(dev, due, alerts, writes)
        return [], alerts, writes

    def stats(self) -> dict[str, Any]:
        active = sum(1 for r in self._rules if r.state in (RuleState.ACTIVE, RuleState.CLEARING))
        return {**self.counters, "rules": len(self._rules), "active": active}

    def state_of(self, rule_name: str) -> RuleState:
        for r in self._rules:
            if r.cfg.name == rule_name:
                return r.state
        raise KeyError(rule_name)

    # ------------------------------------------------------------------ internals
    def _apply(self, dev: _Device, s: Sample) -> None:
        if not s.good:
            dev.values[s.metric] = None
            return
        dev.values[s.metric] = s.value
        h = dev.history.get(s.metric)
        if h is not None and is_number(s.value) and not h.add(s.ts_ms, float(s.value)):  # type: ignore[arg-type]
            self.counters["out_of_order"] += 1

    def _check(self, rule: _Rule, expr: Compiled, ctx: _Context) -> bool | None:
        try:
            return bool(expr(ctx))
        except Unknown:
            self.counters["unknown"] += 1
            return None
        except (ArithmeticError, TypeError, ValueError) as exc:
            self.counters["eval_errors"] += 1
            if not rule.error_logged:
                rule.error_logged = True
                log.warning(
                    "rule %s: %r failed: %s: %s (treated as unknown; logged once)",
                    rule.cfg.name,
                    expr.source,
                    type(exc).__name__,
                    exc,
                )
            return None

    def _evaluate_all(
        self, dev: _Device, rules: list[_Rule], alerts: list[Alert], writes: list[WriteRequest]
    ) -> None:
        ctx = _Context(dev, dev.clock)
        for rule in rules:
            self._evaluate(rule, ctx, alerts, writes)

    def _evaluate(
        self, rule: _Rule, ctx: _Context, alerts: list[Alert], writes: list[WriteRequest]
    ) -> None:
        self.counters["evaluations"] += 1
        rule.last_eval = ctx.now
        t = ctx.now
        if rule.state in (RuleState.IDLE, RuleState.PENDING):
            cond = self._check(rule, rule.when, ctx)
            if not cond:  # False or unknown: not continuously true
                rule.state = RuleState.IDLE
                return
            if rule.state is RuleState.IDLE:
                rule.state, rule.since = RuleState.PENDING, t
            if t - rule.since >= rule.for_ms:
                rule.state = RuleState.ACTIVE
                self._edge(rule, ctx, True, alerts, writes)
            return
        # ACTIVE or CLEARING
        if rule.clear is not None:
            clear = self._check(rule, rule.clear, ctx)
        else:
            cond = self._check(rule, rule.when, ctx)
            clear = None if cond is None else not cond
        if clear is None:
            return
        if not clear:
            rule.state = RuleState.ACTIVE
            return
        if rule.state is RuleState.ACTIVE:
            rule.state, rule.since = RuleState.CLEARING, t
        if t - rule.since >= rule.clear_for_ms:
            rule.state = RuleState.IDLE
            self._edge(rule, ctx, False, alerts, writes)

    def _edge(
        self,
        rule: _Rule,
        ctx: _Context,
        raised: bool,
        alerts: list[Alert],
        writes: list[WriteRequest],
    ) -> None:
        cfg = rule.cfg
        self.counters["raised" if raised else "cleared"] += 1
        primary = rule.when.metrics[0] if rule.when.metrics else ""
        value = ctx.dev.values.get(primary) if primary else None
        message = self._message(rule, ctx, raised)
        on = "raise" if raised else "clear"
        for i, action in enumerate(cfg.actions):
            if isinstance(action, WriteAction):
                if action.edge != on:
                    continue
                last = rule.last_write_ms.get(i)
                if last is not None and ctx.now - last < action.min_interval * 1000:
                    self.counters["writes_suppressed"] += 1
                    log.info(
                        "rule %s: write %s.%s suppressed by min_interval",
                        cfg.name,
                        action.device or cfg.device,
                        action.point,
                    )
                    continue
                rule.last_write_ms[i] = ctx.now
                self.counters["writes"] += 1
                writes.append(
                    WriteRequest(
                        device=action.device or cfg.device,
                        point=action.point,
                        value=action.value,
                        reason=f"rule {cfg.name} {'raised' if raised else 'cleared'}",
                    )
                )
            elif isinstance(action, LogAction):
                if action.edge in (on, "both"):
                    log.log(
                        logging.getLevelName(action.level.upper()), "rule %s: %s", cfg.name, message
                    )
            else:
                alerts.append(
                    _alert(rule, ctx.now, raised, message,
                           float(cast(float, value)) if is_number(value) else None)
                )

    def _message(self, rule: _Rule, ctx: _Context, raised: bool) -> str:
        cfg = rule.cfg
        specials = {
            "rule": cfg.name,
            "device": cfg.device,
            "severity": cfg.severity,
            "state": "raised" if raised else "cleared",
        }
        primary = rule.when.metrics[0] if rule.when.metrics else None

        def lookup(name: str) -> Any:
            if name in specials:
                return specials[name]
            if name == "value" and primary is not None:
                return ctx.dev.values.get(primary, _MISSING)
            return ctx.dev.values.get(name, _MISSING)

        if cfg.message:
            text = render_message(cfg.message, lookup)
            return text if raised else f"cleared: {text}"
        shown = ", ".join(f"{m}={ctx.dev.values.get(m)}" for m in rule.when.metrics)
        verb = "" if raised else "cleared: "
        return f"{verb}{cfg.name}: {cfg.when}" + (f" ({shown})" if shown else "")
