"""Rate-limit repeated WARNING/ERROR lines: the first occurrence, then one summary per interval.

A fault that repeats (a dead device, a full disk, a refused connection) used to log a line per
attempt: 841 ERROR lines in 20 s buried everything else. ``RepeatFilter`` on a handler keeps:

- every DEBUG/INFO record (not throttled: their volume is the level's choice);
- the FIRST WARNING+ record of a kind, where the kind is (logger, level, message template) -
  the format string before its arguments, so "device %s timed out" for ten devices is one kind;
- within ``interval`` seconds after that, nothing of that kind; the suppressed records are only
  counted;
- when the interval is over, the next record of that kind passes with the count appended
  (``[+N similar in the last 60 s]``), and so does a lone summary for a kind that went quiet
  (emitted on the next record through the filter, or by ``flush()``: the CLIs call it when
  their command returns, not from ``atexit``, when handlers may already be closed).

Invariants: nothing at WARNING+ disappears without being counted in a later summary line; the
filter holds at most ``max_kinds`` kinds (the oldest quiet ones are summarised and forgotten).
Used by both ``edgegw`` and ``edgegw-cloud`` (``install()``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 60.0
_SUMMARY = "_edgegw_throttle_summary"


@dataclass
class _Kind:
    start: float  # the current interval began here
    suppressed: int  # records of this kind held back in it
    last: logging.LogRecord  # the latest one (quoted by the summary)


class RepeatFilter(logging.Filter):
    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_S,
        *,
        min_level: int = logging.WARNING,
        max_kinds: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.min_level = min_level
        self.max_kinds = max_kinds
        self.clock = clock
        self._kinds: OrderedDict[tuple[str, int, str], _Kind] = OrderedDict()
        self._lock = threading.Lock()
        self.suppressed_total = 0
        self._last_sweep = clock()
        self.handlers: list[logging.Handler] = []  # where ``install`` put it

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        now = self.clock()
        if record.levelno < self.min_level:
            if now - self._last_sweep >= 1.0:  # summaries of quiet kinds, at most once a second
                with self._lock:
                    self._last_sweep = now
                    due = self._due(now, skip=None)
                for summary in due:
                    _emit_summary(summary, self.interval)
            return True
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            self._last_sweep = now
            due = self._due(now, skip=key)
            kind = self._kinds.get(key)
            if kind is None:
                self._kinds[key] = _Kind(now, 0, record)
                passed = True
            elif now - kind.start < self.interval:
                kind.suppressed += 1
                kind.last = record
                self.suppressed_total += 1
                passed = False
            else:
                if kind.suppressed:
                    record.msg = (
                        f"{record.msg} [+{kind.suppressed} similar in the last "
                        f"{self.interval:.0f} s]"
                    )
                self._kinds[key] = _Kind(now, 0, record)
                self._kinds.move_to_end(key)
                passed = True
            while len(self._kinds) > self.max_kinds:
                _, old = self._kinds.popitem(last=False)
                if old.suppressed:
                    due.append(old)
        for summary in due:
            _emit_summary(summary, self.interval)
        return passed

    def _due(self, now: float, skip: tuple[str, int, str] | None) -> list[_Kind]:
        """Quiet kinds whose interval ended with suppressed records: summarise, reset."""
        out = []
        for key, kind in self._kinds.items():
            if key != skip and kind.suppressed and now - kind.start >= self.interval:
                out.append(_Kind(kind.start, kind.suppressed, kind.last))
                kind.start, kind.suppressed = now, 0
        return out

    def close(self) -> None:
        """``flush()``, then take the filter off the handlers ``install`` put it on (a command
        run in-process, e.g. by a test, leaves no filter behind)."""
        self.flush()
        for h in self.handlers:
            h.removeFilter(self)
        self.handlers.clear()

    def flush(self) -> None:
        """Summarise every kind with suppressed records now (at exit)."""
        with self._lock:
            due = [_Kind(k.start, k.suppressed, k.last) for k in self._kinds.values()
                   if k.suppressed]
            for k in self._kinds.values():
                k.suppressed = 0
        for summary in due:
            _emit_summary(summary, self.interval)


def _emit_summary(kind: _Kind, interval: float) -> None:
    rec = kind.last
    logging.getLogger(rec.name).log(
        rec.levelno,
        "%d more like this in the last %.0f s, last: %s",
        kind.suppressed,
        interval,
        rec.getMessage(),
        extra={_SUMMARY: True},
    )


def install(
    handlers: list[logging.Handler] | None = None, interval: float = DEFAULT_INTERVAL_S
) -> RepeatFilter:
    """Add one shared ``RepeatFilter`` to ``handlers`` (default: the root logger's); call its
    ``close()`` when the command is done (summaries flushed, filter removed)."""
    f = RepeatFilter(interval)
    for h in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(x, RepeatFilter) for x in h.filters):
            h.addFilter(f)
            f.handlers.append(h)
    return f
