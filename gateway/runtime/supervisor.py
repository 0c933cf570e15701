"""Gateway lifecycle: runs the services a checked config describes, in order, and stops them.

A running gateway is an ordered list of services (``edgegw.runtime.service.Service``):

    data path (outbox, batcher, pipeline + edge stages)
    -> uplink (when enabled; reads the data path's outbox)
    -> devices (drivers, bus schedulers, push tasks; feed the data path)
    -> housekeeping (outbox maintenance, certificate renewal)

``start()`` prepares the state dir, starts the services in that order, then the metrics endpoint,
the status file writer and the watchdog, and sends READY=1. ``stop()`` stops them in reverse
order: producers first, then the uplink (which may drain), then the data path, which seals every
pending and held reading before the outbox closes. A later service (commands, shadow, remote
config, OTA) is one more line in ``__init__``; it can use every service before it.

Invariants:
- ``WATCHDOG=1`` is sent only while the pipeline's clock ticks (a stuck loop stops the pings).
- ``status.json`` is replaced atomically once a second and once more after the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgegw.config import GatewayConfig
from edgegw.device.downlink import DownlinkService
from edgegw.model import now_ms
from edgegw.protocol.fileperms import STATUS_MODE, write_private
from edgegw.protocol.identity import default_identity_dir
from edgegw.runtime.datapath import DataPath
from edgegw.runtime.devices import DeviceManager
from edgegw.runtime.devmgmt_service import DeviceManagementService
from edgegw.runtime.housekeeping import HousekeepingService
from edgegw.runtime.metrics import StatsCollector, StatsFn, serve
from edgegw.runtime.ota_service import OtaService
from edgegw.runtime.sdnotify import notify, watchdog_interval
from edgegw.runtime.service import Service
from edgegw.runtime.uplink_service import UplinkService
from edgegw.sdk import DriverEntry, FirmwareImage, FirmwareProgress

log = logging.getLogger("edgegw.supervisor")

STATUS_FILE = "status.json"
RUNS_FILE = "runs.json"
RUNNING_MARKER = "running"


class DownlinkRuntime:
    """The downlink service as a supervisor service: attached to the uplink's session when the
    session is made, stopped before the uplink (no handler runs on a closed session)."""

    name = "downlink"

    def __init__(self, service: DownlinkService, uplink: UplinkService) -> None:
        self.service = service
        uplink.session_hooks.append(service.attach)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        return {"downlink": self.service.stats()}


class Gateway:
    """One running gateway: everything a config describes, as an ordered list of services."""

    def __init__(self, cfg: GatewayConfig, drivers: Mapping[str, DriverEntry]) -> None:
        self.cfg = cfg
        self.gateway_id: str = cfg.gateway.id
        self.state_dir = Path(cfg.gateway.state_dir)
        identity_dir = self._identity_dir() if cfg.uplink.enabled else None
        self.datapath = DataPath(cfg, self.state_dir, identity_dir)
        self.uplink: UplinkService | None = None
        if identity_dir is not None:
            self.uplink = UplinkService(cfg.uplink, self.gateway_id, identity_dir, self.datapath)
        self.devices = DeviceManager(
            cfg, drivers, self.state_dir, sink=self.datapath.submit, emit=self.datapath.submit
        )
        self.datapath.on_writes = self.devices.request_writes
        self.housekeeping = HousekeepingService(cfg, self.datapath, identity_dir)
        #: cloud -> gateway messages (commands, shadow, config, OTA) on the uplink's session
        self.downlink: DownlinkRuntime | None = None
        if self.uplink is not None and identity_dir is not None:
            self.downlink = DownlinkRuntime(
                DownlinkService(self.gateway_id, identity_dir, self.state_dir), self.uplink
            )
        #: started in this order, stopped in reverse; add a downlink service with one line here
        self.services: list[Service] = [
            self.datapath,
            *([self.uplink] if self.uplink is not None else []),
            *([self.downlink] if self.downlink is not None else []),
            self.devices,
            self.housekeeping,
        ]
        if self.uplink is not None and self.downlink is not None:  # commands, shadow, config
            dms = DeviceManagementService(
                self, self.devices, self.uplink, self.datapath, self.downlink.service)
            self.services.append(dms)
            if cfg.ota.enabled and identity_dir is not None:  # OTA (config releases via dms)
                self.services.append(OtaService(self, self.downlink.service, identity_dir,
                                                dms.dm.config))
        self._started_services: list[Service] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.monotonic()
        self._metrics_server: Any = None
        self.watchdog_pings = 0  # the OTA health gate wants one before a trial commits
        self._status_failing = False
        self._status_task: asyncio.Task[None] | None = None
        self.phase = "starting"
        self.runs: dict[str, int] = {"starts": 0, "unclean_stops": 0}
        self.collector = StatsCollector(self._stats_sources())

    def _identity_dir(self) -> Path:
        d = self.cfg.uplink.identity_dir
        return default_identity_dir(self.state_dir, d)

    # ------------------------------------------------------------------ startup
    async def start(self) -> None:
        cfg = self.cfg
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o750)
        (self.state_dir / "gateway-id").write_text(self.gateway_id + "\n")
        self.collector = StatsCollector(self._stats_sources())  # services added after __init__
        self._count_run()
        for service in self.services:
            await service.start()
            self._started_services.append(service)
        if cfg.metrics.enabled:
            try:
                self._metrics_server = serve(cfg.metrics.listen, self.collector)
            except OSError as exc:
                log.error("metrics endpoint %s not started: %s", cfg.metrics.listen, exc)
        self._status_task = asyncio.create_task(self._status_writer(), name="status")
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        notify(f"READY=1\nSTATUS=serving {len(cfg.devices)} devices")
        log.info(
            "gateway %s running: %d devices, state dir %s, uplink %s",
            self.gateway_id,
            len(cfg.devices),
            self.state_dir,
            cfg.uplink.broker if cfg.uplink.enabled else "disabled",
        )

    # ------------------------------------------------------------------ OTA hooks
    def device_health(self) -> dict[str, str]:
        return self.devices.device_health()

    def uplink_stats(self) -> Mapping[str, Any] | None:
        return self.uplink.stats().get("uplink", {}) if self.uplink is not None else None

    async def update_firmware(
        self, device_id: str, image: FirmwareImage, progress: FirmwareProgress, *, attempts: int = 3
    ) -> None:
        await self.devices.update_firmware(device_id, image, progress, attempts=attempts)

    # ------------------------------------------------------------------ observability
    def _stats_sources(self) -> dict[str, StatsFn]:
        """One source per stats section of every service (``status.json`` keys)."""
        sources: dict[str, StatsFn] = {}
        for service in self.services:
            for section in service.stats():
                sources[section] = _section(service, section)
        sources["process"] = lambda: {"uptime_seconds": time.monotonic() - self._started,
                                      "phase": self.phase, **self.runs}
        return sources

    def _count_run(self) -> None:
        """Count starts and unclean stops across runs (``runs.json``; a ``running`` marker is
        removed by a clean stop, so finding it at start means SIGKILL, power cut or crash)."""
        runs_file, marker = self.state_dir / RUNS_FILE, self.state_dir / RUNNING_MARKER
        with contextlib.suppress(OSError, ValueError):
            self.runs |= {k: int(v) for k, v in json.loads(runs_file.read_text()).items()
                          if k in ("starts", "unclean_stops")}
        self.runs["starts"] += 1
        if marker.exists():
            self.runs["unclean_stops"] += 1
            log.warning("the previous run of gateway %s did not stop cleanly (SIGKILL, power cut "
                        "or crash): %d unclean stops in %d starts", self.gateway_id,
                        self.runs["unclean_stops"], self.runs["starts"])
        try:
            tmp = runs_file.with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps(self.runs))
                f.flush()
                os.fsync(f.fileno())  # else a power cut can leave an empty runs.json (reset counts)
            os.replace(tmp, runs_file)
            marker.write_text(f"{os.getpid()}\n")
        except OSError as exc:
            log.warning("cannot record this run in %s: %s", runs_file, exc)

    async def _status_writer(self) -> None:
        path = self.state_dir / STATUS_FILE
        while True:
            await asyncio.sleep(1.0)
            await self.datapath.refresh_stats()
            self.write_status(path)

    def write_status(self, path: Path | None = None) -> None:
        path = path or self.state_dir / STATUS_FILE
        doc = {
            "gateway_id": self.gateway_id,
            "pid": os.getpid(),
            "written_ms": now_ms(),
            "unavailable": self.devices.unavailable,
            "stats": self.collector.snapshot(),
        }
        # 0640 from creation (issue 9 #10: it was world-readable)
        try:
            # compact: json's C encoder (an indented dump runs its pure-Python encoder, ~4x
            # the CPU, once a second); `edgegw status` prints it readably
            write_private(path, json.dumps(doc, default=str), STATUS_MODE)
        except OSError as exc:  # disk full: the status file is informational only
            if not self._status_failing:
                log.warning("cannot write %s: %s (retrying every second)", path, exc)
            self._status_failing = True
        else:
            self._status_failing = False

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if now_ms() - self.datapath.last_tick_ms < 5_000:
                notify("WATCHDOG=1")
                self.watchdog_pings += 1
            else:
                log.error("pipeline clock stalled; withholding the watchdog ping")

    # ------------------------------------------------------------------ shutdown
    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop the services in reverse order; every pending and held reading is sealed.

        With ``drain_timeout`` > 0 and an uplink, waits until every stored batch is acknowledged
        by the cloud (or the timeout passes) before disconnecting; nothing is lost either way,
        undelivered batches stay in the outbox for the next start.
        """
        notify("STOPPING=1")
        self.phase = "draining" if drain_timeout > 0 and self.uplink is not None else "stopping"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.uplink is not None:
            self.uplink.drain_timeout = drain_timeout
        while self._started_services:
            service = self._started_services.pop()
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        # the status file kept showing progress (backlog, acks) while the services stopped
        if self._status_task is not None:
            self._status_task.cancel()
            await asyncio.gather(self._status_task, return_exceptions=True)
        self.phase = "stopped"
        if self.state_dir.is_dir():
            with contextlib.suppress(Exception):
                await self.datapath.refresh_stats()
            self.write_status()
            with contextlib.suppress(OSError):
                (self.state_dir / RUNNING_MARKER).unlink()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("gateway %s stopped", self.gateway_id)


def _section(service: Service, section: str) -> StatsFn:
    def read() -> Mapping[str, Any]:
        return service.stats().get(section, {})

    return read
