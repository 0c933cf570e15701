"""The gateway's downlink service: authenticated cloud -> gateway messages, dispatched by kind.

``DownlinkService`` rides on the uplink's mTLS session (it subscribes ``gw/{id}/down/#`` through
``Uplink.set_downlink_handler``), and for every message:

1. opens it with the downlink key (``edgegw.protocol.downlink``; derived from the gateway's key
   and the cloud ingest key, never sent): forged, tampered, wrong-gateway, wrong-kind and
   expired messages are refused and counted by reason (``refused``);
2. refuses replays: the sequence must be new and above ``highest - window``; the accepted
   sequence is committed to ``devmgmt.db`` BEFORE the handler runs, so a replay is refused
   after a restart too (a crash right after the commit loses that one message: the cloud
   re-sends commands until it has a result and re-sends shadow/config on reconnect);
3. hands the ``Message`` to the handler registered for its kind (one line per feature:
   ``service.register("ota", handler)``); a kind without a handler is counted ``no_handler``.

Handlers answer with ``await service.reply(kind, msg_id, body)``: a message sealed with the
gateway's UP key on ``gw/{id}/up/<kind>``. Messages are processed in arrival order by one task;
handlers run as their own tasks (a slow command never delays the next message).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edgegw.device.state import DevState
from edgegw.protocol import downlink as dl
from edgegw.protocol import topics
from edgegw.protocol.identity import Identity

log = logging.getLogger("edgegw.downlink")

Handler = Callable[[dl.Message], Awaitable[None]]
T = TypeVar("T")
REPLY_TTL_MS = 10 * 60 * 1000


def message_codecs(identity_dir: Path, gateway_id: str) -> tuple[dl.MessageCodec, dl.MessageCodec]:
    """(downlink opener, uplink-reply sealer) for an enrolled identity dir."""
    ident = Identity.load(identity_dir)
    own, peer, key_id = ident.private_key(), ident.ingest_public_key(), ident.key_id
    down = dl.MessageCodec(dl.derive_message_key(own, peer, key_id, gateway_id, dl.DOWN),
                           key_id, gateway_id, dl.DOWN)
    up = dl.MessageCodec(dl.derive_message_key(own, peer, key_id, gateway_id, dl.UP),
                         key_id, gateway_id, dl.UP)
    return down, up


class DownlinkService:
    """start()/stop()/stats(); ``register(kind, handler)``; ``attach(uplink)`` before start."""

    def __init__(self, gateway_id: str, identity_dir: Path, state_dir: Path) -> None:
        self.gateway_id = topics.check_gateway_id(gateway_id)
        self.down, self.up = message_codecs(Path(identity_dir), gateway_id)
        self.state_path = Path(state_dir) / "devmgmt.db"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devmgmt")
        self.state: DevState | None = None
        self._window = dl.ReplayWindow()
        self._handlers: dict[str, Handler] = {}
        self._connect_hooks: list[Callable[[], Awaitable[None]]] = []
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=1000)
        self._uplink: Any = None
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._up_seq = 0
        self._connect_pending = False
        self.counts: dict[str, int] = defaultdict(int)
        self.refused: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ wiring
    def register(self, kind: str, handler: Handler) -> None:
        """Route messages of ``kind`` (``gw/{id}/down/<kind>``) to ``handler``."""
        dl.check_kind(kind)
        if kind in self._handlers:
            raise ValueError(f"a handler for downlink kind {kind!r} is already registered")
        self._handlers[kind] = handler

    def on_connect(self, hook: Callable[[], Awaitable[None]], *,
                   run_now_if_connected: bool = False) -> None:
        """``await hook()`` after every (re)connection (re-report state, say hello); with
        ``run_now_if_connected`` also once now when the session is already up."""
        self._connect_hooks.append(hook)
        if run_now_if_connected and self._uplink is not None and self._uplink.connected:
            self._spawn(hook(), "connect hook")

    def attach(self, uplink: Any) -> None:
        self._uplink = uplink
        uplink.set_downlink_handler(self._received)
        uplink.add_connect_listener(self._connected)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the state thread (``fn`` gets nothing else; use the state)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.state = await self.db(DevState, self.state_path)
        highest, seen = await self.db(self.state.load_replay)
        self._window = dl.ReplayWindow(highest, seen)
        self._up_seq = dl.next_seq(0)
        self._worker = asyncio.create_task(self._work(), name="downlink")
        self.run_connect_hooks_if_connected()

    def run_connect_hooks_if_connected(self) -> None:
        """After every feature started: say hello if the session came up before."""
        if self._connect_pending:
            self._connect_pending = False
            self._connected()

    async def stop(self) -> None:
        tasks = [t for t in [self._worker, *self._tasks] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.state is not None:
            await self.db(self.state.close)
        self._executor.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "refused": dict(self.refused), "queue": self._queue.qsize(),
                "handlers": len(self._handlers), "highest_seq": self._window.highest}

    # ------------------------------------------------------------------ receive
    def _received(self, topic: str, payload: bytes) -> None:
        """Uplink callback (event loop): queue, never block, never raise."""
        self.counts["received"] += 1
        try:
            self._queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self._refuse("overload", f"downlink queue full; dropped a message on {topic}")

    def _connected(self) -> None:
        if self.state is None:  # connected before start(): start() runs the hooks
            self._connect_pending = True
            return
        for hook in self._connect_hooks:
            self._spawn(hook(), "connect hook")

    def _refuse(self, reason: str, why: str) -> None:
        self.refused[reason] += 1
        self.counts["refused_total"] += 1
        if reason in ("auth", "replay", "direction", "unknown_key"):
            log.warning("downlink message refused (%s): %s", reason, why)
        else:
            log.info("downlink message refused (%s): %s", reason, why)

    async def _work(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            try:
                await self._handle(topic, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("downlink message on %s failed", topic)

    async def _handle(self, topic: str, payload: bytes) -> None:
        kind = topics.kind_of(topic)
        if kind is None or topic != topics.down(self.gateway_id, kind):
            self._refuse("malformed", f"unexpected topic {topic}")
            return
        try:
            msg = self.down.open(kind, payload)
        except dl.MessageError as exc:
            self._refuse(exc.reason, str(exc))
            return
        why = self._window.check(msg.seq)
        if why is not None:
            self._refuse(why, f"{kind} message {msg.msg_id} seq {msg.seq} was already seen or "
                              f"is older than the window (highest {self._window.highest})")
            return
        self._window.accept(msg.seq)
        assert self.state is not None
        await self.db(self.state.record_accepted, msg.seq, self._window.highest,
                      self._window.highest - self._window.window)
        self.counts["accepted"] += 1
        handler = self._handlers.get(kind)
        if handler is None:
            self._refuse("no_handler", f"no handler for downlink kind {kind!r}")
            return
        log.debug("downlink %s %s seq %d", kind, msg.msg_id, msg.seq)
        self._spawn(handler(msg), f"{kind} handler")

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counts["handler_errors"] += 1
                log.exception("downlink %s failed", what)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ send
    def reply(self, kind: str, msg_id: str | None, body: dict[str, Any],
              ttl_ms: int = REPLY_TTL_MS) -> bool:
        """Seal ``body`` with the UP key and publish it on ``gw/{id}/up/<kind>``.

        Returns False when the uplink is not connected (the caller decides whether the cloud
        will ask again or whether to re-send on the next connection)."""
        if self._uplink is None:
            return False
        self._up_seq = dl.next_seq(self._up_seq)
        now = dl.now_ms()
        blob = self.up.seal(kind, msg_id or secrets.token_hex(8), self._up_seq, body,
                            issued_ms=now, expires_ms=now + ttl_ms)
        ok = bool(self._uplink.publish_message(topics.up(self.gateway_id, kind), blob))
        self.counts["replies_sent" if ok else "replies_unsent"] += 1
        return ok
