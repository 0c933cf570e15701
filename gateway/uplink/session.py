"""The MQTT uplink: moves sealed batches from the outbox to the cloud ingest, end-to-end acked.

Invariants (see docs/delivery.md for the whole story):
- The outbox (SQLite) is the only buffer. The uplink holds at most ``window`` batches in flight
  (published, not yet acknowledged by the ingest) and never deletes anything itself: it only
  settles batches through ``outbox_io``.
- A batch is settled DELIVERED only when the ingest's ack for its sequence arrives on
  ``gw/{id}/down/ack`` (the ingest acks after its durable commit). PUBACK only means "the broker
  has it"; a refused PUBACK (reason code >= 0x80, e.g. 0x87 not authorized) settles RETRY and
  holds the batch back with backoff: data is never dropped for a broker refusal.
- An ingest REJECTED ack (authentic but undecodable batch) settles REJECTED (quarantine).
- No ack within ``ack_timeout``: the batch leaves the window for a jittered pause (its slot goes
  to the next batch, so a few batches the cloud never acks cannot jam the window) and is then
  published again, same envelope (same seq). After a reconnect everything still in the outbox
  is sent again. The ingest deduplicates by (gateway, seq), so resending is always safe.
- Poison batches: a timeout counts as an ATTEMPT only when the cloud meanwhile acked a batch
  that was sent after this one (the cloud is up and skipping this batch, e.g. sealed under a
  key it does not know). After ``max_attempts`` counted attempts, or a permanent PUBACK refusal
  of the batch itself (0x95 packet too large, 0x99 payload format invalid), the batch is given
  up: quarantined with a gap record (``Outbox.give_up``). An ingest that is down acks nothing,
  so nothing is ever given up for an outage.
- Stuck delivery: when nothing has been acked for ``stuck_after`` while batches are published,
  one WARNING says so and why it may be (ingest down, gateway unknown to the registry, batches
  sealed under a key the cloud does not know); re-armed by the next ack.
- One paho client per connection (clean start, no broker session): nothing of a dead connection
  leaks into the next one. paho's network loop runs in paho's thread; every callback is handed to
  the event loop with ``call_soon_threadsafe`` and tagged with its connection generation.
- Reconnect (``edgegw.uplink.reconnect``): exponential backoff with full jitter, delay =
  uniform(0, min(max, min * 2**n)); n resets only after a connection stayed up
  ``stable_after`` seconds. After a TCP-level failure (nothing accepted the connection) the
  wait also probes the broker with a bare TCP connect every ``probe_interval`` x U(1, 2) and
  connects after a random spread U(0, ``reconnect_spread``) once a probe succeeds; refusals
  and failures after TCP (TLS, CONNACK, lost connections) stay on the plain backoff.
- ``online`` on connect, last will ``offline`` on ``gw/{id}/up/status``. Not retained: the
  broker refuses retained messages (``retain_available false``, docs/security.md), so nothing
  can park data in it; a watcher subscribes before it needs the transitions.
- Bytes in flight (published, no end-to-end ack yet) stay within ``flow.cwnd`` (the measured
  bandwidth-delay product, see ``flow``); the alert lane comes first and may exceed it by a
  small headroom, so an alert never queues behind more than ~2 round trips of telemetry
  (in the TLS stream, the broker and the ingest).
- TLS: one ``SSLContext`` across connections, rebuilt when the identity files change
  (renewal); each reconnect offers the previous TLS session (``transport.mqtt_client``), so a
  reconnect does not send the certificates again; verification is unchanged (docs/security.md).
- The outbox is scanned (``next_batches``, a trip to the outbox thread) only when it may hold
  a sendable batch the last scan did not return: a ``notify()`` (a batch was stored), a
  held-back batch's pause ended, a settle that may have left its batch (RETRY, REJECTED, a
  failure), a give-up or re-sequencing, a scan cut short by the window or the pipe, a new
  connection; and at least every ``poll_interval`` (1 s) as a backstop. An ack that only
  deletes delivered batches wakes the loop (room in the window) without a scan.
- MQTT v5 topic alias for the batch topic once the broker allows one (saves the topic name in
  every PUBLISH); ``on_delivered`` (optional) hears every seq the cloud acked DELIVERED.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.protocol import topics
from edgegw.protocol.ack import AckStatus, decode_acks
from edgegw.protocol.broker_url import BrokerUrlError, parse_broker_url
from edgegw.protocol.identity import Identity
from edgegw.transport.mqtt_client import Client, TcpConnectError, TlsSessions
from edgegw.uplink.flow import LinkEstimate
from edgegw.uplink.outbox_io import AsyncOutbox
from edgegw.uplink.reconnect import ReconnectPolicy

log = logging.getLogger("edgegw.uplink")

ACK_DELIVERED, ACK_REJECTED = AckStatus.DELIVERED, AckStatus.REJECTED


def _alias_properties() -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    return props


#: the PUBLISH properties of every batch once the alias is set (paho only packs them: one
#: object for all publishes, not a Properties object and its name lookups per batch)
_ALIAS_PROPS = _alias_properties()
#: PUBACK reason codes that refuse the batch itself for good (resending cannot help)
PERMANENT_PUBACK = frozenset({0x95, 0x99})
ALERT_SAMPLES = 256


def _pct(values: list[int], p: float) -> int:
    if not values:
        return 0
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def _key_id(envelope: bytes) -> int:
    """The key id in an envelope header (bytes 4..8), for log messages."""
    return int.from_bytes(envelope[4:8], "big") if len(envelope) >= 8 else -1


class UplinkConfigError(ValueError):
    """The uplink cannot start: bad broker URL, missing or mismatched identity files."""


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    """Explicit certificate / key / CA paths (instead of an identity dir)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_dir(cls, identity_dir: Path) -> TlsIdentity:
        cert, key, ca = Identity.files(identity_dir)
        return cls(cert, key, ca)


@dataclass
class _Flight:
    seq: int
    envelope: bytes
    count: int
    lane: int
    sent_at: float = 0.0  # monotonic time of the last publish
    attempts: int = 0  # counted attempts (persisted in the outbox row)
    mid: int = -1
    sends: int = 0
    broker_has_it: bool = False
    idle: bool = False  # published into an empty pipe (its round trip holds no queueing)
    first_ts_ms: int = 0  # its oldest reading (alert latency: reading -> publish)


@dataclass
class _Counters:
    connect_attempts: int = 0
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    auth_failures: int = 0
    published: int = 0
    resends: int = 0
    resend_timeouts: int = 0
    puback_refused: int = 0
    subscribe_refused: int = 0
    acks_received: int = 0
    acks_malformed: int = 0
    batches_delivered: int = 0
    readings_delivered: int = 0
    batches_rejected: int = 0
    batches_retry: int = 0
    acks_unknown_seq: int = 0
    given_up: int = 0
    stuck_warnings: int = 0
    last_ack_ms: int = 0
    puback_reasons: dict[str, int] = field(default_factory=dict)


def _reason_value(rc: ReasonCode | int) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


class Uplink:
    """One gateway's MQTT v5 session to the cloud. ``await run()`` until cancelled."""

    def __init__(
        self,
        gateway_id: str,
        identity: Path | str | TlsIdentity,
        broker_url: str,
        outbox_io: AsyncOutbox,
        *,
        window: int = 32,
        ack_timeout: float = 10.0,
        keepalive: float = 30,
        backoff_min: float = 0.5,
        backoff_max: float = 10,
        stable_after: float = 20,
        probe_interval: float = 1.0,
        reconnect_spread: float = 1.0,
        poll_interval: float = 1.0,
        max_attempts: int = 10,
        stuck_after: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if window < 1:
            raise UplinkConfigError(f"uplink.window must be >= 1 (got {window})")
        if not 0 < backoff_min <= backoff_max:
            raise UplinkConfigError("uplink.backoff_min must be > 0 and <= uplink.backoff_max")
        self.gateway_id = pki.check_gateway_id(gateway_id)
        self.identity = (
            identity if isinstance(identity, TlsIdentity) else TlsIdentity.from_dir(Path(identity))
        )
        try:
            url = parse_broker_url(broker_url)
        except BrokerUrlError as exc:
            raise UplinkConfigError(f"uplink.broker: {exc} ({exc.hint})") from None
        self.host, self.port = url.host, url.port
        self._check_identity()
        self._io = outbox_io
        self.window = window
        self.ack_timeout = ack_timeout
        self.keepalive = max(5, round(keepalive))
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.poll_interval = poll_interval
        self.max_attempts = max(1, max_attempts)
        self.resequence_at = max(2, self.max_attempts // 2) if self.max_attempts > 2 else 0
        self.stuck_after = stuck_after if stuck_after is not None else max(30.0, 3 * ack_timeout)
        self._newest_acked_sent = -1.0  # sent_at of the newest-sent batch the cloud acked
        self._last_progress = 0.0  # monotonic: last delivered ack, or start of waiting
        self._stuck_warned = False
        self._rng = rng or random.Random()
        self.reconnect = ReconnectPolicy(backoff_min, backoff_max, probe_interval,
                                         reconnect_spread, self._rng)
        #: loop times of the last connect attempt's start and of the last CONNACK accepted
        self.last_attempt_at = 0.0
        self.last_connected_at = 0.0
        self._topic_batch = topics.up_batch(gateway_id)
        self._topic_status = topics.up_status(gateway_id)
        self._topic_ack = topics.down_ack(gateway_id)
        self._topic_down_all = topics.down_subscription(gateway_id)
        self.c = _Counters()
        self.flow = LinkEstimate()
        #: called with the seqs of each ack the cloud sent DELIVERED (series dictionary)
        self.on_delivered: Callable[[list[int]], None] | None = None
        self._alias_max = 0
        self._alias_set = False
        # alerts raised on this connection, last ALERT_SAMPLES: (reading -> first publish ms,
        # bytes ahead of it in the pipe): where an alert's time goes on a saturated link
        self._connected_ms = 0
        self._alert_waits: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=ALERT_SAMPLES)
        # TLS context + session kept across connections (resumption), rebuilt when the identity
        # files change (certificate renewal): keyed by their (path, mtime_ns, size)
        self._tls: TlsSessions | None = None
        self._tls_key: tuple[tuple[str, int, int], ...] = ()
        # per-connection state
        self._gen = 0
        self._client: mqtt.Client | None = None
        self._connected = False
        self._lost: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        #: the outbox may hold a sendable batch the last scan did not return (module doc)
        self._rescan = True
        #: batches just stored, handed over by the batcher (``offer``): sent without a scan
        self._fresh: list[Any] = []
        self._inflight: dict[int, _Flight] = {}
        self._mids: dict[int, int] = {}
        # across connections
        self._cooldown: dict[int, float] = {}  # seq -> monotonic time it may be sent again
        self._settling: set[int] = set()  # settled here, outbox thread not done yet
        self._refusals = 0  # consecutive broker/ingest refusals (drives the hold-back delay)
        self._auth_failing = False
        self._unreachable = False
        self._tcp_failed = False  # nothing accepted TCP on the last attempt: probe while waiting
        self._tasks: set[asyncio.Task[None]] = set()
        # device management (edgegw.device.downlink): other messages on gw/{id}/down/#
        self._downlink: Callable[[str, bytes], None] | None = None
        self._connect_listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ public
    def set_downlink_handler(self, handler: Callable[[str, bytes], None]) -> None:
        """Receive every message on ``gw/{id}/down/#`` except acks (called on the event loop).

        Set before ``run()``: the subscription widens from ``down/ack`` to ``down/#``.
        """
        self._downlink = handler

    def add_connect_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs on the event loop each time a connection is up and subscribed."""
        self._connect_listeners.append(fn)

    def publish_message(self, topic: str, payload: bytes) -> bool:
        """QoS1 publish of a device-management message; False when not connected (the caller
        keeps what it needs to say again: the cloud re-asks, the gateway re-reports)."""
        client = self._client
        if client is None or not self._connected:
            return False
        info = client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def notify(self) -> None:
        """Tell the uplink the outbox has new batches. Whoever stores a batch calls this (the
        batcher after each commit, the re-packer); without it a batch waits for the backstop
        scan (``poll_interval``)."""
        self._rescan = True
        if self._wake is not None:
            self._wake.set()

    def offer(self, batch: Any) -> None:
        """The batcher stored ``batch`` (a ``StoredBatch``; None: something, read the outbox).
        It is sent as it is unless a scan is due anyway (the scan returns it too)."""
        if batch is None or not self._connected or len(self._fresh) >= self.window:
            self.notify()  # offline (the next connection scans) or a backlog: scan
            return
        self._fresh.append(batch)
        if self._wake is not None:
            self._wake.set()

    def _inflight_bytes(self) -> int:
        return sum(len(f.envelope) for f in self._inflight.values())

    def held_seqs(self) -> set[int]:
        """Seqs the uplink holds (in flight, being settled, held back): not to be re-packed."""
        return set(self._inflight) | set(self._cooldown) | self._settling

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, int | float | dict[str, Any]]:
        c = self.c
        out: dict[str, int | float | dict[str, Any]] = {
            "connected": int(self._connected),
            "connect_attempts": c.connect_attempts,
            "connects": c.connects,
            "disconnects": c.disconnects,
            "connect_failures": c.connect_failures,
            "auth_failures": c.auth_failures,
            "published": c.published,
            "resends": c.resends,
            "resend_timeouts": c.resend_timeouts,
            "puback_refused": c.puback_refused,
            "subscribe_refused": c.subscribe_refused,
            "acks_received": c.acks_received,
            "acks_malformed": c.acks_malformed,
            "acks_unknown_seq": c.acks_unknown_seq,
            "batches_delivered": c.batches_delivered,
            "readings_delivered": c.readings_delivered,
            "batches_rejected": c.batches_rejected,
            "batches_retry": c.batches_retry,
            "given_up": c.given_up,
            "stuck_warnings": c.stuck_warnings,
            "inflight": len(self._inflight),
            "held_back": len(self._cooldown),
            "backoff_s": self.reconnect.delay,
            "probes": self.reconnect.probes,
            "probe_hits": self.reconnect.probe_hits,
            "last_ack_ms": c.last_ack_ms,
            "puback_reasons": dict(c.puback_reasons),
        }
        out.update(self.flow.stats(time.monotonic()))
        out["topic_alias"] = int(self._alias_set)
        out["tls_full_handshakes"] = self._tls.full if self._tls is not None else 0
        out["tls_resumed_handshakes"] = self._tls.resumed if self._tls is not None else 0
        out["inflight_bytes"] = self._inflight_bytes()
        waits = [w for w, _ in self._alert_waits]
        ahead = [a for _, a in self._alert_waits]
        out["alert_publish"] = {"n": len(waits), "lag_ms_p50": _pct(waits, 0.5),
                                "lag_ms_p99": _pct(waits, 0.99),
                                "pipe_bytes_ahead_p50": _pct(ahead, 0.5),
                                "pipe_bytes_ahead_p99": _pct(ahead, 0.99)}
        return out

    async def run(self) -> None:
        """Connect, upload, reconnect with backoff; returns only by cancellation."""
        try:
            while True:
                stayed_up = await self._session()
                if stayed_up >= self.stable_after:
                    self.reconnect.reset()
                how = await self.reconnect.wait(self.host, self.port, probe=self._tcp_failed)
                log.debug("reconnecting after %s (backoff %.2f s, attempt %d)", how,
                          self.reconnect.delay, self.reconnect.attempt)
        finally:
            if self._tasks:  # let pending settles reach the outbox thread
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ connection
    def _check_identity(self) -> None:
        ident = self.identity
        for what, path in (("certificate", ident.cert), ("key", ident.key), ("CA", ident.ca)):
            if not Path(path).is_file():
                raise UplinkConfigError(
                    f"{path}: gateway {what} file not found (enroll the gateway with "
                    "`edgegw enroll`, or point uplink.identity_dir at its identity)"
                )
        cert = pki.load_certificate(Path(ident.cert))
        cn = pki.common_name(cert.subject)
        if cn != self.gateway_id:
            raise UplinkConfigError(
                f"{ident.cert}: certificate CN is {cn!r} but gateway.id is {self.gateway_id!r}; "
                "the client id must equal the certificate CN (fix gateway.id or re-enroll)"
            )

    def _new_client(self, gen: int, loop: asyncio.AbstractEventLoop) -> mqtt.Client:
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=pki.client_id(self.gateway_id),  # the broker makes it the CN
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        tls = self._tls_sessions()
        client.tls_set_context(tls.context)
        client.tls_sessions = tls
        client.max_inflight_messages_set(self.window + 2)
        client.max_queued_messages_set(0)  # the window bounds what we queue
        client.will_set(self._topic_status, topics.STATUS_OFFLINE, qos=1)

        def bridge(fn: Callable[..., None]) -> Callable[..., None]:
            def cb(*args: Any) -> None:
                with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                    loop.call_soon_threadsafe(fn, gen, *args)

            return cb

        client.on_connect = bridge(self._on_connect)
        client.on_disconnect = bridge(self._on_disconnect)
        client.on_publish = bridge(self._on_publish)
        client.on_subscribe = bridge(self._on_subscribe)
        client.on_message = bridge(self._on_message)
        return client

    def _tls_sessions(self) -> TlsSessions:
        """The TLS context (and resumable session) for the next connection: the same as last
        time unless the identity files changed (renewal), so the broker can resume the session
        instead of a full mTLS handshake (docs/weak-networks.md)."""
        ident = self.identity
        key: list[tuple[str, int, int]] = []
        for path in (ident.ca, ident.cert, ident.key):
            try:
                st = Path(path).stat()
                key.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                key.append((str(path), -1, -1))
        if self._tls is None or tuple(key) != self._tls_key:
            self._tls = TlsSessions(pki.make_tls_context(Path(ident.ca), Path(ident.cert),
                                                         Path(ident.key)))
            self._tls_key = tuple(key)
        return self._tls

    async def _session(self) -> float:
        """One connection, from connect to loss. Returns how long it was up (seconds)."""
        loop = asyncio.get_running_loop()
        self._gen += 1
        gen = self._gen
        self._lost = asyncio.Event()
        self._wake = asyncio.Event()
        self._connack: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._suback: asyncio.Future[int] = loop.create_future()
        self.c.connect_attempts += 1
        self._tcp_failed = False
        self.last_attempt_at = loop.time()
        client = self._new_client(gen, loop)
        self._client = client
        try:
            await loop.run_in_executor(
                None, lambda: client.connect(self.host, self.port, self.keepalive,
                                             clean_start=True)
            )
        except ssl.SSLCertVerificationError as exc:
            self._auth_failed(f"the broker's certificate does not verify against "
                              f"{self.identity.ca}: {exc.verify_message}")
            return 0.0
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError) as exc:
            # the path died mid-handshake (no TLS alert): a network failure, not a refusal
            self.c.connect_failures += 1
            log.info("TLS handshake with %s:%d interrupted: %s", self.host, self.port, exc)
            return 0.0
        except ssl.SSLError as exc:
            self._auth_failed(f"TLS handshake refused ({exc.reason or exc}): the broker did not "
                              "accept this gateway's certificate (revoked, expired or from "
                              "another CA?)")
            return 0.0
        except OSError as exc:
            self.c.connect_failures += 1
            self._tcp_failed = isinstance(exc, TcpConnectError)
            if not self._unreachable:
                log.info("broker %s:%d unreachable: %s", self.host, self.port, exc)
                self._unreachable = True
            return 0.0
        client.loop_start()
        try:
            return await self._connected_phase(client, gen)
        except asyncio.CancelledError:
            if self._connected:  # graceful stop: say so (the will covers only crashes)
                with contextlib.suppress(Exception):
                    info = client.publish(self._topic_status, topics.STATUS_OFFLINE, qos=1)
                    await loop.run_in_executor(None, info.wait_for_publish, 2.0)
            raise
        finally:
            self._connected = False
            self._gen += 1  # late callbacks of this client are ignored from now on
            self._drop_connection_state()
            with contextlib.suppress(Exception):
                client.disconnect()
            await loop.run_in_executor(None, client.loop_stop)

    async def _connected_phase(self, client: mqtt.Client, gen: int) -> float:
        loop = asyncio.get_running_loop()
        assert self._lost is not None
        lost_wait: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
        connack: asyncio.Future[Any] = self._connack
        suback: asyncio.Future[Any] = self._suback
        try:
            done, _ = await asyncio.wait(
                {connack, lost_wait}, timeout=max(10.0, self.keepalive),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if connack not in done:
                if not self._lost.is_set():
                    self.c.connect_failures += 1
                    log.info("no CONNACK from %s:%d within the timeout", self.host, self.port)
                else:
                    # FIELD-NOTES: with TLS 1.3 a refused client certificate shows up only as
                    # an EOF on the first read, i.e. a connection lost before any CONNACK.
                    self._auth_failed("the broker closed the connection before CONNACK: the "
                                      "gateway's certificate was probably refused (revoked, "
                                      "expired or not issued by the broker's CA)")
                return 0.0
            rc, rc_name = self._connack.result()
            if rc >= 0x80:
                self.c.connect_failures += 1
                self._auth_failed(f"broker refused the connection: CONNACK 0x{rc:02X} {rc_name}")
                return 0.0
            connected_at = self.last_connected_at = loop.time()
            self._connected_ms = time.time_ns() // 1_000_000
            self._alert_waits.clear()
            self._connected = True
            self.c.connects += 1
            if self._auth_failing or self._unreachable:
                log.info("connected to %s:%d again", self.host, self.port)
            else:
                log.debug("connected to %s:%d", self.host, self.port)
            self._auth_failing = self._unreachable = False
            client.subscribe(self._topic_sub, qos=1)
            info = client.publish(self._topic_status, topics.STATUS_ONLINE, qos=1)
            self.flow.on_send(info.mid, len(topics.STATUS_ONLINE), time.monotonic())
            done, _ = await asyncio.wait({suback, lost_wait}, timeout=max(10.0, self.keepalive),
                                         return_when=asyncio.FIRST_COMPLETED)
            if suback not in done:
                if not self._lost.is_set():
                    log.info("no SUBACK for %s from %s:%d; reconnecting", self._topic_sub,
                             self.host, self.port)
                return loop.time() - connected_at
            if self._suback.result() >= 0x80:
                self.c.subscribe_refused += 1
                self._auth_failed(f"broker refused the subscription to {self._topic_sub} "
                                  f"(reason 0x{self._suback.result():02X}); check the broker ACL")
                return loop.time() - connected_at
            await self._pump()
            return loop.time() - connected_at
        finally:
            lost_wait.cancel()

    def _auth_failed(self, message: str) -> None:
        self.c.auth_failures += 1
        if not self._auth_failing:
            log.error("uplink authentication failed for gateway %s at %s:%d: %s",
                      self.gateway_id, self.host, self.port, message)
            self._auth_failing = True
        else:
            log.debug("uplink authentication still failing: %s", message)

    def _drop_connection_state(self) -> None:
        # Everything in flight stays in the outbox; the next connection sends it again.
        self._inflight.clear()
        self._fresh.clear()
        self._mids.clear()
        self.flow.reset()
        self._alias_set = False

    # ------------------------------------------------------------------ the window
    @property
    def _topic_sub(self) -> str:
        return self._topic_down_all if self._downlink is not None else self._topic_ack

    async def _pump(self) -> None:
        for fn in self._connect_listeners:
            try:
                fn()
            except Exception:
                log.exception("connect listener %r failed", fn)
        loop = asyncio.get_running_loop()
        assert self._lost is not None and self._wake is not None
        self._last_progress = loop.time()
        self._rescan = True  # a new connection: everything stored is sendable again
        last_scan = -math.inf
        while not self._lost.is_set():
            # cleared BEFORE the work: a wake-up that arrives during the scan is kept
            self._wake.clear()
            now = loop.time()
            self._check_stuck(now)
            self._resend_overdue(now)
            self._release_cooldown(now)
            room = self.window - len(self._inflight)
            batches: list[Any] = []
            if room > 0 and (self._rescan or now - last_scan >= self.poll_interval
                             or len(self._fresh) > room):
                self._rescan = False
                self._fresh.clear()  # the scan returns them
                last_scan = now
                exclude = set(self._inflight) | set(self._cooldown) | self._settling
                batches = await self._io.next_batches(room, exclude)
                if self._lost.is_set():
                    break
                if len(batches) >= room:
                    self._rescan = True  # the window cut the scan short: more may wait
            elif room > 0 and self._fresh:
                # stored since the last complete scan, which sent everything sendable: these
                # are the outbox's only new sendable batches (lane order holds: alerts are
                # sealed at once, so no older telemetry batch waits behind them)
                batches, self._fresh = self._fresh, []
            if batches:
                now = time.monotonic()
                in_flight = self._inflight_bytes()
                for b in batches:
                    if b.seq in self._inflight or b.seq in self._settling:
                        continue
                    if not self.flow.may_send(len(b.envelope), now, alert=b.lane == 0,
                                              in_flight=in_flight):
                        # a BDP awaits the cloud's ack: wait for acks (they wake us), then
                        # scan again
                        self._rescan = True
                        break
                    self._send(_Flight(b.seq, bytes(b.envelope), b.count, int(b.lane),
                                       attempts=int(getattr(b, "attempts", 0)),
                                       first_ts_ms=int(getattr(b, "first_ts_ms", 0))))
                    in_flight += len(b.envelope)
            timeout = self._next_deadline(loop.time())
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set, and a stopping gateway then never finishes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _next_deadline(self, now: float) -> float:
        t = self.ack_timeout
        if self._inflight:
            oldest = min(f.sent_at for f in self._inflight.values())
            t = max(0.0, oldest + self.ack_timeout - now)
        if self._cooldown:
            t = min(t, max(0.0, min(self._cooldown.values()) - now))
        if len(self._inflight) < self.window:
            t = min(t, self.poll_interval)
        return t

    def _send(self, flight: _Flight) -> None:
        client = self._client
        assert client is not None
        if self._alias_set:
            info = client.publish("", flight.envelope, qos=1, properties=_ALIAS_PROPS)
        elif self._alias_max >= 1:
            info = client.publish(self._topic_batch, flight.envelope, qos=1,
                                  properties=_ALIAS_PROPS)
            self._alias_set = True
        else:
            info = client.publish(self._topic_batch, flight.envelope, qos=1)
        flight.idle = self.flow.in_pipe == 0
        if flight.lane == 0 and flight.sends == 0 and flight.first_ts_ms >= self._connected_ms:
            self._alert_waits.append(
                (max(0, time.time_ns() // 1_000_000 - flight.first_ts_ms), self.flow.in_pipe))
        self.flow.on_send(info.mid, len(flight.envelope), time.monotonic())
        flight.mid = info.mid
        flight.sent_at = asyncio.get_running_loop().time()
        flight.sends += 1
        flight.broker_has_it = False
        self._inflight[flight.seq] = flight
        self._mids[info.mid] = flight.seq
        self.c.published += 1
        if flight.sends > 1:
            self.c.resends += 1

    def _resend_overdue(self, now: float) -> None:
        """Batches without an ack after ``ack_timeout`` leave the window for a jittered pause
        (their slots go to the next batches) and are sent again after it; a timeout counts as
        an attempt only if the cloud acked a batch sent after this one meanwhile."""
        overdue = [f for f in self._inflight.values() if now - f.sent_at >= self.ack_timeout]
        if not overdue:
            return
        log.info("no ingest ack within %.1f s for %d batch(es) (first seq %d, broker confirmed "
                 "%d of them); sending them again after a pause", self.ack_timeout, len(overdue),
                 overdue[0].seq, sum(f.broker_has_it for f in overdue))
        retry: list[tuple[int, AckStatus]] = []
        for flight in overdue:
            self.c.resend_timeouts += 1
            self._mids.pop(flight.mid, None)
            self.flow.forget(flight.mid)
            del self._inflight[flight.seq]
            if self._newest_acked_sent > flight.sent_at:
                flight.attempts += 1
                if flight.attempts >= self.max_attempts:
                    self._give_up(flight, f"no ack after {flight.attempts} attempts while the "
                                  "cloud acked later batches")
                    continue
                retry.append((flight.seq, AckStatus.RETRY))
                if flight.attempts == self.resequence_at:
                    # the cloud may hold a DIFFERENT batch under this seq (it never acks a
                    # sequence conflict): try once under a fresh number before giving up
                    self._resequence(flight)
                    continue
            self._cooldown[flight.seq] = now + self.ack_timeout * self._rng.uniform(0.25, 0.75)
        self._settle(retry)

    def _give_up(self, flight: _Flight, why: str) -> None:
        """Quarantine a poison batch with a gap record; the window moves on."""
        self.c.given_up += 1
        self._cooldown.pop(flight.seq, None)
        log.warning("giving up batch %d (%d readings, key id %d): %s; quarantined, a gap record "
                    "tells the cloud", flight.seq, flight.count, _key_id(flight.envelope), why)
        seq = flight.seq
        self._in_background([seq], lambda: self._io.give_up(seq, why),
                            "giving up batch %d in the outbox failed", seq)

    def _resequence(self, flight: _Flight) -> None:
        seq = flight.seq
        self._cooldown.pop(seq, None)

        async def go() -> None:
            new = await self._io.resequence(seq)
            log.info("batch %d not acked after %d attempts while later batches were: "
                     "re-sequenced as %s", seq, flight.attempts, new)

        self._in_background([seq], go, "re-sequencing batch %d in the outbox failed", seq)

    def _check_stuck(self, now: float) -> None:
        if self._stuck_warned or not (self._inflight or self._cooldown):
            return
        if now - self._last_progress < self.stuck_after:
            return
        self._stuck_warned = True
        self.c.stuck_warnings += 1
        flights = sorted(self._inflight.values(), key=lambda f: f.seq)
        oldest = flights[0] if flights else None
        log.warning(
            "delivery stuck: the cloud has acknowledged no batch for %.0f s although %d are in "
            "flight (%d confirmed by the broker)%s. Likely causes: the cloud ingest is down; this "
            "gateway is not (or no longer) in the cloud registry; or its batches are sealed "
            "under a data key the cloud does not know (run standalone, then enrolled without a "
            "restart). Nothing is deleted; delivery resumes by itself once the cloud acks.",
            now - self._last_progress, len(self._inflight),
            sum(f.broker_has_it for f in flights),
            f"; oldest seq {oldest.seq} sealed under key id {_key_id(oldest.envelope)}"
            if oldest is not None else "")

    def _release_cooldown(self, now: float) -> None:
        for seq, until in list(self._cooldown.items()):
            if until <= now:
                del self._cooldown[seq]
                self._rescan = True  # sendable again

    def _hold_back(self, seq: int) -> None:
        """Keep ``seq`` out of the window for a jittered, growing delay (refusals)."""
        self._refusals = min(self._refusals + 1, 32)
        cap = min(self.backoff_max, self.backoff_min * (2 ** (self._refusals - 1)))
        delay = self.backoff_min / 2 + self._rng.uniform(0, cap)
        self._cooldown[seq] = asyncio.get_running_loop().time() + delay

    def _settle(self, items: list[tuple[int, AckStatus]]) -> None:
        """Hand outcomes to the outbox thread; the seqs stay excluded until it is done."""
        if not items:
            return
        seqs = [seq for seq, _ in items]
        # a delivered batch is deleted: its settle makes nothing new sendable (anything else
        # may leave it in the outbox, out of the window)
        kept = any(outcome != AckStatus.DELIVERED for _, outcome in items)

        async def go() -> None:
            many = getattr(self._io, "settle_many", None)
            if many is not None:
                await many(items)
            else:
                for seq, outcome in items:
                    await self._io.settle(seq, outcome)

        self._in_background(seqs, go, "settling batches %s in the outbox failed", seqs[:10],
                            rescan=kept)

    def _in_background(self, seqs: list[int], work: Callable[[], Awaitable[object]],
                       failed: str, *args: object, rescan: bool = True) -> None:
        """Run ``work`` (an outbox call) as a tracked task; ``seqs`` stay out of the window until
        it is done, and the send loop is woken then (to scan the outbox again when ``rescan``
        or the work failed: the batches may still be there). A failure is logged as
        ``failed % args``."""
        self._settling.update(seqs)

        async def go() -> None:
            ok = False
            try:
                await work()
                ok = True
            except Exception:
                log.exception(failed, *args)
            finally:
                self._settling.difference_update(seqs)
                if rescan or not ok:
                    self._rescan = True
                if self._wake is not None:
                    self._wake.set()

        task = asyncio.ensure_future(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ paho callbacks
    # (run on the event loop via call_soon_threadsafe; ``gen`` filters stale connections)
    def _on_connect(self, gen: int, _c: Any, _u: Any, _flags: Any, rc: ReasonCode | int,
                    _p: Properties | None = None) -> None:
        if gen == self._gen and not self._connack.done():
            name = rc.getName() if isinstance(rc, ReasonCode) else str(rc)
            self._alias_max = int(getattr(_p, "TopicAliasMaximum", 0) or 0)
            self._connack.set_result((_reason_value(rc), name))

    def _on_disconnect(self, gen: int, _c: Any, _u: Any, _flags: Any, rc: ReasonCode | int,
                       _p: Properties | None = None) -> None:
        if gen != self._gen:
            return
        if self._connected:
            self.c.disconnects += 1
            log.info("connection to %s:%d lost (%s)", self.host, self.port, rc)
        if self._lost is not None:
            self._lost.set()
        if self._wake is not None:
            self._wake.set()

    def _on_subscribe(self, gen: int, _c: Any, _u: Any, _mid: int,
                      rcs: list[ReasonCode], _p: Properties | None = None) -> None:
        if gen == self._gen and not self._suback.done():
            self._suback.set_result(max(_reason_value(r) for r in rcs) if rcs else 0x80)

    def _on_publish(self, gen: int, _c: Any, _u: Any, mid: int, rc: ReasonCode | int,
                    _p: Properties | None = None) -> None:
        if gen != self._gen:
            return
        self.flow.on_puback(mid, time.monotonic())
        if self._wake is not None:
            self._wake.set()  # room in the pipe
        seq = self._mids.pop(mid, None)
        if seq is None:
            return  # the status message, or a flight already re-sent
        flight = self._inflight.get(seq)
        if flight is None:
            return
        code = _reason_value(rc)
        if code < 0x80:
            flight.broker_has_it = True
            self._refusals = 0
            return
        name = rc.getName() if isinstance(rc, ReasonCode) else str(code)
        key = f"0x{code:02X}"
        self.c.puback_reasons[key] = self.c.puback_reasons.get(key, 0) + 1
        self.c.puback_refused += 1
        if code in PERMANENT_PUBACK:
            del self._inflight[seq]
            self._give_up(flight, f"the broker refused it for good: PUBACK 0x{code:02X} {name}")
            return
        self.c.batches_retry += 1
        log.error("broker refused batch %d on %s: PUBACK 0x%02X %s; kept in the outbox, "
                  "retrying with backoff (check the broker ACL for this gateway)",
                  seq, self._topic_batch, code, name)
        del self._inflight[seq]
        self._hold_back(seq)
        self._settle([(seq, AckStatus.RETRY)])

    def _on_message(self, gen: int, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if gen != self._gen:
            return
        if msg.topic != self._topic_ack:
            if self._downlink is not None and msg.topic.startswith(self._topic_down_all[:-1]):
                try:
                    self._downlink(msg.topic, bytes(msg.payload))
                except Exception:
                    log.exception("downlink handler failed on %s", msg.topic)
            return
        try:
            acks = decode_acks(bytes(msg.payload))
        except Exception as exc:  # a malformed ack must never crash or settle anything
            self.c.acks_malformed += 1
            log.warning("malformed ack on %s (%d bytes): %s", msg.topic, len(msg.payload), exc)
            return
        self.c.acks_received += 1
        self.c.last_ack_ms = time.time_ns() // 1_000_000
        settle: list[tuple[int, AckStatus]] = []
        for seq, status in acks:
            flight = self._inflight.pop(seq, None)
            if flight is not None:
                self._mids.pop(flight.mid, None)
            elif seq in self._settling:
                continue  # a second ack for a batch being settled (a re-send was acked too)
            else:
                self.c.acks_unknown_seq += 1  # e.g. an ack of a batch sent before a reconnect
            if status == ACK_DELIVERED:
                self._cooldown.pop(seq, None)
                if flight is not None:  # an ack of nothing we sent proves nothing delivered
                    self.c.batches_delivered += 1
                self._last_progress = asyncio.get_running_loop().time()
                if self._stuck_warned:
                    log.info("delivery resumed: the cloud acknowledges batches again")
                self._stuck_warned = False
                if flight is not None:
                    self.c.readings_delivered += flight.count
                    self._newest_acked_sent = max(self._newest_acked_sent, flight.sent_at)
                    if flight.idle and flight.sends == 1:
                        now = time.monotonic()
                        self.flow.on_acked(now - flight.sent_at, len(flight.envelope), now)
                settle.append((seq, AckStatus.DELIVERED))
            elif status == ACK_REJECTED:
                self._cooldown.pop(seq, None)
                self.c.batches_rejected += 1
                log.warning("cloud ingest rejected batch %d (authentic but undecodable); "
                            "quarantined in the outbox", seq)
                settle.append((seq, AckStatus.REJECTED))
            else:
                self.c.batches_retry += 1
                log.info("cloud ingest asked to retry batch %d later", seq)
                self._hold_back(seq)
                settle.append((seq, AckStatus.RETRY))
        self._settle(settle)
        if self.on_delivered is not None:
            done = [seq for seq, outcome in settle if outcome is ACK_DELIVERED]
            if done:
                self.on_delivered(done)
        if self._wake is not None:
            self._wake.set()
