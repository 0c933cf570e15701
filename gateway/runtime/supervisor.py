"""Gateway lifecycle: builds the data path from a checked config, runs it, shuts it down cleanly.

Startup order: state dir -> sealer -> outbox (its own thread) -> pipeline + edge stages ->
drivers (one bus scheduler per physical bus, one task per push driver) -> uplink -> metrics ->
READY. Shutdown runs the same in reverse and seals every pending reading before the outbox closes.

Invariants:
- A device whose driver failed to load, or whose ``open()`` keeps failing, is reported with
  UNAVAILABLE / COMM_ERROR quality; it never stops the other devices.
- ``WATCHDOG=1`` is sent only while the pipeline's clock ticks (a stuck loop stops the pings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgegw.model import Quality, Sample, Value, now_ms
from edgegw.runtime.metrics import StatsCollector, serve
from edgegw.runtime.pipeline import Batcher, OutboxThread, Pipeline, Stage, WriteRequest
from edgegw.runtime.sdnotify import notify, watchdog_interval
from edgegw.runtime.sealing import make_sealer
from edgegw.sdk import (
    DeviceContext,
    Driver,
    DriverEntry,
    DriverError,
    DriverOptions,
    PermanentError,
    PolledDriver,
    ReadResult,
    TransientError,
)

log = logging.getLogger("edgegw.supervisor")
PermanentFirmwareError = PermanentError

STATUS_FILE = "status.json"


class LazyOpenDriver(PolledDriver):
    """Wraps a polled driver so a failing ``open()`` is retried by the normal poll schedule.

    The device then shows COMM_ERROR (and the circuit breaker backs off) instead of the
    gateway refusing to start because one device was unreachable at boot.
    """

    inner_cls: type[Driver] = PolledDriver

    @classmethod
    def points(cls, options: DriverOptions) -> Sequence[str]:
        return cls.inner_cls.points(options)

    @classmethod
    def for_class(cls, inner_cls: type[Driver]) -> type[LazyOpenDriver]:
        """A wrapper class whose class-level hooks (``points``) answer for ``inner_cls``."""
        return type(f"LazyOpen{inner_cls.__name__}", (cls,), {"inner_cls": inner_cls})

    def __init__(self, inner: PolledDriver, ctx: DeviceContext) -> None:
        super().__init__(inner.options)
        self.inner = inner
        self.ctx = ctx
        self.opened = False

    async def ensure_open(self) -> None:
        if self.opened:
            return
        try:
            await self.inner.open(self.ctx)
        except DriverError:
            raise
        except Exception as exc:
            raise TransientError(f"open failed: {type(exc).__name__}: {exc}") from exc
        self.opened = True

    async def read(self) -> ReadResult:
        await self.ensure_open()
        return await self.inner.read()

    async def write(self, point: str, value: Value) -> None:
        await self.ensure_open()
        await self.inner.write(point, value)

    async def close(self) -> None:
        if self.opened:
            self.opened = False
            await self.inner.close()


class Gateway:
    """One running gateway: everything a config describes."""

    def __init__(self, cfg: Any, drivers: Mapping[str, DriverEntry]) -> None:
        self.cfg = cfg
        self.drivers = drivers
        self.gateway_id: str = cfg.gateway.id
        self.state_dir = Path(cfg.gateway.state_dir)
        self.outbox_thread = OutboxThread()
        self._shared: dict[str, Any] = {}
        self._shared_refs: dict[str, int] = {}
        self._contexts: dict[str, DeviceContext] = {}
        self._polled: dict[str, LazyOpenDriver] = {}
        self._pollers: dict[str, Any] = {}
        self._push: dict[str, Any] = {}
        self._unavailable: dict[str, str] = {}
        self._device_bus: dict[str, Any] = {}
        self._schedulers: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._write_tasks: set[asyncio.Task[bool]] = set()
        self._write_stats = {"requested": 0, "ok": 0, "failed": 0}
        self._started = time.monotonic()
        self.uplink: Any = None
        self.outbox: Any = None
        self.pipeline: Pipeline | None = None
        self._metrics_server: Any = None
        self.collector: StatsCollector | None = None
        self.housekeeping: Any = None
        self._outbox_stats_cache: dict[str, Any] = {}
        self.watchdog_pings = 0

    # ------------------------------------------------------------------ startup
    async def start(self) -> None:
        from edgegw.store.outbox import Outbox

        cfg = self.cfg
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o750)
        (self.state_dir / "gateway-id").write_text(self.gateway_id + "\n")
        identity_dir = self._identity_dir() if cfg.uplink.enabled else None
        sealer = make_sealer(self.gateway_id, self.state_dir, identity_dir)
        outbox_path = Path(cfg.outbox.path or self.state_dir / "outbox.db")
        self.outbox = await self.outbox_thread.call(
            lambda: Outbox(
                outbox_path,
                max_bytes=int(cfg.outbox.max_bytes),
                when_full=cfg.outbox.when_full,
                sealer=sealer,
            )
        )
        batcher = Batcher(
            self.outbox,
            self.outbox_thread,
            max_readings=cfg.batch.max_readings,
            max_age=float(cfg.batch.max_age),
        )
        self.pipeline = Pipeline(batcher, self._build_stages(), on_writes=self._on_writes)
        self._tasks.append(asyncio.create_task(self.pipeline.run(), name="pipeline"))
        await self._start_devices()
        if identity_dir is not None:
            await self._start_uplink(identity_dir)
        self._start_housekeeping(identity_dir)
        self.collector = StatsCollector(self._stats_sources())
        if cfg.metrics.enabled:
            try:
                self._metrics_server = serve(cfg.metrics.listen, self.collector)
            except OSError as exc:
                log.error("metrics endpoint %s not started: %s", cfg.metrics.listen, exc)
        self._tasks.append(asyncio.create_task(self._status_writer(), name="status"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        notify(f"READY=1\nSTATUS=serving {len(self.cfg.devices)} devices")
        log.info(
            "gateway %s running: %d devices, state dir %s, uplink %s",
            self.gateway_id,
            len(cfg.devices),
            self.state_dir,
            cfg.uplink.broker if cfg.uplink.enabled else "disabled",
        )

    def _start_housekeeping(self, identity_dir: Path | None) -> None:
        from edgegw.runtime.housekeeping import RENEWAL_FIRST_DELAY, Housekeeping, renew_if_due

        cfg = self.cfg
        hk = self.housekeeping = Housekeeping()
        every = float(cfg.outbox.vacuum_every)
        hk.every(
            "outbox_maintenance",
            every,
            lambda: self.outbox_thread.call(self.outbox.maintain),
            first_in=every,
        )
        u = cfg.uplink
        if identity_dir is not None and float(u.renew_before) > 0:
            check = float(u.renew_check_every)
            hk.every(
                "certificate_renewal",
                check,
                lambda: renew_if_due(
                    self.gateway_id, identity_dir, u.broker, float(u.renew_before), hk
                ),
                first_in=min(RENEWAL_FIRST_DELAY, check),
            )
        hk.start()

    def _identity_dir(self) -> Path:
        d = self.cfg.uplink.identity_dir
        return Path(d) if d else self.state_dir / "identity"

    def _build_stages(self) -> list[Stage]:
        try:
            from edgegw.edge import build_stages
        except ImportError:
            return []
        return list(build_stages(self.cfg, submit_blocking=self._submit_blocking))

    def _submit_blocking(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _context(self, device_id: str, driver_name: str) -> DeviceContext:
        ctx = DeviceContext(
            device_id=device_id,
            driver_name=driver_name,
            state_dir=self.state_dir / "devices" / device_id,
            log=logging.getLogger(f"edgegw.device.{device_id}"),
        )
        # One pool of shared bus resources for the whole gateway.
        ctx._shared = self._shared
        ctx._shared_refs = self._shared_refs
        self._contexts[device_id] = ctx
        return ctx

    async def _start_devices(self) -> None:
        from edgegw.runtime.poller import DevicePoller
        from edgegw.runtime.scheduler import BusScheduler

        assert self.pipeline is not None
        for dev in self.cfg.devices:
            if not dev.enabled:
                continue
            entry = self.drivers.get(dev.driver)
            if entry is None or entry.cls is None:
                why = entry.error if entry is not None else f"no driver named {dev.driver!r}"
                self._unavailable[dev.id] = why or "driver unavailable"
                log.error("device %s unavailable: driver %s: %s", dev.id, dev.driver, why)
                continue
            cls: type[Driver] = entry.cls
            try:
                options = cls.Options.model_validate(dev.options or {})
                driver = cls(options)
            except Exception as exc:
                self._unavailable[dev.id] = f"{type(exc).__name__}: {exc}"
                log.error("device %s unavailable: %s", dev.id, exc)
                continue
            ctx = self._context(dev.id, dev.driver)
            if not driver.pushes and isinstance(driver, PolledDriver):
                wrapped = LazyOpenDriver.for_class(cls)(driver, ctx)
                self._polled[dev.id] = wrapped
                # The device's `bus:` name wins; else the driver's own key (same endpoint/port).
                key = cls.bus_key(options)
                bus = getattr(dev, "bus", None) or key or f"device:{dev.id}"
                buses = self.cfg.buses or {}
                bus_cfg = buses.get(bus) or (buses.get(key) if key else None)
                sched = self._schedulers.get(bus)
                if sched is None:
                    delay = float(bus_cfg.inter_frame_delay) if bus_cfg is not None else 0.0
                    sched = BusScheduler(bus, inter_frame_delay=delay)
                    self._schedulers[bus] = sched
                timeout = float(dev.timeout)
                if bus_cfg is not None and getattr(bus_cfg, "timeout", None) is not None:
                    timeout = float(bus_cfg.timeout)
                self._device_bus[dev.id] = sched
                poller = DevicePoller(
                    dev.id,
                    wrapped,
                    period=float(dev.poll),
                    timeout=timeout,
                    sink=self._sink,
                    stagger=dev.stagger,
                    driver_name=dev.driver,
                )
                self._pollers[dev.id] = poller
                sched.add(poller)
            elif driver.pushes:
                self._push[dev.id] = driver
                self._tasks.append(
                    asyncio.create_task(self._run_push(dev.id, driver, ctx), name=f"push:{dev.id}")
                )
        for name, sched in self._schedulers.items():
            self._tasks.append(asyncio.create_task(sched.run(), name=f"bus:{name}"))
        if self._unavailable:
            await self._sink(
                [
                    Sample(d, "_status", now_ms(), None, Quality.UNAVAILABLE)
                    for d in self._unavailable
                ]
            )

    async def _sink(self, samples: Sequence[Sample]) -> None:
        assert self.pipeline is not None
        await self.pipeline.submit(samples)

    async def _run_push(self, device_id: str, driver: Any, ctx: DeviceContext) -> None:
        """Run a push driver; on failure report COMM_ERROR and restart it with backoff."""
        assert self.pipeline is not None
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await driver.open(ctx)
                await driver.run(self.pipeline.submit)
                log.info("push driver of %s returned; not restarting", device_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                quality = exc.quality if isinstance(exc, DriverError) else Quality.COMM_ERROR
                log.info("device %s: %s: %s", device_id, type(exc).__name__, exc)
                await self.pipeline.submit([Sample(device_id, "_status", now_ms(), None, quality)])
            finally:
                try:
                    await driver.close()
                except Exception:
                    log.exception("closing driver of %s failed", device_id)
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2**attempt)))

    def _on_writes(self, writes: list[WriteRequest]) -> None:
        for w in writes:
            task = asyncio.get_running_loop().create_task(self.write(w))
            self._write_tasks.add(task)
            task.add_done_callback(self._write_tasks.discard)

    async def write(self, req: WriteRequest) -> bool:
        """Execute a write through the device's bus scheduler (writes go ahead of polls)."""
        self._write_stats["requested"] += 1
        driver = self._polled.get(req.device)
        sched = self._device_bus.get(req.device)
        try:
            if driver is not None and sched is not None:
                await sched.submit_write(req.device, lambda: driver.write(req.point, req.value))
            elif req.device in self._push:
                await self._push[req.device].write(req.point, req.value)
            else:
                raise LookupError(f"device {req.device!r} is not running")
        except Exception as exc:
            self._write_stats["failed"] += 1
            log.warning(
                "write %s.%s=%r (%s) failed: %s", req.device, req.point, req.value, req.reason, exc
            )
            return False
        self._write_stats["ok"] += 1
        log.info("wrote %s.%s=%r (%s)", req.device, req.point, req.value, req.reason)
        return True

    async def update_firmware(
        self, device_id: str, image: Any, progress: Any, *, attempts: int = 3
    ) -> None:
        """Hand ``image`` to the device's driver hook with its bus traffic held.

        A ``TransientError`` (cut line, timeout) is retried with a fresh transfer up to
        ``attempts`` times; anything else is raised at once.
        """
        driver = self._polled.get(device_id)
        sched = self._device_bus.get(device_id)
        if driver is None or sched is None:
            raise LookupError(f"device {device_id!r} is not a running polled device")
        if not type(driver.inner).supports_firmware_update():
            raise PermanentFirmwareError(
                f"driver {type(driver.inner).__name__} of {device_id} has no firmware hook"
            )
        async with sched.hold(device_id):
            for attempt in range(1, attempts + 1):
                try:
                    await driver.ensure_open()
                    await driver.inner.update_firmware(image, progress)
                    log.info("device %s: firmware %s installed", device_id, image.name)
                    return
                except TransientError as exc:
                    if attempt == attempts:
                        raise
                    log.info(
                        "device %s: firmware attempt %d/%d failed (%s); retrying",
                        device_id,
                        attempt,
                        attempts,
                        exc,
                    )
                    await asyncio.sleep(min(5.0, 0.5 * 2**attempt))  # backoff, not sync

    async def _start_uplink(self, identity_dir: Path) -> None:
        from edgegw.uplink.outbox_io import OutboxIO
        from edgegw.uplink.session import Uplink

        u = self.cfg.uplink
        self.uplink = Uplink(
            self.gateway_id,
            identity_dir,
            u.broker,
            OutboxIO(self.outbox, self.outbox_thread.executor),
            window=u.window,
            ack_timeout=float(u.ack_timeout),
            keepalive=int(float(u.keepalive)),
            backoff_min=float(u.backoff_min),
            backoff_max=float(u.backoff_max),
            stable_after=float(u.stable_after),
        )
        assert self.pipeline is not None
        uplink = self.uplink
        self.pipeline.batcher.on_sealed = lambda _lane: uplink.notify()
        self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))

    # ------------------------------------------------------------------ observability
    def device_health(self) -> dict[str, str]:
        """Per enabled device: ``ok``, ``waiting`` (not polled yet) or the failure's quality.

        Used by the OTA health gate: a push device counts as ``ok`` while its task runs.
        """
        out: dict[str, str] = {d: f"unavailable: {why}" for d, why in self._unavailable.items()}
        for dev_id, poller in self._pollers.items():
            q = poller.last_quality
            out[dev_id] = "waiting" if q is None else ("ok" if q == Quality.GOOD else q.name)
        running = {t.get_name() for t in self._tasks if not t.done()}
        for dev_id in self._push:
            out[dev_id] = "ok" if f"push:{dev_id}" in running else "COMM_ERROR"
        return out

    def _stats_sources(self) -> dict[str, Any]:
        src: dict[str, Any] = {
            "pipeline": lambda: self.pipeline.stats() if self.pipeline else {},
            "outbox": self._outbox_stats,
            "scheduler": self._scheduler_stats,
            "devices": lambda: {
                "devices": {d: dict(c.counters) for d, c in self._contexts.items()}
                | {d: {"unavailable": 1} for d in self._unavailable}
            },
            "writes": lambda: dict(self._write_stats),
            "housekeeping": lambda: self.housekeeping.stats() if self.housekeeping else {},
            "edge": lambda: {
                getattr(st, "name", type(st).__name__): st.stats()
                for st in (self.pipeline.stages if self.pipeline else [])
                if hasattr(st, "stats")
            },
            "process": lambda: {"uptime_seconds": time.monotonic() - self._started},
        }
        if self.uplink is not None:
            src["uplink"] = self.uplink.stats
        return src

    def _outbox_stats(self) -> dict[str, Any]:
        # Outbox.stats() takes the outbox lock and queries SQLite: it is refreshed in the outbox
        # thread once a second (``_refresh_outbox_stats``), never called from the event loop or
        # the metrics HTTP thread.
        return self._outbox_stats_cache

    async def _refresh_outbox_stats(self) -> None:
        if self.outbox is not None:
            self._outbox_stats_cache = dict(await self.outbox_thread.call(self.outbox.stats))

    def _scheduler_stats(self) -> dict[str, Any]:
        merged: dict[str, Any] = {"buses": {}}
        for name, sched in self._schedulers.items():
            merged["buses"][name] = sched.stats()
        return merged

    async def _status_writer(self) -> None:
        path = self.state_dir / STATUS_FILE
        while True:
            await asyncio.sleep(1.0)
            await self._refresh_outbox_stats()
            self.write_status(path)

    def write_status(self, path: Path | None = None) -> None:
        path = path or self.state_dir / STATUS_FILE
        assert self.collector is not None
        doc = {
            "gateway_id": self.gateway_id,
            "pid": os.getpid(),
            "written_ms": now_ms(),
            "unavailable": self._unavailable,
            "stats": self.collector.snapshot(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, default=str, indent=1))
        os.replace(tmp, path)

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            assert self.pipeline is not None
            if now_ms() - self.pipeline.last_tick_ms < 5_000:
                notify("WATCHDOG=1")
                self.watchdog_pings += 1
            else:
                log.error("pipeline clock stalled; withholding the watchdog ping")

    async def _outbox_backlog(self) -> int:
        return len(await self.outbox_thread.call(self.outbox.next_batches, 1, ()))

    # ------------------------------------------------------------------ shutdown
    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop producing, seal what is pending, optionally let the uplink drain, then close.

        With ``drain_timeout`` > 0 and an uplink, waits until every stored batch is acknowledged
        by the cloud (or the timeout passes) before disconnecting; nothing is lost either way,
        undelivered batches stay in the outbox for the next start.
        """
        notify("STOPPING=1")
        if self.housekeeping is not None:
            self.housekeeping.shutdown()
        uplink_tasks = [t for t in self._tasks if t.get_name() == "uplink"]
        others = [t for t in self._tasks if t not in uplink_tasks]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for dev_id, drv in list(self._polled.items()) + list(self._push.items()):
            try:
                await drv.close()
            except Exception:
                log.exception("closing %s failed", dev_id)
        if self.pipeline is not None:
            await self.pipeline.tick_once()
            await self.pipeline.batcher.drain()
        if uplink_tasks and drain_timeout > 0:
            deadline = time.monotonic() + drain_timeout
            # Poll until deadline: acks arrive in the uplink, which has no "outbox empty" event.
            while time.monotonic() < deadline and await self._outbox_backlog():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        for task in uplink_tasks:
            task.cancel()
        for _ in range(3):  # a cancellation lost in a library is repeated, not waited on forever
            _done, pending = (
                await asyncio.wait(uplink_tasks, timeout=5) if uplink_tasks else ((), ())
            )
            if not pending:
                break
            log.warning("uplink did not stop on cancel; cancelling again")
            for task in pending:
                task.cancel()
        self._tasks.clear()
        if self.collector is not None:
            await self._refresh_outbox_stats()
            self.write_status()
        if self.outbox is not None:
            await self.outbox_thread.call(self.outbox.close)
        self.outbox_thread.shutdown()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("gateway %s stopped", self.gateway_id)
