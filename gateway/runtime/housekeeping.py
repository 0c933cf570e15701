"""Cron-like upkeep of a running gateway, on APScheduler (never the hot polling path).

Jobs:
- ``outbox_maintenance`` every ``outbox.vacuum_every``: incremental vacuum + WAL truncation in the
  outbox thread (the outbox also checks itself every 64 operations; this is the backstop for a
  quiet gateway).
- ``certificate_renewal`` every ``uplink.renew_check_every`` (6 h; first run at most 30 s after
  start) when the uplink is enabled and
  ``uplink.renew_before`` > 0: once the gateway certificate expires within ``renew_before``, it
  is renewed over the gateway's own identity (no token; same key), and the uplink uses the new
  certificate from its next connection on. The current certificate stays valid meanwhile, so a
  failed attempt is logged, counted and retried at the next run.

Each job has ``max_instances=1`` and ``coalesce=True``; a slow job is never run twice at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edgegw import pki
from edgegw.config import GatewayConfig
from edgegw.protocol.identity import Identity
from edgegw.runtime.datapath import DataPath
from edgegw.uplink.enroll import enroll

log = logging.getLogger("edgegw.housekeeping")

RENEWAL_FIRST_DELAY = 30.0


class Housekeeping:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self.counts: dict[str, int] = {}
        self.cert_days_left: float | None = None

    def every(
        self, name: str, seconds: float, job: Callable[[], Awaitable[None]], first_in: float
    ) -> None:
        async def run() -> None:
            try:
                await job()
            except Exception as exc:  # a failed upkeep job is logged and retried next time
                self.counts[f"{name}_failures"] = self.counts.get(f"{name}_failures", 0) + 1
                log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
            else:
                self.counts[f"{name}_runs"] = self.counts.get(f"{name}_runs", 0) + 1

        self._scheduler.add_job(
            run,
            "interval",
            seconds=seconds,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(seconds)),
            next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=first_in),
        )

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        if self.cert_days_left is not None:
            out["certificate_days_left"] = round(self.cert_days_left, 2)
        return out


async def renew_if_due(
    gateway_id: str,
    identity_dir: Path,
    broker: str,
    renew_before: float,
    hk: Housekeeping,
    enroll_broker: str | None = None,
) -> None:
    """Renew the gateway certificate when it expires within ``renew_before`` seconds."""
    cert_path, _key, _ca = Identity.files(identity_dir)
    cert = pki.load_certificate(cert_path)
    left = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
    hk.cert_days_left = left / 86400
    if left > renew_before:
        return
    log.info("gateway certificate expires in %.1f days: renewing", left / 86400)
    await asyncio.to_thread(
        enroll, gateway_id, identity_dir, broker=broker, renew=True, enroll_broker=enroll_broker
    )
    new = pki.load_certificate(cert_path)
    hk.cert_days_left = (new.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    hk.counts["certificate_renewals"] = hk.counts.get("certificate_renewals", 0) + 1
    log.info(
        "gateway certificate renewed: serial %x, valid %.0f more days",
        new.serial_number,
        hk.cert_days_left,
    )


class HousekeepingService:
    """Service: the cron-like jobs above on one ``Housekeeping`` scheduler."""

    name = "housekeeping"

    def __init__(
        self, cfg: GatewayConfig, datapath: DataPath, identity_dir: Path | None
    ) -> None:
        self.cfg = cfg
        self.datapath = datapath
        self.identity_dir = identity_dir
        self.hk = Housekeeping()

    async def _maintain_outbox(self) -> None:
        dp = self.datapath
        if dp.outbox is not None:
            await dp.outbox_thread.call(dp.outbox.maintain)

    async def start(self) -> None:
        cfg, hk = self.cfg, self.hk
        every = float(cfg.outbox.vacuum_every)
        hk.every("outbox_maintenance", every, self._maintain_outbox, first_in=every)
        u, identity_dir = cfg.uplink, self.identity_dir
        if identity_dir is not None and float(u.renew_before) > 0:
            check = float(u.renew_check_every)
            gateway_id = cfg.gateway.id
            hk.every(
                "certificate_renewal",
                check,
                lambda: renew_if_due(
                    gateway_id, identity_dir, u.broker, float(u.renew_before), hk,
                    u.enroll_broker,
                ),
                first_in=min(RENEWAL_FIRST_DELAY, check),
            )
        hk.start()

    async def stop(self) -> None:
        self.hk.shutdown()

    def stats(self) -> Mapping[str, Mapping[str, Any]]:
        return {"housekeeping": self.hk.stats()}
