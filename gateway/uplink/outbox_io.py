"""Async access to the synchronous SQLite outbox through its ONE dedicated thread.

The outbox (edgegw.store.outbox.Outbox) is synchronous and owned by a single thread (the
runtime's outbox executor, max_workers=1). Every call from the event loop goes through that
executor, so the outbox never sees two threads and the event loop never blocks on SQLite.
The uplink and the runtime share one ``OutboxIO`` (and so one executor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol


class SyncOutbox(Protocol):
    """The part of ``edgegw.store.outbox.Outbox`` the uplink needs."""

    def next_batches(self, limit: int, exclude: Container[int]) -> list[Any]: ...

    def settle(self, seq: int, outcome: Any) -> None: ...

    def give_up(self, seq: int, why: str) -> bool: ...

    def resequence(self, seq: int) -> int | None: ...


class AsyncOutbox(Protocol):
    """What ``Uplink`` calls: the async face of the outbox."""

    async def next_batches(self, limit: int, exclude: Container[int]) -> list[Any]: ...

    async def settle(self, seq: int, outcome: Any) -> None: ...

    async def give_up(self, seq: int, why: str) -> bool: ...

    async def resequence(self, seq: int) -> int | None: ...


class OutboxIO:
    """Runs outbox calls in ``executor`` (which must have exactly one worker thread)."""

    def __init__(self, outbox: SyncOutbox, executor: Executor) -> None:
        self.outbox = outbox
        self.executor = executor

    async def next_batches(self, limit: int, exclude: Container[int]) -> list[Any]:
        # copy: the caller's set keeps changing on the event loop while the thread reads it
        frozen = frozenset(exclude) if isinstance(exclude, (set, frozenset)) else exclude
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.outbox.next_batches, limit, frozen)

    async def settle(self, seq: int, outcome: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.outbox.settle, seq, outcome)

    async def give_up(self, seq: int, why: str) -> bool:
        """Quarantine a batch the cloud will never take, with a gap record (poison policy)."""
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(self.executor, self.outbox.give_up, seq, why))

    async def resequence(self, seq: int) -> int | None:
        """Move a batch the cloud keeps skipping to a fresh sequence number."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.outbox.resequence, seq)

    async def settle_many(self, items: Sequence[tuple[int, Any]]) -> None:
        """Settle several batches in one trip to the outbox thread."""
        if not items:
            return
        outbox = self.outbox

        def _all() -> None:
            many = getattr(outbox, "settle_many", None)
            if many is not None:
                many(list(items))
                return
            for seq, outcome in items:
                outbox.settle(seq, outcome)

        await asyncio.get_running_loop().run_in_executor(self.executor, _all)
