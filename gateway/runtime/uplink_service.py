"""The uplink service: the MQTT session that delivers the outbox to the cloud.

Started right after the data path (whose outbox it reads through ``OutboxIO`` in the outbox
thread); the batcher wakes it after every committed batch.

Invariants:
- ``stop()`` with ``drain_timeout`` > 0 first has the data path seal everything it holds, then
  waits until every stored batch is acknowledged by the cloud (or the timeout passes); nothing
  is lost either way, undelivered batches stay in the outbox for the next start.
- A cancellation lost inside a library is repeated (three times, 5 s each), never waited on
  forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgegw.config import UplinkConfig
from edgegw.runtime.batching import repack_loop, wire
from edgegw.runtime.datapath import DataPath
from edgegw.store.repack import Repacker
from edgegw.uplink.outbox_io import OutboxIO
from edgegw.uplink.session import Uplink

log = logging.getLogger("edgegw.uplink")

__all__ = ["UplinkService"]


class UplinkService:
    """Service: the uplink session over the data path's outbox."""

    name = "uplink"

    def __init__(
        self, cfg: UplinkConfig, gateway_id: str, identity_dir: Path, datapath: DataPath
    ) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.identity_dir = identity_dir
        self.datapath = datapath
        self.session: Uplink | None = None
        #: ``hook(session)`` runs after the session is made and before it runs (the downlink
        #: service attaches its handler there: the subscription is chosen at connect)
        self.session_hooks: list[Callable[[Uplink], None]] = []
        #: set by ``Gateway.stop`` before the services stop
        self.drain_timeout = 0.0
        self._task: asyncio.Task[None] | None = None
        self._repack: asyncio.Task[None] | None = None
        self._batching: Any = None
        self._repacker: Repacker | None = None

    async def restart(self, cfg: UplinkConfig) -> None:
        """Replace the session with one built from ``cfg`` (remote configuration). Nothing is
        lost: every unacknowledged batch is still in the outbox and is sent again."""
        drain, self.drain_timeout = self.drain_timeout, 0.0
        await self.stop()
        self.drain_timeout = drain
        self.cfg = cfg
        await self.start()

    async def start(self) -> None:
        u, dp = self.cfg, self.datapath
        assert dp.outbox is not None and dp.pipeline is not None, "start the data path first"
        self.session = session = Uplink(
            self.gateway_id,
            self.identity_dir,
            u.broker,
            OutboxIO(dp.outbox, dp.outbox_thread.executor),
            window=u.window,
            ack_timeout=float(u.ack_timeout),
            keepalive=int(float(u.keepalive)),
            backoff_min=float(u.backoff_min),
            backoff_max=float(u.backoff_max),
            stable_after=float(u.stable_after),
            probe_interval=float(u.probe_interval),
            reconnect_spread=float(u.reconnect_spread),
            max_attempts=int(u.max_attempts),
        )
        dp.pipeline.batcher.on_sealed = lambda _lane, stored: session.offer(stored)
        batch = dp.cfg.batch
        self._batching = wire(dp.pipeline.batcher, session, dp.series_dict,
                              min_age=float(batch.max_age), max_age_slow=float(batch.max_age_slow))
        if dp.series_dict is not None and batch.repack:
            self._repacker = Repacker(dp.outbox, dp.series_dict)
            self._repack = asyncio.create_task(
                repack_loop(self._repacker, session, dp.outbox_thread), name="repack")
        for hook in self.session_hooks:
            hook(session)
        self._task = asyncio.create_task(session.run(), name="uplink")

    async def stop(self) -> None:
        task = self._task
        if task is None:
            return
        if self.drain_timeout > 0:
            await self.datapath.flush()
            deadline = time.monotonic() + self.drain_timeout
            # Poll until deadline: acks arrive in the session, which has no "outbox empty" event.
            while time.monotonic() < deadline and await self.datapath.backlog():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        if self._repack is not None:
            self._repack.cancel()
            await asyncio.gather(self._repack, return_exceptions=True)
            self._repack = None
        task.cancel()
        for _ in range(3):  # a cancellation lost in a library is repeated, not waited on forever
            _done, pending = await asyncio.wait([task], timeout=5)
            if not pending:
                break
            log.warning("uplink did not stop on cancel; cancelling again")
            task.cancel()
        self._task = None

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        out: dict[str, Any] = dict(self.session.stats()) if self.session is not None else {}
        if self._batching is not None:
            out.update(self._batching.stats())
        if self._repacker is not None:
            out.update(self._repacker.stats())
        return {"uplink": out}
