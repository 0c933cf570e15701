"""Deadline: asyncio.timeout's semantics without a timer per use (the poller's per-poll bound).

Real event loop, real timers; no mocks. Timing is only used as a bound ("expired well before
the 5 s the test allows"), never as synchronisation.
"""

from __future__ import annotations

import asyncio

import pytest

from edgegw.runtime.deadline import Deadline


async def expires_soon(deadline: Deadline) -> None:
    """A block that never finishes must end with TimeoutError well within 5 s."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.Event().wait()
    assert loop.time() - start < 5.0


def scheduled(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The loop's live timers (BaseEventLoop keeps them in ``_scheduled``)."""
    return [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]


async def test_overdue_block_raises_timeout_error() -> None:
    deadline = Deadline(0.05)
    await expires_soon(deadline)
    assert deadline.expired()
    # the task is not left cancelled: it can go on awaiting
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_many_quick_uses_keep_at_most_one_timer() -> None:
    loop = asyncio.get_running_loop()
    before = len(scheduled(loop))
    deadline = Deadline(30.0)
    for _ in range(1000):
        async with deadline:
            await asyncio.sleep(0)
        assert not deadline.expired()
    # asyncio.timeout would have created and cancelled 1000 handles; one stays armed here
    assert len(scheduled(loop)) - before == 1
    deadline.close()
    assert len(scheduled(loop)) - before == 0


async def test_stale_timer_rearms_for_the_use_in_progress() -> None:
    """A timer armed for an early use fires during a later one: it must not expire the later
    use early, and must still expire it once that use is overdue."""
    loop = asyncio.get_running_loop()
    deadline = Deadline(0.2)
    async with deadline:  # arms the timer for t0 + 0.2
        pass
    # Half the window passes (time passing is what is under test, not a synchronisation),
    # then a use starts whose deadline is ~t0 + 0.3 or later.
    await asyncio.sleep(0.1)
    started = loop.time()
    fired_at: list[float] = []
    with pytest.raises(TimeoutError):
        async with deadline:
            try:
                await asyncio.Event().wait()
            finally:
                fired_at.append(loop.time())
    # not expired by the stale timer (t0 + 0.2, i.e. ~0.1 s into this use): the full 0.2 s ran
    assert fired_at[0] - started >= 0.2 - 0.01


@pytest.mark.parametrize("expiring", [False, True], ids=["outside-cancel", "cancel-racing-expiry"])
async def test_an_outside_cancellation_is_not_turned_into_timeout(expiring: bool) -> None:
    """An outside cancel propagates as CancelledError, also when it comes in the same loop
    iteration the deadline fires in (as with asyncio.timeout: more cancel requests than the
    deadline's own)."""
    deadline = Deadline(30.0)
    entered = asyncio.Event()

    async def body() -> None:
        async with deadline:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await entered.wait()
    if expiring:
        # the armed timer's callback, run now (as the loop would at the deadline), then the
        # outside cancel before the task gets to run: both requests are pending together
        deadline._on_timer()
        assert deadline.expired()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadline.expired() is expiring


async def test_reuse_after_expiry_and_lowered_seconds() -> None:
    deadline = Deadline(0.02)
    await expires_soon(deadline)
    async with deadline:  # usable again, not expired
        await asyncio.sleep(0)
    assert not deadline.expired()
    deadline.seconds = 30.0
    async with deadline:  # arms a 30 s timer
        pass
    deadline.seconds = 0.02  # lowered: the next use must not wait for the 30 s timer
    await expires_soon(deadline)
    deadline.close()


async def test_overlapping_uses_are_refused() -> None:
    deadline = Deadline(1.0)
    async with deadline:
        with pytest.raises(RuntimeError, match="already in use"):
            async with deadline:
                pass
    deadline.close()


async def test_a_plain_with_behaves_like_async_with() -> None:
    """The poller enters its deadline with a plain ``with`` (no coroutine calls per poll)."""
    deadline = Deadline(0.02)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError), deadline:
        await asyncio.Event().wait()
    assert loop.time() - start < 5.0 and deadline.expired()
    with deadline:
        await asyncio.sleep(0)
    assert not deadline.expired()
    deadline.close()
