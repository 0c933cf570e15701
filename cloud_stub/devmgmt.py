"""Cloud-side device management: commands, shadows, remote configs, fleet info.

``DeviceManager(paths, broker_url)`` is the Python API the CLI uses (and ``serve`` runs one for
the lifetime of the cloud). It owns a ``Downlink`` and reacts to what gateways say:

- **Commands.** ``command(gw, device, action, args, timeout)`` stores the command (id, deadline)
  in ``DATA/devices.db`` and sends it; until a final result or the deadline it is re-sent every
  ``resend_every`` seconds and whenever the gateway comes back online (same id: the gateway
  executes an id at most once and answers a repeat with the remembered result). The first
  final result is THE result (``DevStore.command_finish``); a command still pending
  ``grace_s`` after its deadline is finished ``timed_out`` (the gateway never executes a
  command after its deadline, so a late reply cannot contradict it: it is counted as late).
- **Shadow.** ``shadow_set`` bumps the desired version and sends the document; reported
  documents from gateways are stored; a gateway's ``sync`` (sent on every connection) gets
  every desired document newer than the one it has. Conflict rule: the newest desired version
  wins; the gateway refuses a version not newer than its own (``stale``), and ``shadow set
  --expect-version N`` refuses to overwrite a desired document someone else changed.
- **Config.** ``config_push`` stores the version and sends the bundle; an ``applied`` answer is
  confirmed at once (that the answer arrived proves the gateway reaches the cloud with the new
  config); ``refused`` (with the checker's messages), ``confirmed`` and ``reverted`` are
  recorded in the history.
- **Fleet.** ``info`` messages and ``gw/+/up/status`` update the registry's fleet table (labels,
  versions, devices, online). Several managers (``serve`` + a CLI) may run at once: every
  reaction is idempotent.
- **OTA** (only with ``ota=True``: the one manager ``serve`` runs): the rollout engine
  (``edgegw_cloud.rollout``) ticks once a second and on events (a ``state`` report, a gateway
  connecting: its status or its ``info``), and the chunk server (``edgegw_cloud.chunkserver``)
  answers ``request`` messages on its own worker thread.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgegw.protocol import downlink as dl
from edgegw.protocol import ota_transfer as ot
from edgegw.protocol.bundle import Bundle
from edgegw_cloud.chunkserver import ChunkServer
from edgegw_cloud.devstore import DevStore
from edgegw_cloud.downlink import Downlink, DownlinkError
from edgegw_cloud.pki_setup import CloudPaths
from edgegw_cloud.registry import Registry, RegistryError
from edgegw_cloud.rollout import RolloutEngine, RolloutStore

log = logging.getLogger("edgegw.cloud.devmgmt")

SERVE_FILE = "serve.json"


def broker_url_of(paths: CloudPaths) -> str:
    """The broker URL ``serve`` recorded in the data dir (CLI default for ``--broker``)."""
    try:
        return str(json.loads((paths.data_dir / SERVE_FILE).read_text())["broker_url"])
    except (FileNotFoundError, KeyError, ValueError):
        raise DownlinkError(f"{paths.data_dir}: no running `edgegw-cloud serve` recorded its "
                            "broker; pass --broker mqtts://HOST:PORT") from None


def record_broker_url(paths: CloudPaths, url: str) -> None:
    (paths.data_dir / SERVE_FILE).write_text(json.dumps({"broker_url": url}))


class DeviceManager:
    def __init__(self, paths: CloudPaths, broker_url: str, *, resend_every: float = 2.0,
                 grace_s: float = 2.0, tag: str = "dm", ota: bool = False,
                 ota_tick_s: float = 1.0, reoffer_s: float = 30.0) -> None:
        self.paths = paths
        self.down = Downlink(paths, broker_url, client_tag=tag, status=True)
        self.store = DevStore(paths.data_dir / "devices.db")  # own connection, under _lock
        # sends never happen on paho's thread (a PUBACK wait there would wait for itself)
        # nor under _lock (paho's thread takes it to record replies): they are queued
        self._outbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._lock = threading.RLock()  # the store connection is shared by paho + callers
        self._cond = threading.Condition(self._lock)
        self.resend_every = resend_every
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_send: dict[str, float] = {}
        self._replies: dict[str, dict[str, Any]] = {}  # msg id -> latest config/get reply
        self.counts: dict[str, int] = defaultdict(int)
        self.down.listen(dl.COMMAND, self._on_command)
        self.down.listen(dl.SHADOW, self._on_shadow)
        self.down.listen(dl.CONFIG, self._on_config)
        self.down.listen(dl.INFO, self._on_info)
        self.down.listen_status(self._on_status)
        # OTA: rollouts + chunk server, in the one manager that owns them (serve)
        self._online: dict[str, bool] = {}  # from the gateways' status messages
        self._online_since: dict[str, int] = {}  # wall ms of the last "online"
        self.ota_tick_s = ota_tick_s
        self._next_ota_tick = 0.0
        self.rollouts: RolloutStore | None = None
        self.engine: RolloutEngine | None = None
        self.chunks: ChunkServer | None = None
        if ota:
            releases = paths.data_dir / "ota" / "releases"
            self.rollouts = RolloutStore(paths.data_dir)
            self.engine = RolloutEngine(self.rollouts, self._send_ota,
                                        functools.partial(_offer_of, releases),
                                        online=self._online.get,
                                        labels_of=self._labels_of, reoffer_s=reoffer_s)
            self.chunks = ChunkServer(releases, self._send_ota, self.rollouts.may_download)
            self.down.listen(dl.OTA, self._on_ota)

    def _labels_of(self, gw: str) -> dict[str, str]:
        """The gateway's registry labels, sent in its offers (label-targeted releases)."""
        with Registry(self.paths.registry_db) as reg:
            return reg.labels(gw)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> DeviceManager:
        if self.chunks is not None:
            self.chunks.start()
        self.down.start(timeout)
        self._thread = threading.Thread(target=self._loop, name="devmgmt", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.chunks is not None:
            self.chunks.stop()
        self.down.stop()
        with self._lock:
            self.store.close()
        if self.rollouts is not None:
            self.rollouts.close()

    def __enter__(self) -> DeviceManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.counts, "downlink": dict(self.down.counts)}
        if self.engine is not None and self.chunks is not None:
            out["ota"] = {**self.engine.counts, **self.chunks.counts,
                          "chunk_bytes_sent": self.chunks.bytes_sent}
        return out

    def _later(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the housekeeping thread (from paho callbacks)."""
        self._outbox.put(fn)

    def _send(self, gw: str, kind: str, body: dict[str, Any], **kw: Any) -> str | None:
        try:
            return self.down.send(gw, kind, body, **kw)
        except DownlinkError as exc:
            log.info("not sent to %s (%s): %s", gw, kind, exc)
            return None

    # ------------------------------------------------------------------ commands
    def command_send(self, gw: str, device: str, action: str, args: dict[str, Any] | None = None,
                     *, timeout: float = 10.0, cmd_id: str | None = None) -> str:
        """Create and send a command; returns its id (``command_wait`` for the result)."""
        with self._lock:
            with Registry(self.paths.registry_db) as reg:
                row = reg.gateway(gw)
            if row is None:
                raise RegistryError(f"unknown gateway {gw!r} (see `edgegw-cloud gateways`)")
            cid = cmd_id or secrets.token_hex(8)
            deadline = dl.now_ms() + int(timeout * 1000)
            self.store.command_create(cid, gw, device, action, args or {}, deadline)
        self._send_command(cid)
        return cid

    def _send_command(self, cid: str) -> None:
        with self._lock:
            c = self.store.command(cid)
        if c is None or c["status"] != "pending":
            return
        self._last_send[cid] = time.monotonic()
        # counted before the publish: the gateway's answer can come back (and end a
        # command_wait) before the send returns; a send that fails is taken back
        with self._lock:
            self.store.command_sent(cid)
        if self._send(c["gateway"], dl.COMMAND, {"device": c["device"], "action": c["action"],
                                                 "args": c["args"]},
                      msg_id=cid, expires_ms=c["deadline_ms"]) is None:
            with self._lock:
                self.store.command_sent(cid, -1)

    def command_wait(self, cid: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the command has its final result (at most deadline + grace)."""
        with self._cond:
            c = self.store.command(cid)
            assert c is not None, cid
            limit = (c["deadline_ms"] / 1000 - time.time()) + self.grace_s + 1.0
            end = time.monotonic() + (timeout if timeout is not None else limit)
            while True:
                c = self.store.command(cid)
                assert c is not None
                if c["status"] != "pending" or time.monotonic() >= end:
                    return c
                self._cond.wait(0.2)

    def command(self, gw: str, device: str, action: str, args: dict[str, Any] | None = None,
                *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a command and return its final result (status, value, reason, ...)."""
        return self.command_wait(self.command_send(gw, device, action, args, timeout=timeout))

    def _on_command(self, gw: str, msg: dl.Message) -> None:
        body = msg.body
        status = body.get("status")
        with self._cond:
            c = self.store.command(msg.msg_id)
            if c is None or c["gateway"] != gw:
                self.counts["command_replies_unknown"] += 1
                return
            if status not in ("ok", "refused", "timed_out", "unavailable"):
                self.counts["command_replies_malformed"] += 1
                return
            first = self.store.command_finish(msg.msg_id, status, body.get("value"),
                                              body.get("reason"))
            self.counts["command_results" if first else "command_results_repeated"] += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ shadow
    def shadow_get(self, gw: str, device: str) -> dict[str, Any]:
        with self._lock:
            return self.store.shadow(gw, device)

    def shadow_set(self, gw: str, device: str, changes: dict[str, Any],
                   expected_version: int | None = None) -> dict[str, Any]:
        with self._lock:
            doc = self.store.set_desired(gw, device, changes, expected_version)
        self._send_desired(gw, doc)
        return doc

    def _send_desired(self, gw: str, doc: dict[str, Any]) -> None:
        self._send(gw, dl.SHADOW, {"op": "desired", "device": doc["device"],
                                   "desired": doc["desired"],
                                   "version": doc["desired_version"]}, ttl_s=300)

    def _on_shadow(self, gw: str, msg: dl.Message) -> None:
        b = msg.body
        op = b.get("op")
        with self._cond:
            if op == "reported" and isinstance(b.get("reported"), dict):
                self.store.set_reported(gw, str(b.get("device")), b["reported"],
                                        int(b.get("reported_version") or 0))
                self.counts["shadow_reports"] += 1
            elif op == "sync" and isinstance(b.get("desired_versions"), dict):
                have = b["desired_versions"]
                for doc in self.store.shadows(gw):
                    if doc["desired_version"] > int(have.get(doc["device"], 0)):
                        self._later(functools.partial(self._send_desired, gw, doc))
            elif op == "desired_refused" and b.get("reason") == "stale":
                doc = self.store.shadow(gw, str(b.get("device")))
                if doc["desired_version"] > int(b.get("current_version") or 0):
                    self._later(lambda: self._send_desired(gw, doc))
            elif op == "desired_applied":
                self.counts["shadow_applied"] += 1
                if b.get("errors"):
                    log.info("shadow %s/%s version %s: %s", gw, b.get("device"),
                             b.get("version"), b["errors"])
            self._cond.notify_all()

    # ------------------------------------------------------------------ config
    def config_push(self, gw: str, bundle: dict[str, Any], *, confirm_within: float = 60.0
                    ) -> int:
        """Store and send a bundle (``Bundle.to_wire()``); returns its version."""
        text = json.dumps(bundle, sort_keys=True)
        with self._lock:
            version = self.store.config_push(gw, text)
        self._send(gw, dl.CONFIG, {"op": "push", "version": version, "bundle": bundle,
                                   "confirm_within_s": confirm_within}, ttl_s=120)
        return version

    def config_wait(self, gw: str, version: int, timeout: float,
                    until: tuple[str, ...] = ("refused", "confirmed", "reverted")
                    ) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                c = self.store.config(gw, version)
                assert c is not None
                if c["status"] in until or time.monotonic() >= end:
                    return c
                self._cond.wait(0.2)

    def config_get(self, gw: str, timeout: float = 10.0) -> dict[str, Any] | None:
        """Ask the gateway for its running config; None if it does not answer in time."""
        mid = self._send(gw, dl.CONFIG, {"op": "get"}, ttl_s=timeout)
        if mid is None:
            return None
        end = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies and time.monotonic() < end:
                self._cond.wait(0.2)
            return self._replies.pop(mid, None)

    def _resend_config(self, gw: str) -> None:
        """A push still unanswered (the gateway was offline): send it again (idempotent)."""
        with self._lock:
            hist = self.store.config_history(gw, limit=1)
        if hist and hist[0]["status"] == "pushed":
            c = hist[0]
            self._send(gw, dl.CONFIG, {"op": "push", "version": c["version"],
                                       "bundle": json.loads(c["yaml"]),
                                       "confirm_within_s": c.get("confirm_within_s") or 60.0},
                       ttl_s=120)

    def config_history(self, gw: str) -> list[dict[str, Any]]:
        with self._lock:
            return self.store.config_history(gw)

    def _on_config(self, gw: str, msg: dl.Message) -> None:
        b = msg.body
        op = b.get("op")
        version = b.get("version")
        with self._cond:
            if op == "current":
                self._replies[msg.msg_id] = b
            elif op == "refused":
                self.store.config_status(gw, version, "refused", list(b.get("messages") or []))
            elif op == "applied":
                report = b.get("report")
                self.store.config_status(gw, version, "applied",
                                         [f"applied: {json.dumps(report, sort_keys=True)}"]
                                         if report else None)
                # the gateway reached us with the new config: confirm it
                self._later(lambda: self._send(gw, dl.CONFIG, {"op": "confirm",
                                                               "version": version}, ttl_s=60))
            elif op == "confirmed":
                self.store.config_status(gw, version, "confirmed")
            elif op == "reverted":
                self.store.config_status(gw, version, "reverted", [str(b.get("reason"))])
            self.counts[f"config_{op}"] += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ fleet
    def _on_info(self, gw: str, msg: dl.Message) -> None:
        with self._cond:
            try:
                with Registry(self.paths.registry_db) as reg:
                    reg.record_info(gw, msg.body)
            except RegistryError as exc:
                log.warning("info from %s not recorded: %s", gw, exc)
                return
            if self.engine is not None:  # its handlers are up: the connection it came on
                since = self._online_since.get(gw, _wall_ms())
                self._later(functools.partial(self.engine.on_connect, gw, since))
            last = msg.body.get("config_last")
            if isinstance(last, dict) and last.get("outcome") == "reverted":
                self.store.config_status(gw, last.get("version"), "reverted",
                                         [str(last.get("reason"))])
            self.counts["info"] += 1
            self._cond.notify_all()

    def _on_status(self, gw: str, online: bool) -> None:
        self._online[gw] = online
        if online:
            self._online_since[gw] = _wall_ms()
        try:
            with Registry(self.paths.registry_db) as reg:
                reg.record_status(gw, online)
        except RegistryError:
            return
        if online:  # clean sessions: what was sent while it was away is gone; send again
            with self._lock:
                pending = self.store.commands(gw, "pending")
            for c in pending:
                self._later(functools.partial(self._send_command, c["id"]))
            self._later(functools.partial(self._resend_config, gw))
            if self.engine is not None:
                self._later(functools.partial(self.engine.on_connect, gw,
                                              self._online_since[gw]))

    # ------------------------------------------------------------------ OTA
    def _send_ota(self, gw: str, body: dict[str, Any]) -> bool:
        return self._send(gw, dl.OTA, body) is not None

    def _on_ota(self, gw: str, msg: dl.Message) -> None:
        """paho's thread: requests go to the chunk worker, states to the housekeeping thread."""
        try:
            up = ot.parse_up(msg.body)
        except ot.TransferError as exc:
            self.counts["ota_bad_message"] += 1
            log.warning("ota message from %s refused: %s", gw, exc)
            return
        if isinstance(up, ot.Request):
            assert self.chunks is not None
            self.chunks.submit(gw, up)
        elif self.engine is not None:
            self.counts["ota_states"] += 1
            self._later(functools.partial(self.engine.on_state, gw, up))

    # ------------------------------------------------------------------ housekeeping
    def _loop(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                fn = self._outbox.get(timeout=0.1)
            except queue.Empty:
                fn = None
            try:
                if fn is not None:
                    fn()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + 0.25
                    self._tick()
                if self.engine is not None and time.monotonic() >= self._next_ota_tick:
                    self._next_ota_tick = time.monotonic() + self.ota_tick_s
                    self.engine.tick()
            except Exception:
                log.exception("device manager housekeeping failed")

    def _tick(self) -> None:
        now_ms = dl.now_ms()
        with self._lock:
            pending = self.store.commands(status="pending", limit=1000)
        for c in pending:
            if now_ms > c["deadline_ms"] + self.grace_s * 1000:
                with self._cond:
                    if self.store.command_finish(c["id"], "timed_out", None,
                                                 "no result from the gateway before the "
                                                 "deadline"):
                        self.counts["command_timeouts"] += 1
                    self._cond.notify_all()
            elif now_ms < c["deadline_ms"] and (
                time.monotonic() - self._last_send.get(c["id"], 0.0) >= self.resend_every
            ):
                self._send_command(c["id"])


def _wall_ms() -> int:
    return int(time.time() * 1000)  # the rollout engine's clock (offer_ms)


def _offer_of(releases_dir: Path, release_id: str) -> tuple[bytes, bytes]:
    """(manifest bytes, signature) of a stored release, read now (offers carry them)."""
    d = releases_dir / release_id
    return (d / "manifest.json").read_bytes(), (d / "manifest.sig").read_bytes()


def load_bundle(path: Path) -> dict[str, Any]:
    """A config file or folder in the wire form of ``config_push``."""
    return Bundle.from_path(path).to_wire()
