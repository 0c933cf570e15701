"""The gateway's OTA agent: the handler of the ``ota`` downlink kind (edgegw.protocol.ota_transfer).

One release at a time goes through: offer -> verify the offer -> pull chunks -> verify the
payload -> wait for the maintenance window -> install -> report. Every step's state is
persisted (``edgegw.ota.transfer``) before it is reported, and re-sent on every (re)connection.

- **Offer.** ``check_offer`` with the trusted key (``IDENTITY_DIR/ota-signing.pub``), this
  gateway's id and configured labels, the last accepted serial of the kind (software: boot.json
  of the slots; config/firmware: ``ota/accepted.json``) and the installed version (software:
  the running one; config/firmware: the last one of that name installed here). An offer for a
  release already held resumes it (bitmap kept); one already committed or rolled back answers
  that state; one being installed or on trial answers its state.
- **Pull.** At most ``chunks_in_flight`` chunks requested and not received; a token bucket of
  ``max_rate`` bytes/s (burst: one chunk) paces the requests, so the cap holds on the network
  bytes; a chunk not received within ``chunk_timeout`` is requested again; on every connection
  every missing chunk is requested again (what was in flight on the old session is gone). A
  chunk is checked against its SHA-256 in the signed manifest, written at its offset and fsynced
  before the bitmap claims it. A tampered chunk: refused (``tampered_chunk``), the partial
  download discarded.
- **Install.** ``verify_payload`` (whole hash, members, paths, links) first; then, inside the
  window (``ota.window`` or the offer's: the install runs during a minute the cron expression
  matches, else waits for its next fire time, computed with APScheduler's CronTrigger and slept
  on the event loop: no scheduler thread): software -> ``slots.install_software`` in a thread,
  state ``trial``, then the daemon exits cleanly (``host.request_exit``) so the launcher starts
  the trial; the new version's agent reports ``committed`` once ``trial.run_trial`` committed
  it, the old one (running again after a rollback) ``rolled_back`` from boot.json
  ``last_result``. Config -> ``config_release.bundle_from_release`` + devmgmt's
  commit-confirmed ``RemoteConfig.apply_bundle`` (state ``trial`` until the cloud's confirm,
  then ``committed``; reverted -> ``rolled_back``). Firmware -> ``host.update_firmware`` for
  each device of the manifest.

Invariants:
- Every refusal is logged at WARNING, persisted and reported as state ``refused`` with the
  verifier's reason; nothing is written to a slot before ``verify_payload`` passed (the slots
  module re-verifies itself).
- The event loop never blocks: file I/O and hashing run on the agent's single worker thread
  (in order), installs in their own thread; telemetry keeps flowing during a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import os
import tarfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edgegw.config import OtaConfig
from edgegw.device.config_apply import Bundle
from edgegw.device.downlink import DownlinkService
from edgegw.device.remote_config import RemoteConfig
from edgegw.ota import launcher
from edgegw.ota import transfer as tr
from edgegw.ota.config_release import bundle_from_release
from edgegw.ota.slots import install_software
from edgegw.ota.trial import running_version
from edgegw.ota.verify import Refusal, check_chunk, check_offer, load_trusted_key, verify_payload
from edgegw.protocol import downlink as dl
from edgegw.protocol import ota_transfer as ot
from edgegw.protocol.cron import cron_trigger
from edgegw.protocol.identity import OTA_PUB
from edgegw.protocol.release import Manifest, ReleaseError, verify_signature
from edgegw.sdk import FirmwareImage

log = logging.getLogger("edgegw.ota.agent")

T = TypeVar("T")
#: test mode of the software install (see edgegw.ota.slots ``deps_from``); never set in production
ENV_DEPS_FROM = "EDGEGW_OTA_DEPS_FROM"
PROGRESS_EVERY_S = 0.5
TRIAL_POLL_S = 1.0
#: states from which an offer of the same release resumes the download
_RESUMABLE = frozenset({"offered", "downloading", "cancelled"})
#: states an offer of the same release is answered with (nothing restarts)
_BUSY = frozenset({"verifying", "waiting_window", "installing", "trial"})
_DONE = frozenset({"committed", "rolled_back"})


class OtaHost(Protocol):
    """What the agent needs from the running gateway (implemented by the runtime)."""

    gateway_id: str
    state_dir: Path

    @property
    def config_file(self) -> Path | None: ...

    async def update_firmware(self, device_id: str, image: FirmwareImage,
                              progress: Callable[[int, int], None]) -> None: ...

    def request_exit(self, why: str) -> bool:
        """Stop the daemon cleanly (exit status 0) so the launcher starts again (False: no)."""

    def device_driver(self, device_id: str) -> str | None:
        """The configured driver of ``device_id`` (None: no such device)."""


def install_window_open(cron: str, now: _dt.datetime) -> tuple[bool, _dt.datetime]:
    """(open now, next fire time). The window is open during every minute the cron matches."""
    trig = cron_trigger(cron)
    minute = now.replace(second=0, microsecond=0)
    fire = trig.get_next_fire_time(None, minute)
    if fire is not None and fire <= now:
        return True, fire
    nxt = trig.get_next_fire_time(None, now)
    return False, nxt if nxt is not None else now + _dt.timedelta(days=3650)


class TokenBucket:
    """``rate`` bytes/s, at most ``burst`` bytes at once (None rate: unlimited)."""

    def __init__(self, rate: float | None, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, n: int) -> bool:
        if self.rate is None:
            return True
        self._refill()
        need = min(float(n), self.burst)
        if self.tokens >= need:
            self.tokens -= need
            return True
        return False

    def wait_for(self, n: int) -> float:
        if self.rate is None:
            return 0.0
        self._refill()
        return max(0.0, (min(float(n), self.burst) - self.tokens) / self.rate)


class OtaAgent:
    """Kind ``ota`` handler: ``start()``/``stop()``/``stats()``/``status()`` (module doc)."""

    def __init__(self, host: OtaHost, service: DownlinkService, cfg: OtaConfig,
                 identity_dir: Path, remote_config: RemoteConfig | None = None) -> None:
        self.host = host
        self.svc = service
        self.cfg = cfg
        self.key_path = Path(identity_dir) / OTA_PUB
        self.rc = remote_config
        self.root = tr.root_of(host.state_dir)
        env_slots = os.environ.get(launcher.ENV_SLOTS)
        self.slots: Path | None = cfg.slots or (Path(env_slots) if env_slots else None)
        self._io_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ota-io")
        self.cur: tr.ReleaseDir | None = None
        self.net_bytes = 0  # chunk payload bytes received for ``cur`` (all sessions)
        self._inflight: dict[int, float] = {}  # chunk index -> re-request deadline (monotonic)
        self._wake = asyncio.Event()
        self._online = asyncio.Event()
        self._online.set()  # optimistic: a failed send clears it, a connection sets it
        self._bucket = TokenBucket(float(cfg.max_rate) if cfg.max_rate else None, 1)
        self._task: asyncio.Task[None] | None = None  # pump / window / install / trial watch
        self._lock = asyncio.Lock()
        self._last_progress = 0.0
        self._started = time.monotonic()
        self.counts: dict[str, int] = defaultdict(int)
        self._config_results: dict[str, tuple[str, str]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        if remote_config is not None:
            remote_config.outcome_listeners.append(self._config_outcome)
        service.register(dl.OTA, self)

    # ------------------------------------------------------------------ plumbing
    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking file work on the agent's worker thread (in submission order)."""
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, fn, *args)

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("OTA %s failed", what)
                r = self.cur
                if r is not None and r.state not in ot.TERMINAL:
                    await self._set(r, "failed", reason="agent_error", detail=f"{what}: {exc}")

        self._task = asyncio.ensure_future(guarded())

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        rel = await self.io(tr.read_current, self.root)
        r = await self.io(tr.ReleaseDir.load, self.root, rel) if rel else None
        if r is not None:
            self.cur = r
            self.net_bytes = int(r.doc.get("bytes") or 0)
            if r.state not in ot.TERMINAL:
                m = await self._load_manifest(r)
                if m is None:
                    await self._set(r, "failed", reason="state_lost",
                                    detail="the stored manifest no longer verifies")
                else:
                    self._resume(r)
        self.svc.on_connect(self.on_connect, run_now_if_connected=True)

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._side_tasks] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._io_pool.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, **(self.status() or {})}

    def status(self) -> dict[str, Any] | None:
        r = self.cur
        if r is None:
            return None
        return {**r.summary(), "bytes": self.net_bytes, "inflight": len(self._inflight)}

    async def _load_manifest(self, r: tr.ReleaseDir) -> Manifest | None:
        try:
            key = await self.io(load_trusted_key, self.key_path)
            raw, sig = await self.io(r.manifest_bytes)
            r.manifest = verify_signature(raw, sig, key)
        except (OSError, ReleaseError, Refusal) as exc:
            log.warning("OTA state of %s unusable: %s", r.release, exc)
            return None
        return r.manifest

    def _resume(self, r: tr.ReleaseDir) -> None:
        """Continue where the persisted state says (start, or a resumed offer)."""
        st = r.state
        if st in ("offered", "downloading"):
            self._spawn(self._download(r), "download")
        elif st in ("verifying", "waiting_window"):
            self._spawn(self._after_download(r), "verify/install")
        elif st == "installing":
            self._spawn(self._install(r, again=True), "install")
        elif st == "trial":
            self._spawn(self._watch_trial(r), "trial watch")

    async def on_connect(self) -> None:
        """Every (re)connection: re-send the latest state; re-request every missing chunk."""
        self._online.set()
        r = self.cur
        if r is None:
            return
        self._send_state(r)
        if r.state == "downloading":
            self._inflight.clear()
            self._wake.set()

    # ------------------------------------------------------------------ state
    def _state_body(self, r: tr.ReleaseDir) -> dict[str, Any]:
        d = r.doc
        return ot.State(d.get("rollout"), r.release, r.state, self.net_bytes
                        if r is self.cur else int(d.get("bytes") or 0), r.have.count(),
                        r.have.total, d.get("reason"), d.get("detail"),
                        running_version()).body()

    def _send_state(self, r: tr.ReleaseDir) -> None:
        if not self.svc.reply(dl.OTA, None, self._state_body(r)):
            self._online.clear()

    async def _set(self, r: tr.ReleaseDir, state: str, *, reason: str | None = None,
                   detail: str | None = None, **extra: Any) -> None:
        fields = {"state": state, "reason": reason, "detail": detail, **extra}
        if r is self.cur:
            fields["bytes"] = self.net_bytes

        def save() -> None:
            r.doc.update(fields)
            r.save()

        await self.io(save)
        self.counts[f"state_{state}"] += 1
        if state in ("refused", "failed", "rolled_back"):
            # one log kind per release and outcome (the repeat filter throttles by template):
            # every release's refusal is logged, a re-offered bad release is not spammed
            log.warning(f"OTA {r.release}: {state} ({reason}): %s", detail)
        else:
            log.info("OTA %s: %s%s", r.release, state, f" ({detail})" if detail else "")
        self._send_state(r)

    async def _refuse(self, r: tr.ReleaseDir, exc: Refusal, *, discard: bool = False) -> None:
        self.counts[f"refused_{exc.reason}"] += 1
        if r is self.cur:
            self._inflight.clear()
        if discard:
            await self.io(r.discard)
        await self._set(r, "refused", reason=exc.reason, detail=exc.detail)

    async def _make_current(self, r: tr.ReleaseDir) -> None:
        old = self.cur
        if old is not None and old.release != r.release:
            if self._task is not None and not self._task.done():
                self._task.cancel()
            if old.state in ("offered", "downloading", "verifying", "waiting_window"):
                await self._set(old, "cancelled", reason="superseded",
                                detail=f"superseded by {r.release}")
            await self.io(old.drop_payload)
        self.cur = r
        self.net_bytes = int(r.doc.get("bytes") or 0)
        self._inflight.clear()
        await self.io(tr.write_current, self.root, r.release)
        await self.io(tr.prune, self.root, r.release)

    # ------------------------------------------------------------------ messages
    async def __call__(self, msg: dl.Message) -> None:
        try:
            m = ot.parse_down(msg.body)
        except ot.TransferError as exc:
            self.counts["bad_message"] += 1
            log.info("OTA message %s refused: %s", msg.msg_id, exc)
            return
        if not self.cfg.enabled:
            self.counts["disabled"] += 1
            return
        if isinstance(m, ot.Chunk):
            await self._chunk(m)
            return
        async with self._lock:
            if isinstance(m, ot.Offer):
                await self._offer(m)
            else:
                await self._cancel(m)

    async def _offer(self, offer: ot.Offer) -> None:
        self.counts["offers"] += 1
        if not ot.is_safe_release_id(offer.release):
            self.counts["bad_message"] += 1
            log.warning("OTA offer with an unusable release id %r ignored", offer.release[:80])
            return
        if self.cur is not None and self.cur.release == offer.release:
            held: tr.ReleaseDir | None = self.cur
        else:
            held = await self.io(tr.ReleaseDir.load, self.root, offer.release)
        if held is not None and (held.state in _DONE or held.state in _BUSY):
            if held.state in _BUSY and (self.cur is None or self.cur.release != held.release):
                held = None  # a stale folder (not the agent's current release): start over
            else:
                log.info("OTA offer of %s: already %s", offer.release, held.state)
                self._send_state(held)
                return
        if self.cur is not None and self.cur.release != offer.release and (
            self.cur.state in ("installing", "trial")
        ):
            # not answered: the cloud repeats an unanswered offer (on every connection and
            # periodically), by then this install has ended
            self.counts["offers_deferred"] += 1
            log.info("OTA offer of %s deferred: %s is %s", offer.release, self.cur.release,
                     self.cur.state)
            return
        try:
            m = await self._check(offer)
        except Refusal as exc:
            if held is not None:  # re-offered and now refused (e.g. a newer one was installed)
                r = held
                if r is self.cur and self._task is not None:
                    self._task.cancel()
            else:
                r = tr.ReleaseDir(self.root, offer.release)
                r.doc = {"release": offer.release, "rollout": offer.rollout, "state": "offered"}
                if self.cur is not None and self.cur.state not in ot.TERMINAL:
                    # a refused offer does not stop the release in progress
                    await self._refuse(r, exc)
                    return
            await self._make_current(r)
            await self._refuse(r, exc, discard=held is not None)
            return
        if held is not None and held.state in _RESUMABLE and held.doc.get("serial") == m.serial:
            r = held  # the same release again: resume (keep the bitmap)
            r.manifest = m
            self.counts["resumed_offers"] += 1
            if r is self.cur and r.state == "downloading" and self._task is not None and (
                not self._task.done()
            ):  # offered again while downloading (a reconnect): carry on
                await self._set(r, "downloading", rollout=offer.rollout, window=offer.window)
                self._inflight.clear()
                self._wake.set()
                return
        else:
            r = tr.ReleaseDir(self.root, offer.release)
            await self.io(r.create, offer.manifest, offer.sig, m, offer.rollout)
        await self._make_current(r)
        await self._set(r, "offered", rollout=offer.rollout, window=offer.window)
        self._spawn(self._download(r), "download")

    async def _check(self, offer: ot.Offer) -> Manifest:
        try:
            key = await self.io(load_trusted_key, self.key_path)
        except (OSError, ValueError) as exc:
            raise Refusal("no_key", f"cannot read the trusted OTA key {self.key_path}: {exc} "
                                    "(it comes with enrollment)") from None
        # the kind decides which replay mark and installed version apply: parse it first (the
        # signature is checked by check_offer below before anything is trusted)
        try:
            signed = verify_signature(offer.manifest, offer.sig, key)
        except ReleaseError as exc:
            raise Refusal(exc.reason, exc.detail) from None
        last_serial, installed = await self.io(self._marks, signed.kind, signed.name)
        m = check_offer(offer.manifest, offer.sig, key, gateway_id=self.host.gateway_id,
                        labels={**self.cfg.labels, **(offer.labels or {})},
                        last_serial=last_serial,
                        installed_version=installed)
        if m.release_id != offer.release:
            raise Refusal("bad_manifest", f"the offer names {offer.release} but the signed "
                                          f"manifest is {m.release_id}")
        if m.kind == "software" and self.slots is None:
            raise Refusal("no_slots", "this gateway was not started by edgegw-launch (no "
                                      "EDGEGW_SLOTS, no ota.slots): it cannot install software "
                                      "releases; install with the bundle's install.py")
        if m.kind == "config" and (self.rc is None or self.host.config_file is None):
            raise Refusal("no_config_file", "this gateway runs without a config file")
        if m.kind == "firmware":
            fw = dict(m.firmware or {})
            if not fw.get("devices"):
                raise Refusal("bad_manifest", f"{m.release_id} names no devices")
            for dev in fw["devices"]:
                drv = self.host.device_driver(str(dev))
                if drv is None or drv != fw.get("driver"):
                    raise Refusal("wrong_target", f"{m.release_id} is for {fw.get('driver')} "
                                  f"device {dev}; this gateway has " + (
                                      f"{dev} on driver {drv}" if drv else f"no device {dev}"))
        return m

    def _marks(self, kind: str, name: str) -> tuple[int, str | None]:
        """(last accepted serial of ``kind``, installed version) - worker thread."""
        if kind == "software":
            boot = launcher.read_boot(self.slots) if self.slots is not None else {}
            return int(boot.get("accepted_serial") or 0), running_version()
        acc = tr.read_accepted(self.root)
        return int(acc["serials"].get(kind) or 0), acc["versions"].get(f"{kind}/{name}")

    async def _cancel(self, c: ot.Cancel) -> None:
        r = self.cur
        if not ot.is_safe_release_id(c.release):
            self.counts["bad_message"] += 1
            return
        if r is None or r.release != c.release:
            held = await self.io(tr.ReleaseDir.load, self.root, c.release)
            if held is not None:
                self._send_state(held)
            return
        if r.state in ("offered", "downloading", "verifying", "waiting_window"):
            if self._task is not None:
                self._task.cancel()
            self._inflight.clear()
            self.counts["cancelled"] += 1
            await self._set(r, "cancelled", reason="cancelled", detail="cancelled by the cloud")
        else:
            self._send_state(r)  # an install or a trial is not cancelled: it ends on its own

    # ------------------------------------------------------------------ download
    def _chunk_len(self, m: Manifest, i: int) -> int:
        return min(m.chunk_size, m.payload_size - i * m.chunk_size)

    async def _download(self, r: tr.ReleaseDir) -> None:
        m = r.manifest
        assert m is not None
        await self.io(r.presize)
        if r.state != "downloading":
            await self._set(r, "downloading")
        self._bucket = TokenBucket(float(self.cfg.max_rate) if self.cfg.max_rate else None,
                                   m.chunk_size)
        window = self.cfg.chunks_in_flight
        timeout = float(self.cfg.chunk_timeout)
        while r.have.count() < r.have.total:
            self._wake.clear()  # a chunk arriving from here on wakes the wait below
            now = time.monotonic()
            for i, deadline in list(self._inflight.items()):
                if deadline <= now:
                    del self._inflight[i]
                    self.counts["chunk_timeouts"] += 1
            want: list[int] = []
            pause = 1.0
            room = window - len(self._inflight)
            if room > 0 and self._online.is_set():
                for i in r.have.missing():
                    if len(want) >= min(room, ot.MAX_REQUEST_CHUNKS):
                        break
                    if i in self._inflight:
                        continue
                    n = self._chunk_len(m, i)
                    if not self._bucket.take(n):
                        pause = min(pause, self._bucket.wait_for(n))
                        break
                    want.append(i)
            if want:
                body = ot.Request(r.release, tuple(want)).body()
                if self.svc.reply(dl.OTA, None, body):
                    self.counts["requests"] += 1
                    self.counts["chunks_requested"] += len(want)
                    for i in want:
                        self._inflight[i] = now + timeout
                else:
                    self._online.clear()  # not connected: on_connect wakes us
                    self._bucket.tokens += sum(self._chunk_len(m, i) for i in want)
            if self._inflight:
                pause = min(pause, max(0.01, min(self._inflight.values()) - now))
            if want and len(self._inflight) < window and self._online.is_set():
                continue  # room left and tokens may be there: go round once more
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
        self._inflight.clear()
        await self._after_download(r)

    async def _chunk(self, c: ot.Chunk) -> None:
        r = self.cur
        if r is None or c.release != r.release or r.state != "downloading":
            self.counts["chunks_ignored"] += 1
            return
        m = r.manifest
        assert m is not None
        self.counts["chunks_received"] += 1
        self.net_bytes += len(c.data)
        if c.index in r.have:
            self.counts["chunks_duplicate"] += 1
            self._inflight.pop(c.index, None)
            return
        try:
            await self.io(check_chunk, m, c.index, c.data)
        except Refusal as exc:
            if self.cur is r and r.state == "downloading":
                if self._task is not None:
                    self._task.cancel()
                await self._refuse(r, exc, discard=True)
            return
        if self.cur is not r or r.state != "downloading":
            return
        await self.io(r.write_chunk, c.index, c.data, self.net_bytes)
        self._inflight.pop(c.index, None)
        self._wake.set()
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self._send_state(r)

    # ------------------------------------------------------------------ verify + window
    async def _after_download(self, r: tr.ReleaseDir) -> None:
        m = r.manifest
        assert m is not None
        if r.state != "waiting_window":
            await self._set(r, "verifying")
        try:  # again after a restart too: the payload sat on disk meanwhile
            await self.io(verify_payload, r.payload, m)
        except Refusal as exc:
            await self._refuse(r, exc, discard=True)
            return
        cron = r.doc.get("window") or self.cfg.window
        while cron:
            now = _dt.datetime.now(_dt.UTC)
            try:
                is_open, nxt = install_window_open(str(cron), now)
            except ValueError as exc:
                await self._refuse(r, Refusal("bad_window", f"window {cron!r}: {exc}"))
                return
            if is_open:
                break
            at_ms = int(nxt.timestamp() * 1000)
            if r.state != "waiting_window" or r.doc.get("install_at_ms") != at_ms:
                await self._set(r, "waiting_window", detail=f"install at {nxt.isoformat()} "
                                f"(window {cron})", install_at_ms=at_ms)
            # sleep on the loop (no scheduler thread); wake at most every minute so a wall
            # clock step (NTP) is noticed
            await asyncio.sleep(min(60.0, max(0.05, (nxt - now).total_seconds())))
        await self._install(r)

    # ------------------------------------------------------------------ install
    async def _install(self, r: tr.ReleaseDir, again: bool = False) -> None:
        m = r.manifest
        assert m is not None
        await self._set(r, "installing", detail="resumed after a restart" if again else None)
        try:
            if m.kind == "software":
                await self._install_software(r, m)
            elif m.kind == "config":
                await self._install_config(r, m)
            else:
                await self._install_firmware(r, m)
        except Refusal as exc:
            if exc.reason in ("install_failed", "firmware_failed", "agent_error"):
                self.counts[f"failed_{exc.reason}"] += 1
                await self._set(r, "failed", reason=exc.reason, detail=exc.detail)
            else:
                await self._refuse(r, exc)

    async def _install_software(self, r: tr.ReleaseDir, m: Manifest) -> None:
        assert self.slots is not None
        boot = await self.io(launcher.read_boot, self.slots)
        trial = boot.get("trial") or {}
        result = boot.get("last_result") or {}
        if running_version() == m.version or result.get("release") == m.release_id:
            # restarted after the switch: this IS the trial (or it is over): just watch it
            await self.io(r.drop_payload)
            await self._set(r, "trial")
            await self._watch_trial(r)
            return
        if trial.get("release") != m.release_id or trial.get("failed"):
            deps = os.environ.get(ENV_DEPS_FROM)
            await asyncio.to_thread(
                install_software, self.slots, r.payload, m, config=self.host.config_file,
                deps_from=Path(deps) if deps else None)
        await self.io(r.drop_payload)
        await self._set(r, "trial", detail=f"restarting into {m.version}")
        log.warning("OTA %s installed into slot %s: exiting so the launcher starts its trial",
                    m.release_id, m.version)
        if not self.host.request_exit(f"trial of {m.version}"):
            log.error("this daemon cannot restart itself; restart the service to start the "
                      "trial of %s", m.version)
        await self._watch_trial(r)

    async def _watch_trial(self, r: tr.ReleaseDir) -> None:
        """Software: boot.json's last_result decides; config: the commit-confirmed outcome."""
        m = r.manifest
        assert m is not None
        if m.kind == "config":
            await self._config_settled(r)
            return
        if self.slots is None:
            return
        while True:
            boot = await self.io(launcher.read_boot, self.slots)
            res = boot.get("last_result") or {}
            if res.get("release") == m.release_id and res.get("state") in _DONE:
                await self._set(r, str(res["state"]), reason=None if res["state"] ==
                                "committed" else "health_gate", detail=res.get("reason") or None)
                return
            trial = boot.get("trial")
            if (not trial or trial.get("release") != m.release_id) and (
                boot.get("committed") == m.version
            ):
                await self._set(r, "committed")
                return
            await asyncio.sleep(TRIAL_POLL_S)

    # config ---------------------------------------------------------------------------------
    @staticmethod
    def config_version(m: Manifest) -> str:
        """The commit-confirmed version tag of a config release (distinct from pushed ones)."""
        return f"ota:{m.release_id}"

    async def _install_config(self, r: tr.ReleaseDir, m: Manifest) -> None:
        assert self.rc is not None
        tx = self.rc.tx
        v = self.config_version(m)
        if tx is not None:  # resumed after a restart: the transaction knows how far it got
            p = tx.pending()
            if p is not None and p.version == v:
                await self._set(r, "trial", detail="waiting for the cloud's confirmation")
                return
            last = tx.last() or {}
            if tx.committed_version() == v or last.get("version") == v:
                await self._set(r, "trial")
                await self._config_settled(r)
                return
        bundle: Bundle = await self.io(bundle_from_release, r.payload, m)
        outcome, messages = await self.rc.apply_bundle(bundle, self.config_version(m),
                                                       float(self.cfg.confirm_within))
        if outcome == "refused":
            if messages and messages[0].startswith("install failed"):  # e.g. a pushed config
                raise Refusal("install_failed", "; ".join(messages))  # awaits confirmation
            self.counts["refused_check_failed"] += 1
            await self._set(r, "refused", reason="check_failed", detail="; ".join(messages[:10]))
            return
        await self.io(self._mark_accepted, m)
        await self.io(r.drop_payload)
        if outcome == "reverted":
            await self._set(r, "rolled_back", reason="apply_failed", detail="; ".join(messages))
            return
        await self._set(r, "trial", detail=f"applied; reverted unless the cloud confirms within "
                        f"{float(self.cfg.confirm_within):g} s")
        await self._config_finish(r)

    def _config_outcome(self, version: str | None, outcome: str, reason: str) -> None:
        """RemoteConfig's final outcome of a commit-confirmed config (confirmed / reverted)."""
        r = self.cur
        if r is None or r.manifest is None or version != self.config_version(r.manifest):
            return
        self._config_results[version] = (outcome, reason)
        if r.state == "trial":  # else _install_config finishes it once it reported `trial`
            task = asyncio.get_running_loop().create_task(self._config_finish(r))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    async def _config_finish(self, r: tr.ReleaseDir) -> None:
        assert r.manifest is not None
        got = self._config_results.pop(self.config_version(r.manifest), None)
        if got is None:
            return
        outcome, reason = got
        if outcome == "confirmed":
            await self._set(r, "committed", detail="confirmed by the cloud")
        else:
            await self._set(r, "rolled_back", reason="not_confirmed", detail=reason or None)

    async def _config_settled(self, r: tr.ReleaseDir) -> None:
        """After a restart: what happened to the commit-confirmed config meanwhile."""
        assert self.rc is not None and r.manifest is not None
        tx = self.rc.tx
        if tx is None:
            return
        v = self.config_version(r.manifest)
        p = tx.pending()
        if p is not None and p.version == v:
            return  # still pending: RemoteConfig re-armed its timer; the outcome listener ends it
        if tx.committed_version() == v:
            await self._set(r, "committed")
            return
        last = tx.last() or {}
        if last.get("version") == v and last.get("outcome") == "confirmed":
            await self._set(r, "committed")
        elif last.get("version") == v:
            await self._set(r, "rolled_back", reason="not_confirmed",
                            detail=str(last.get("reason") or "") or None)

    # firmware -------------------------------------------------------------------------------
    def _firmware_image(self, payload: Path, m: Manifest) -> FirmwareImage:
        verify_payload(payload, m)
        fw = dict(m.firmware or {})
        want = str(fw.get("image") or "")
        if not want and len(m.files) == 1:
            want = m.files[0].path
        with tarfile.open(payload, "r:") as tar:
            for member in tar:
                if member.isfile() and member.name == want:
                    f = tar.extractfile(member)
                    assert f is not None
                    return FirmwareImage(m.name, m.version, f.read())
        raise Refusal("bad_manifest", f"{m.release_id}: firmware image {want!r} not in the payload")

    async def _install_firmware(self, r: tr.ReleaseDir, m: Manifest) -> None:
        image = await self.io(self._firmware_image, r.payload, m)
        devices = [str(d) for d in (m.firmware or {}).get("devices") or []]
        done = 0
        for dev in devices:
            try:
                await self.host.update_firmware(dev, image, _progress_logger(m.release_id, dev))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise Refusal("firmware_failed", f"device {dev}: {type(exc).__name__}: "
                              f"{exc} ({done}/{len(devices)} devices updated)") from None
            done += 1
        # marked only now: a failed update can be retried with the same release (re-sending an
        # image a device already has is harmless), a replayed older one is still refused
        await self.io(self._mark_accepted, m)
        await self.io(r.drop_payload)
        await self._set(r, "committed", detail=f"{done} device(s) updated")

    def _mark_accepted(self, m: Manifest) -> None:
        """Replay mark + installed version of a config/firmware release (worker thread)."""
        acc = tr.read_accepted(self.root)
        acc["serials"][m.kind] = max(int(acc["serials"].get(m.kind) or 0), m.serial)
        acc["versions"][f"{m.kind}/{m.name}"] = m.version
        tr.write_accepted(self.root, acc)


def _progress_logger(release: str, dev: str) -> Callable[[int, int], None]:
    last = [0.0]

    def progress(sent: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or sent == total:
            last[0] = now
            log.info("firmware %s -> %s: %d/%d bytes", release, dev, sent, total)

    return progress
