"""The one grammar of maintenance windows: standard 5-field cron, UTC (shared: the cloud's
``ota rollout --window`` and the gateway's ``ota.window`` / an offer's ``window``).

``minute hour day-of-month month day-of-week``, with ``*``, ``a-b``, ``a,b``, ``*/n``,
``a-b/n`` and names (``jan``, ``mon``). Day-of-week follows crontab: ``0`` and ``7`` are Sunday,
``1`` Monday. APScheduler 3's ``CronTrigger.from_crontab`` numbers weekdays from Monday = 0
(``0`` would be Monday there), so the day-of-week field is translated to explicit day names
here before APScheduler sees it; everything else is APScheduler's own parsing.
"""

from __future__ import annotations

import datetime as dt

from apscheduler.triggers.cron import CronTrigger

__all__ = ["CronError", "cron_trigger"]

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class CronError(ValueError):
    """Not a 5-field cron expression (the message says which field and why)."""


def _day(token: str) -> int:
    t = token.strip().lower()
    if t[:3] in _DAYS and len(t) >= 3:
        return _DAYS.index(t[:3])
    if not t.isdigit() or int(t) > 7:
        raise CronError(f"day-of-week {token!r} is not 0-7 or a day name")
    return int(t) % 7


def _weekdays(field: str) -> str:
    """crontab day-of-week field -> APScheduler names (``*`` stays ``*``)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_s = item.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise CronError(f"day-of-week step {step_s!r} is not a positive number")
            step = int(step_s)
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            a, _, b = base.partition("-")
            lo, hi = _day(a), _day(b)
            if b.strip() == "7":
                hi = 7
            if hi < lo:
                raise CronError(f"day-of-week range {base!r} goes backwards")
        else:
            lo = hi = _day(base)
            if step_s:
                hi = 6
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str) -> CronTrigger:
    """A UTC CronTrigger for a standard crontab expression (raises CronError)."""
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"{expr!r} has {len(fields)} fields; a window is 5 fields: minute hour "
                        "day-of-month month day-of-week")
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(dow), timezone=dt.UTC)
    except ValueError as exc:
        raise CronError(f"{expr!r}: {exc}") from None
