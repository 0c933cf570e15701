"""Remote configuration: the cloud pushes a config bundle; the gateway validates it with the
``edgegw check`` checker, installs it commit-confirmed (``config_apply``), applies it to the
running gateway, and keeps it only if the cloud confirms within the time limit.

Messages (kind ``config``):
- cloud -> gateway ``{"op": "push", "version": V, "bundle": {...}, "confirm_within_s": T}``,
  ``{"op": "confirm", "version": V}``, ``{"op": "get"}``;
- gateway -> cloud ``{"op": "refused", "version", "messages": [file:line:col ...]}``,
  ``{"op": "applied", "version", "report"}`` (= please confirm), ``{"op": "confirmed"}``,
  ``{"op": "reverted", "version", "reason"}``, ``{"op": "current", "version", "bundle"}``.

Applying without losing data or disturbing what did not change (``GatewayHost.reconfigure``,
implemented by the runtime):
- devices are compared one by one (their whole config entry and their bus settings); only
  added, removed or changed devices are stopped/started, the others keep polling on the same
  schedule with the same open connection;
- rules/anomaly changes rebuild the edge stages; an ``uplink`` change replaces the MQTT session
  (everything unacknowledged stays in the outbox and is sent again: nothing is lost);
- other sections (gateway, outbox, batch, metrics) take effect at the next start; the report
  says which (``restart_needed``). ``gateway.id`` and ``gateway.state_dir`` cannot change
  remotely (refused, reverted at once).
- The confirmation is the proof that the gateway still reaches the cloud with the new config:
  a push that cuts the uplink (a wrong broker address) is never confirmed; the timer reverts
  the files and re-applies the previous config, the session comes back, and the outcome is
  reported (it is also kept in ``.edgegw-apply/last.json`` across restarts).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgegw.device.config_apply import Bundle, BundleError, ConfigApply
from edgegw.device.downlink import DownlinkService
from edgegw.device.host import GatewayHost
from edgegw.protocol import downlink as dl

log = logging.getLogger("edgegw.remote_config")

DEFAULT_CONFIRM_S = 60.0


class RemoteConfig:
    """Kind ``config`` handler. start()/stop()/stats()."""

    def __init__(self, gateway: GatewayHost, service: DownlinkService,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.gw = gateway
        self.svc = service
        self.on_change = on_change
        path = gateway.config_file
        self.tx: ConfigApply | None = ConfigApply(Path(path)) if path else None
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = defaultdict(int)
        #: ``fn(version, "confirmed" | "reverted", reason)`` after the final outcome
        self.outcome_listeners: list[Callable[[str | None, str, str], None]] = []

    async def start(self) -> None:
        if self.tx is None:
            return
        p = self.tx.pending()
        if p is not None and not p.installing:
            log.info("configuration %s awaits confirmation (%.0f s left)", p.version,
                     p.remaining_s)
            self._arm(p.remaining_s)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        p = self.tx.pending() if self.tx is not None else None
        return {**self.counts, "pending": 1 if p is not None else 0}

    def status(self) -> dict[str, Any]:
        """What ``info`` reports: committed version, pending one, last outcome."""
        if self.tx is None:
            return {"config_version": None, "config_pending": None, "config_last": None}
        p = self.tx.pending()
        return {"config_version": self.tx.committed_version(),
                "config_pending": p.version if p is not None else None,
                "config_last": self.tx.last()}

    # ------------------------------------------------------------------ messages
    async def __call__(self, msg: dl.Message) -> None:
        op = msg.body.get("op")
        if op == "push":
            async with self._lock:
                await self._push(msg)
        elif op == "confirm":
            async with self._lock:
                await self._confirm(str(msg.body.get("version")), msg.msg_id)
        elif op == "get":
            self._send_current(msg.msg_id)
        else:
            self.counts["unknown_op"] += 1

    async def on_connect(self) -> None:
        """Back in touch: ask again for the confirmation of a pending config."""
        if self.tx is None:
            return
        p = self.tx.pending()
        if p is not None and not p.installing:
            self.svc.reply(dl.CONFIG, None, {"op": "applied", "version": p.version,
                                             "report": {}, "again": True})

    def _send_current(self, msg_id: str | None) -> None:
        if self.tx is None:
            self.svc.reply(dl.CONFIG, msg_id, {"op": "current", "version": None, "bundle": None})
            return
        text = self.tx.config_path.read_text()
        self.svc.reply(dl.CONFIG, msg_id, {
            "op": "current", **self.status(),
            "bundle": {"main": self.tx.config_path.name,
                       "files": {self.tx.config_path.name: text}}})

    async def _push(self, msg: dl.Message) -> None:
        body = msg.body
        version = str(body.get("version"))
        within = float(body.get("confirm_within_s") or DEFAULT_CONFIRM_S)

        def refuse(messages: list[str]) -> None:
            self.counts["refused"] += 1
            self.svc.reply(dl.CONFIG, msg.msg_id, {"op": "refused", "version": version,
                                                   "messages": messages})

        if self.tx is None:
            refuse(["this gateway was started without a config file; cannot apply remotely"])
            return
        pending = self.tx.pending()
        if pending is not None and pending.version == version:  # a re-sent push: same answer
            self.svc.reply(dl.CONFIG, msg.msg_id, {"op": "applied", "version": version,
                                                   "report": {}, "again": True})
            return
        if self.tx.committed_version() == version:
            self.svc.reply(dl.CONFIG, msg.msg_id, {"op": "confirmed", "version": version})
            return
        last = self.tx.last()
        if last is not None and last.get("version") == version:
            self.svc.reply(dl.CONFIG, msg.msg_id, {"op": last["outcome"], "version": version,
                                                   "reason": last.get("reason")})
            return
        try:
            bundle = Bundle.from_wire(body.get("bundle") or {})
            bundle = Bundle(bundle.files, bundle.main)
        except BundleError as exc:
            refuse([str(exc)])
            return
        outcome, messages = await self._apply(bundle, version, within, msg.msg_id)
        if outcome == "refused":
            refuse(messages)

    async def apply_bundle(self, bundle: Bundle, version: str, within: float
                           ) -> tuple[str, list[str]]:
        """Check, install commit-confirmed, apply, and ask the cloud for the confirmation (the
        same path as a pushed config; OTA config releases use it). Returns ("applied", []),
        ("refused", checker messages) or ("reverted", [reason]); the final outcome (confirmed
        or reverted) reaches ``outcome_listeners``."""
        if self.tx is None:
            return "refused", ["this gateway was started without a config file; cannot apply "
                               "remotely"]
        async with self._lock:
            return await self._apply(bundle, version, within, None)

    async def _apply(self, bundle: Bundle, version: str, within: float, msg_id: str | None
                     ) -> tuple[str, list[str]]:
        assert self.tx is not None
        issues = await asyncio.to_thread(self.tx.check, bundle, self.gw.check_config_file)
        if issues:
            log.info("configuration %s refused: %d issue(s)", version, len(issues))
            return "refused", issues
        tx = self.tx
        try:
            await asyncio.to_thread(tx.install, bundle, version, within)
        except (BundleError, OSError) as exc:
            return "refused", [f"install failed: {exc}"]
        try:
            new_cfg = await asyncio.to_thread(self.gw.load_config_file, tx.config_path)
            report = await self.gw.reconfigure(new_cfg)
        except Exception as exc:
            log.warning("configuration %s could not be applied (%s); reverting", version, exc)
            await self._revert(f"apply failed: {exc}", report_id=msg_id)
            return "reverted", [f"apply failed: {exc}"]
        self.counts["applied"] += 1
        if report.get("restart_needed"):
            log.info("sections %s take effect at the next restart", report["restart_needed"])
        self._arm(within)
        log.info("configuration %s applied (%s); waiting up to %.0f s for the cloud's "
                 "confirmation", version, report, within)
        self.svc.reply(dl.CONFIG, msg_id, {"op": "applied", "version": version,
                                           "report": report})
        self.on_change()
        return "applied", []

    def _outcome(self, version: str | None, outcome: str, reason: str) -> None:
        for fn in self.outcome_listeners:
            try:
                fn(version, outcome, reason)
            except Exception:
                log.exception("config outcome listener failed")

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            task = loop.create_task(self._expired())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._timer = loop.call_later(seconds, fire)

    async def _expired(self) -> None:
        async with self._lock:
            assert self.tx is not None
            p = self.tx.pending()
            if p is None:
                return
            log.warning("configuration %s was not confirmed by the cloud in time; reverting",
                        p.version)
            await self._revert("not confirmed within the time limit (the gateway could not "
                               "reach the cloud with it)")

    async def _revert(self, reason: str, report_id: str | None = None) -> None:
        assert self.tx is not None
        p = await asyncio.to_thread(self.tx.revert, reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.counts["reverted"] += 1
        try:
            old = await asyncio.to_thread(self.gw.load_config_file, self.tx.config_path)
            await self.gw.reconfigure(old)
        except Exception:
            log.exception("re-applying the previous configuration failed")
        version = p.version if p is not None else None
        self.svc.reply(dl.CONFIG, report_id, {"op": "reverted", "version": version,
                                              "reason": reason})
        self.on_change()
        self._outcome(version, "reverted", reason)

    async def _confirm(self, version: str, msg_id: str) -> None:
        assert self.tx is not None
        if await asyncio.to_thread(self.tx.confirm, version):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.counts["confirmed"] += 1
            log.info("configuration %s confirmed by the cloud", version)
            self.svc.reply(dl.CONFIG, msg_id, {"op": "confirmed", "version": version})
            self.on_change()
            self._outcome(version, "confirmed", "")
        else:
            current = self.tx.committed_version()
            self.svc.reply(dl.CONFIG, msg_id, {"op": "confirm_ignored", "version": version,
                                               "committed": current})

    async def reload_from_disk(self) -> dict[str, Any]:
        """The ``reload_config`` command: re-read the local file and apply it (no confirm:
        an operator on the box edited it)."""
        if self.tx is None:
            return {"status": "refused", "reason": "no config file"}
        issues = await asyncio.to_thread(self.gw.check_config_file, self.tx.config_path)
        if issues:
            return {"status": "refused", "reason": "; ".join(issues)}
        try:
            cfg = await asyncio.to_thread(self.gw.load_config_file, self.tx.config_path)
            report = await self.gw.reconfigure(cfg)
        except ValueError as exc:
            return {"status": "refused", "reason": str(exc)}
        self.on_change()
        return {"status": "ok", "value": report}
