"""The device manager service: builds every configured device's driver and runs it.

Polled drivers get one ``BusScheduler`` per physical bus (the device's ``bus:`` name, else the
driver's own bus key, else the device alone) with the circuit breaker configured under
``breaker:`` (gateway-wide) or ``buses.<name>.breaker`` (one bus). Push drivers run as one task
each, restarted with backoff. Write requests (edge rules, later commands) go through the bus
scheduler, ahead of polls.

Invariants:
- A device whose driver failed to load, whose options are invalid, or whose ``open()`` keeps
  failing is reported with UNAVAILABLE / COMM_ERROR quality; it never stops the other devices.
- Drivers share bus resources through one pool for the whole gateway (``DeviceContext``).
- ``stop()`` cancels the schedulers and push tasks, then closes every driver (errors logged).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from edgegw.config import BreakerConfig, DeviceConfig, GatewayConfig
from edgegw.edge import WriteRequest
from edgegw.model import Quality, Sample, Value, now_ms
from edgegw.runtime.poller import DevicePoller
from edgegw.runtime.scheduler import BreakerPolicy, BusScheduler
from edgegw.sdk import (
    DeviceContext,
    Driver,
    DriverEntry,
    DriverError,
    DriverOptions,
    Emit,
    FirmwareImage,
    FirmwareProgress,
    PermanentError,
    PolledDriver,
    PushDriver,
    ReadResult,
    TransientError,
)

log = logging.getLogger("edgegw.devices")

__all__ = ["DeviceManager", "LazyOpenDriver", "breaker_policy"]

Sink = Callable[[Sequence[Sample]], Awaitable[None]]


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


def breaker_policy(cfg: BreakerConfig) -> BreakerPolicy:
    return BreakerPolicy(
        failure_threshold=cfg.failure_threshold,
        backoff_min=float(cfg.backoff_min),
        backoff_max=float(cfg.backoff_max),
        jitter=cfg.jitter,
    )


class DeviceManager:
    """Service: every device's driver, its bus scheduler or push task, and device writes."""

    name = "devices"

    def __init__(
        self,
        cfg: GatewayConfig,
        drivers: Mapping[str, DriverEntry],
        state_dir: Path,
        sink: Sink,
        emit: Emit,
    ) -> None:
        self.cfg = cfg
        self.drivers = drivers
        self.state_dir = state_dir
        self._sink_fn = sink
        self._emit = emit
        self._shared: dict[str, Any] = {}
        self._shared_refs: dict[str, int] = {}
        self._contexts: dict[str, DeviceContext] = {}
        self._polled: dict[str, LazyOpenDriver] = {}
        self._pollers: list[DevicePoller] = []
        self._push: dict[str, PushDriver] = {}
        self.unavailable: dict[str, str] = {}
        self._device_bus: dict[str, BusScheduler] = {}
        self._schedulers: dict[str, BusScheduler] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._write_tasks: set[asyncio.Task[bool]] = set()
        self._write_stats = {"requested": 0, "ok": 0, "failed": 0}
        #: ``fn(samples)`` for every polled batch (the device shadow follows values this way)
        self.sample_observers: list[Callable[[Sequence[Sample]], None]] = []
        self._running = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for dev in self.cfg.devices:
            if dev.enabled:
                self._start_device(dev)
        # `stagger` spreads the first polls over one period across the WHOLE gateway, bus by
        # bus: ten single-device endpoints do not all poll at once, while the devices of one
        # bus share their bus's slot and are polled back to back (a bus serves one request at
        # a time anyway), so a bus's poll round arrives together and is sealed as one batch
        # instead of one batch per device (docs/configuration.md, `stagger`)
        staggered = [(p, self._device_bus[p.device_id]) for p in self._pollers if p.stagger]
        slot: dict[BusScheduler, int] = {}
        for _, bus in staggered:
            slot.setdefault(bus, len(slot))
        for poller, bus in staggered:
            poller.stagger_slot = (slot[bus], len(slot))
        for name, sched in self._schedulers.items():
            self._tasks.append(asyncio.create_task(sched.run(), name=f"bus:{name}"))
        self._running = True
        if self.unavailable:
            await self._sink(
                [
                    Sample(d, "_status", now_ms(), None, Quality.UNAVAILABLE)
                    for d in self.unavailable
                ]
            )

    async def stop(self) -> None:
        # buses finish the poll in flight first (bounded by the device timeouts), so a reading
        # the device already served reaches the pipeline; then everything is cancelled
        for sched in self._schedulers.values():
            sched.request_stop()
        buses = [t for t in self._tasks if t.get_name().startswith("bus:")]
        if buses:
            grace = min(5.0, max((float(d.timeout) for d in self.cfg.devices), default=1.0) + 0.5)
            await asyncio.wait(buses, timeout=grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        drivers: list[tuple[str, Driver]] = [*self._polled.items(), *self._push.items()]
        for dev_id, drv in drivers:
            try:
                await drv.close()
            except Exception:
                log.exception("closing %s failed", dev_id)

    def _start_device(self, dev: DeviceConfig) -> None:
        entry = self.drivers.get(dev.driver)
        if entry is None or entry.cls is None:
            why = entry.error if entry is not None else f"no driver named {dev.driver!r}"
            self.unavailable[dev.id] = why or "driver unavailable"
            log.error("device %s unavailable: driver %s: %s", dev.id, dev.driver, why)
            return
        cls: type[Driver] = entry.cls
        try:
            options = cls.Options.model_validate(dev.options or {})
            driver = cls(options)
        except Exception as exc:
            self.unavailable[dev.id] = f"{type(exc).__name__}: {exc}"
            log.error("device %s unavailable: %s", dev.id, exc)
            return
        ctx = self._context(dev.id, dev.driver)
        if not driver.pushes and isinstance(driver, PolledDriver):
            self._add_polled(dev, cls, options, LazyOpenDriver.for_class(cls)(driver, ctx))
        elif driver.pushes:
            # ``pushes`` may come from the options (a serial port in streaming mode), so the
            # class need not be a PushDriver subclass; it has ``run(emit)`` by that contract.
            push = cast(PushDriver, driver)
            self._push[dev.id] = push
            self._tasks.append(
                asyncio.create_task(self._run_push(dev.id, push, ctx), name=f"push:{dev.id}")
            )

    def _add_polled(
        self, dev: DeviceConfig, cls: type[Driver], options: DriverOptions, wrapped: LazyOpenDriver
    ) -> None:
        self._polled[dev.id] = wrapped
        # The device's `bus:` name wins; else the driver's own key (same endpoint/port).
        key = cls.bus_key(options)
        bus = dev.bus or key or f"device:{dev.id}"
        buses = self.cfg.buses
        bus_cfg = buses.get(bus) or (buses.get(key) if key else None)
        sched = self._schedulers.get(bus)
        if sched is None:
            delay = float(bus_cfg.inter_frame_delay) if bus_cfg is not None else 0.0
            breaker = (bus_cfg.breaker if bus_cfg is not None else None) or self.cfg.breaker
            sched = BusScheduler(bus, inter_frame_delay=delay, breaker=breaker_policy(breaker))
            self._schedulers[bus] = sched
            if self._running:  # a device added while running (remote configuration)
                self._tasks.append(asyncio.create_task(sched.run(), name=f"bus:{bus}"))
        timeout = float(dev.timeout)
        if bus_cfg is not None and bus_cfg.timeout is not None:
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
        self._pollers.append(poller)
        sched.add(poller)

    # ------------------------------------------------------------------ OTA: health, firmware
    def device_health(self) -> dict[str, str]:
        """Per enabled device: ``ok``, ``waiting`` (not polled yet) or the failure's quality.

        Used by the OTA health gate: a push device counts as ``ok`` while its task runs.
        """
        out: dict[str, str] = {d: f"unavailable: {why}" for d, why in self.unavailable.items()}
        for poller in self._pollers:
            q = poller.last_quality
            out[poller.device_id] = (
                "waiting" if q is None else ("ok" if q == Quality.GOOD else q.name)
            )
        running = {t.get_name() for t in self._tasks if not t.done()}
        for dev_id in self._push:
            out[dev_id] = "ok" if f"push:{dev_id}" in running else "COMM_ERROR"
        return out

    def poller(self, device_id: str) -> DevicePoller | None:
        return next((p for p in self._pollers if p.device_id == device_id), None)

    async def update_firmware(
        self, device_id: str, image: FirmwareImage, progress: FirmwareProgress, *, attempts: int = 3
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
            raise PermanentError(
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

    async def _sink(self, samples: Sequence[Sample]) -> None:
        for observe in self.sample_observers:
            observe(samples)
        await self._sink_fn(samples)

    # ------------------------------------------------------------------ changes while running
    def add_device(self, dev: DeviceConfig) -> None:
        """Start one more device while running (remote configuration)."""
        if dev.enabled:
            self._start_device(dev)

    async def remove_device(self, device_id: str) -> None:
        """Take one device off its bus (or stop its push task) and close its driver; the other
        devices on the bus keep their schedule."""
        sched = self._device_bus.pop(device_id, None)
        if sched is not None:
            sched.remove(device_id)
        for task in [t for t in self._tasks if t.get_name() == f"push:{device_id}"]:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._tasks.remove(task)
        drv: Driver | None = self._polled.pop(device_id, None) or self._push.pop(device_id, None)
        self.unavailable.pop(device_id, None)
        self._contexts.pop(device_id, None)
        if drv is None:
            return
        try:
            if sched is not None:  # on the bus: after a poll in flight, never during it
                await sched.submit_write(device_id, drv.close)
            else:
                await drv.close()
        except Exception:
            log.exception("closing %s failed", device_id)

    async def device_call(self, device_id: str, fn: Callable[[Driver], Awaitable[Any]]) -> Any:
        """``await fn(driver)`` on the device's bus ahead of polls (commands, shadow writes).

        Raises ``LookupError`` when the device is not running (unknown, disabled, broken)."""
        driver = self._polled.get(device_id)
        sched = self._device_bus.get(device_id)
        if driver is not None and sched is not None:
            polled = driver
            return await sched.submit_write(device_id, lambda: fn(polled))
        if device_id in self._push:
            return await fn(self._push[device_id])
        raise LookupError(self.unavailable.get(device_id) or f"device {device_id!r} is not running")

    async def _run_push(self, device_id: str, driver: PushDriver, ctx: DeviceContext) -> None:
        """Run a push driver; on failure report COMM_ERROR and restart it with backoff."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await driver.open(ctx)
                await driver.run(self._emit)
                log.info("push driver of %s returned; not restarting", device_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                quality = exc.quality if isinstance(exc, DriverError) else Quality.COMM_ERROR
                log.info("device %s: %s: %s", device_id, type(exc).__name__, exc)
                await self._sink([Sample(device_id, "_status", now_ms(), None, quality)])
            finally:
                try:
                    await driver.close()
                except Exception:
                    log.exception("closing driver of %s failed", device_id)
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2**attempt)))

    # ------------------------------------------------------------------ writes
    def request_writes(self, writes: list[WriteRequest]) -> None:
        """Run each write in its own task (the pipeline must not wait for the bus)."""
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
                polled = driver
                await sched.submit_write(req.device, lambda: polled.write(req.point, req.value))
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

    # ------------------------------------------------------------------ observability
    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        return {
            "scheduler": {"buses": {name: s.stats() for name, s in self._schedulers.items()}},
            "devices": {
                "devices": {d: dict(c.counters) for d, c in self._contexts.items()}
                | {d: {"unavailable": 1} for d in self.unavailable}
            },
            "writes": dict(self._write_stats),
        }
