"""The data path service: outbox (its own thread) -> batcher -> pipeline with the edge stages.

Owns everything a reading passes through inside the gateway after a driver emitted it:
``submit`` (the drivers' sink and the push drivers' ``emit``), the edge stages, the batcher and
the SQLite outbox with its one thread.

Invariants:
- ``flush()`` seals every reading the pipeline still has (pending in the batcher and held by the
  edge stages) and returns once the outbox thread has committed it; it is idempotent and is
  called by the uplink before it drains and again by ``stop()``.
- ``stop()`` stops the pipeline clock, flushes, then closes the outbox and its thread: a clean
  shutdown loses no reading that reached ``submit``.
- Outbox statistics are gathered in the outbox thread (``refresh_stats``, once a second by the
  supervisor); ``stats()`` only returns the cached copy, so neither the event loop nor the
  metrics thread ever waits for the outbox lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgegw.config import GatewayConfig
from edgegw.edge import Stage, WriteRequest, build_stages, stage_configs
from edgegw.model import Lane, Sample
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline
from edgegw.runtime.sealing import make_sealer, previous_keys, remember_key
from edgegw.store.outbox import Outbox
from edgegw.store.series_dict import FILE_NAME, SeriesDictionary

log = logging.getLogger("edgegw.datapath")

__all__ = ["DataPath"]


class DataPath:
    """Service: the pipeline, its edge stages, the batcher and the outbox."""

    name = "datapath"

    def __init__(
        self, cfg: GatewayConfig, state_dir: Path, identity_dir: Path | None
    ) -> None:
        self.cfg = cfg
        self.gateway_id = cfg.gateway.id
        self.state_dir = state_dir
        self.identity_dir = identity_dir
        self.outbox_thread = OutboxThread()
        self.outbox: Outbox | None = None
        self.pipeline: Pipeline | None = None
        #: where the stages' write requests go (the device manager sets it)
        self.on_writes: Callable[[list[WriteRequest]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._outbox_stats: dict[str, Any] = {}
        #: codec v2 series dictionary (``batch.codec: v2``), shared with the uplink service
        self.series_dict: SeriesDictionary | None = None
        #: what the running stages were built from (``edgegw.edge.stage_configs``)
        self._stage_configs: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        outbox_path = Path(cfg.outbox.path or self.state_dir / "outbox.db")
        # refuses to start when local-data.key is gone but batches sealed with it remain
        sealer = make_sealer(self.gateway_id, self.state_dir, self.identity_dir, outbox_path)
        # keys that may have sealed what the outbox still holds (standalone local key, earlier
        # enrollments): the outbox re-seals those batches under the current key
        earlier = previous_keys(self.state_dir)
        if self.identity_dir is not None:
            remember_key(self.state_dir, sealer.key)
        self.outbox = outbox = await self.outbox_thread.call(
            lambda: Outbox(
                outbox_path,
                max_bytes=int(cfg.outbox.max_bytes),
                when_full=cfg.outbox.when_full,
                sealer=sealer,
                previous_keys=earlier,
                min_free_bytes=int(cfg.outbox.min_free_bytes),
                report_unclean_stop=True,
            )
        )
        if cfg.batch.codec == "v2":
            self.series_dict = await self.outbox_thread.call(
                SeriesDictionary, self.state_dir / FILE_NAME)
        batcher = Batcher(
            outbox,
            self.outbox_thread,
            max_readings=cfg.batch.max_readings,
            max_age=float(cfg.batch.max_age),
            max_bytes=int(cfg.batch.max_bytes),
            quiet=float(cfg.batch.quiet),
            min_interval=float(cfg.batch.min_interval),
            encode=self.series_dict.encode if self.series_dict is not None else None,
        )
        if self.series_dict is not None:
            batcher.on_appended = self.series_dict.sealed
        self.pipeline = Pipeline(batcher, self._build_stages(), on_writes=self._writes)
        self._task = asyncio.create_task(self.pipeline.run(), name="pipeline")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.pipeline is not None:
            await self.flush()
        if self.outbox is not None:
            await self.refresh_stats()
            await self.outbox_thread.call(self.outbox.close)
            self.outbox = None
        if self.series_dict is not None:
            await self.outbox_thread.call(self.series_dict.close)
            self.series_dict = None
        self.outbox_thread.shutdown()

    def _build_stages(
        self, reuse: Mapping[str, Stage] | None = None, previous: Sequence[Stage] = (),
        configs: dict[str, str] | None = None,
    ) -> list[Stage]:
        """The stages for ``self.cfg``; ``configs``: its ``stage_configs`` when known."""
        self._stage_configs = configs if configs is not None else stage_configs(self.cfg)
        return build_stages(self.cfg, submit_blocking=self._submit_blocking, reuse=reuse,
                            previous={st.name: st for st in previous})

    def rebuild_stages(self) -> dict[str, list[str]]:
        """The edge stages for a new ``self.cfg`` (remote configuration): a stage whose
        configuration did not change is kept as it is (its open aggregation windows, learnt
        anomaly models, active rule episodes); a changed or removed one is flushed out first
        (``Pipeline.replace_stages``: nothing it holds is lost; a new rules stage carries on the
        episodes of the unchanged rules, the old one ends the others with a clear alert).
        Returns the stage names built anew and flushed out (both empty when nothing changed)."""
        if self.pipeline is None:
            return {"built": [], "flushed": []}
        before = self._stage_configs
        after = stage_configs(self.cfg)
        keep = {st.name: st for st in self.pipeline.stages
                if st.name in after and before.get(st.name) == after[st.name]}
        stages = self._build_stages(reuse=keep, previous=self.pipeline.stages, configs=after)
        flushed = self.pipeline.replace_stages(stages)
        return {"built": [st.name for st in stages if st.name not in keep], "flushed": flushed}

    @staticmethod
    def _submit_blocking(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _writes(self, writes: list[WriteRequest]) -> None:
        if self.on_writes is not None:
            self.on_writes(writes)
        else:
            log.warning("%d write requests dropped: no device manager", len(writes))

    # ------------------------------------------------------------------ data
    async def submit(
        self, samples: Sequence[Sample], *, lane: Lane = Lane.TELEMETRY, durable: bool = False
    ) -> None:
        """The drivers' sink (``emit`` of push drivers): see ``Pipeline.submit``."""
        assert self.pipeline is not None, "DataPath.submit before start"
        await self.pipeline.submit(samples, lane=lane, durable=durable)

    async def flush(self) -> None:
        """Seal every pending and held reading and wait for the outbox commit."""
        assert self.pipeline is not None
        await self.pipeline.flush()

    async def backlog(self) -> int:
        """Stored batches not yet acknowledged by the cloud (0 or 1: it only asks for one)."""
        if self.outbox is None:
            return 0
        return len(await self.outbox_thread.call(self.outbox.next_batches, 1, ()))

    # ------------------------------------------------------------------ observability
    async def refresh_stats(self) -> None:
        """Gather the outbox's stats in the outbox thread (it takes the outbox lock)."""
        if self.outbox is not None:
            self._outbox_stats = dict(await self.outbox_thread.call(self.outbox.stats))

    @property
    def last_tick_ms(self) -> int:
        return self.pipeline.last_tick_ms if self.pipeline is not None else 0

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        pipe = self.pipeline
        return {
            "pipeline": pipe.stats() if pipe is not None else {},
            "outbox": self._outbox_stats,
            "edge": {st.name: st.stats() for st in pipe.stages} if pipe is not None else {},
        }
