"""A reusable ``asyncio.timeout`` for a hot loop: one timer per expiry, not one per use.

``asyncio.timeout()`` schedules a ``TimerHandle`` on entry and cancels it on exit: at a poll
every 100 ms that is ~45k CPU instructions per poll (callgrind), more than 10 % of a raw
pymodbus request. A device poller enters its timeout once per poll and, when the device
answers, leaves it long before it expires; so :class:`Deadline` keeps at most one timer armed
and lets it go stale instead of cancelling it. When the timer fires it looks at the use in
progress: none -> it is dropped; a later use -> it is re-armed for that use's deadline; the
same use, overdue -> the task is cancelled, and the exit turns that cancellation into
``TimeoutError``, exactly like ``asyncio.timeout`` (an outside cancellation still propagates as
``CancelledError``). Deadlines only move forward, so the armed timer is never later than the
deadline of the use in progress; the price is one loop wake-up per ``seconds`` while in use.

One :class:`Deadline` serves one task at a time (uses do not nest or overlap): a poller's
polls run one after another on its bus task. ``with deadline:`` and ``async with deadline:``
are the same (entering and leaving never await).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``async with deadline:`` bounds the block to ``seconds``, like ``asyncio.timeout``."""

    __slots__ = (
        "_armed",
        "_armed_for",
        "_cancelling",
        "_expired",
        "_loop",
        "_task",
        "_until",
        "seconds",
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        #: loop time the use in progress must end by; None when not in use
        self._until: float | None = None
        self._armed: asyncio.TimerHandle | None = None
        self._armed_for = 0.0  # the deadline the armed timer was set for
        self._expired = False

    def __enter__(self) -> Deadline:
        """Also a plain ``with``: nothing here awaits, and a hot loop saves the two coroutine
        calls of ``async with``."""
        if self._until is not None:
            raise RuntimeError("Deadline is already in use (uses must not overlap)")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        loop = task.get_loop()
        if loop is not self._loop:  # first use, or a new event loop: forget the old timer
            if self._armed is not None:
                self._armed.cancel()
                self._armed = None
            self._loop = loop
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        self._until = until = loop.time() + self.seconds
        if self._armed is None or until < self._armed_for:  # (``seconds`` was lowered)
            if self._armed is not None:
                self._armed.cancel()
            self._armed, self._armed_for = loop.call_at(until, self._on_timer), until
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._until = None
        if self._expired:
            task = self._task
            assert task is not None
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
        self._task = None

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def expired(self) -> bool:
        """Whether the use in progress (or the last one, until the next) has timed out."""
        return self._expired

    def close(self) -> None:
        """Cancel the armed timer (when the owner stops using the deadline for good)."""
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None

    def _on_timer(self) -> None:
        self._armed = None
        until, loop = self._until, self._loop
        if until is None or loop is None:
            return  # not in use: the next use arms a new timer
        if until > self._armed_for:  # a later use than the one this timer was armed for
            self._armed, self._armed_for = loop.call_at(until, self._on_timer), until
            return
        task = self._task
        if task is not None and not self._expired:
            self._expired = True
            task.cancel()
