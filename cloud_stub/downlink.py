"""Cloud -> gateway downlink: seals and publishes device-management messages, opens replies.

``Downlink(paths, broker_url)`` (the broker's SERVICE listener, docs/security.md) is one MQTT v5
client with the cloud's ingest identity (the only
identity the broker ACL lets publish on ``gw/+/down/#``; gateways may write only their own
``gw/<cn>/up/#``). It is used by the CLI (one short-lived client per command) and by Python
callers (``serve``'s device manager, tests, benches).

Invariants:
- Every message is sealed end to end (``edgegw.protocol.downlink``) with the key derived from
  the ingest key-agreement key and the gateway's newest certificate key; the sequence comes
  from ``DevStore.next_seq`` (per gateway, strictly increasing, durable, shared by every cloud
  process on the data dir).
- Replies (``gw/+/up/<kind>``) are opened with the gateway's UP key, tried for every public
  key the gateway ever held (re-enrollment); a reply that fails authentication or has expired
  is counted and dropped, never handed to a listener.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.protocol import downlink as dl
from edgegw.protocol import topics
from edgegw.protocol.broker_url import parse_broker_url
from edgegw.transport.mqtt_client import Client
from edgegw_cloud.devstore import DevStore
from edgegw_cloud.pki_setup import INGEST_CN, CloudPaths
from edgegw_cloud.registry import Registry, RegistryError

log = logging.getLogger("edgegw.cloud.downlink")
KEY_REFRESH_S = 30.0

Listener = Callable[[str, dl.Message], None]
REPLY_KINDS = (dl.COMMAND, dl.SHADOW, dl.CONFIG, dl.OTA, dl.INFO)


class DownlinkError(RuntimeError):
    """The message cannot be sent (unknown/revoked gateway, broker refused, not connected)."""


class _Keys:
    """Message keys per gateway; thread-safe (paho thread opens, callers seal)."""

    def __init__(self, paths: CloudPaths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        # gateway -> (codec, monotonic time derived): re-derived after KEY_REFRESH_S so a
        # re-enrolled gateway (new key) or a new reported key id is picked up by a long `serve`
        self._down: dict[str, tuple[dl.MessageCodec, float]] = {}
        self._up: dict[tuple[str, int], list[dl.MessageCodec]] = {}

    def _registry_keys(self, gw: str) -> tuple[list[Any], int | None]:
        with Registry(self.paths.registry_db) as reg:
            row = reg.gateway(gw)
            if row is None or row.cert_serial is None:
                raise DownlinkError(f"gateway {gw!r} is not enrolled (see `edgegw-cloud "
                                    "gateways`)")
            if row.revoked:
                raise DownlinkError(f"gateway {gw!r} is revoked")
            return reg.public_keys(gw, include_revoked=False), reg.reported_key_id(gw)

    def down(self, gw: str, key_id: int | None = None) -> dl.MessageCodec:
        with self._lock:
            cached = self._down.get(gw)
        if cached is not None and time.monotonic() - cached[1] < KEY_REFRESH_S and (
            key_id is None or cached[0].key_id == key_id
        ):
            return cached[0]
        pubs, reported = self._registry_keys(gw)
        if not pubs:
            raise DownlinkError(f"gateway {gw!r} has no valid certificate")
        # the key id the gateway uses (it may predate an ingest key rotation)
        kid = key_id if key_id is not None else reported
        if kid is None or not self.paths.ingest_ka_key(kid).exists():
            kid = self.paths.current_key_id
        own = pki.load_private_key(self.paths.ingest_ka_key(kid))
        codec = dl.MessageCodec(dl.derive_message_key(own, pubs[0], kid, gw, dl.DOWN),  # type: ignore[arg-type]
                                kid, gw, dl.DOWN)
        with self._lock:
            self._down[gw] = (codec, time.monotonic())
        return codec

    def up(self, gw: str, key_id: int) -> list[dl.MessageCodec]:
        with self._lock:
            got = self._up.get((gw, key_id))
        if got is not None:
            return got
        path = self.paths.ingest_ka_key(key_id)
        if not path.exists():
            return []
        own = pki.load_private_key(path)
        with Registry(self.paths.registry_db) as reg:
            pubs = reg.public_keys(gw)
        codecs = [dl.MessageCodec(dl.derive_message_key(own, p, key_id, gw, dl.UP),  # type: ignore[arg-type]
                                  key_id, gw, dl.UP) for p in pubs]
        with self._lock:
            self._up[(gw, key_id)] = codecs
        return codecs

    def forget(self, gw: str) -> None:
        with self._lock:
            self._down.pop(gw, None)
            for k in [k for k in self._up if k[0] == gw]:
                del self._up[k]


class Downlink:
    """start()/stop(); ``send(gw, kind, body)``; ``listen(kind, fn)`` for replies."""

    def __init__(self, paths: CloudPaths, broker_url: str, *, client_tag: str = "dm",
                 reply_kinds: tuple[str, ...] = REPLY_KINDS, status: bool = False) -> None:
        self.paths = paths
        url = parse_broker_url(broker_url)
        self.host, self.port = url.host, url.port
        self.keys = _Keys(paths)
        self.store = DevStore(paths.data_dir / "devices.db")
        self._store_lock = threading.Lock()
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._status_listeners: list[Callable[[str, bool], None]] = []
        self.reply_kinds = reply_kinds
        self.status = status
        self._ready = threading.Event()
        self._client: mqtt.Client | None = None
        self._tag = client_tag
        self.counts: dict[str, int] = defaultdict(int)
        self.gateway_key_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> Downlink:
        p = self.paths
        client = Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=pki.client_id(f"{INGEST_CN}-{self._tag}-{secrets.token_hex(4)}"),
                        protocol=mqtt.MQTTv5)
        client.tls_set_context(pki.make_tls_context(p.ca_crt, p.ingest_crt, p.ingest_key))
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.max_inflight_messages_set(100)
        subs = [(topics.every_up(k), 1) for k in self.reply_kinds]
        if self.status:
            subs.append((topics.every_up("status"), 1))

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode,
                       _p: Properties | None = None) -> None:
            if rc.is_failure:
                log.error("downlink client: broker refused the connection (%s)", rc)
                return
            c.subscribe(subs)

        def on_subscribe(c: mqtt.Client, _u: Any, _m: int, rcs: list[ReasonCode],
                         _p: Properties | None = None) -> None:
            if any(r.is_failure for r in rcs):
                log.error("downlink client: subscription refused (%s); check the ACL", rcs)
                return
            self._ready.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = self._on_message
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not self._ready.wait(timeout):
            self.stop()
            raise DownlinkError(f"could not connect/subscribe to the broker at "
                                f"{self.host}:{self.port} within {timeout:.0f} s")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.store.close()

    def __enter__(self) -> Downlink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def listen(self, kind: str, fn: Listener) -> None:
        """``fn(gateway_id, message)`` for each authentic reply of ``kind`` (paho's thread)."""
        self._listeners[kind].append(fn)

    def listen_status(self, fn: Callable[[str, bool], None]) -> None:
        """``fn(gateway_id, online)`` on each retained/live status change (needs status=True)."""
        self._status_listeners.append(fn)

    # ------------------------------------------------------------------ send
    def send(self, gw: str, kind: str, body: dict[str, Any], *, msg_id: str | None = None,
             ttl_s: float = 60.0, expires_ms: int | None = None,
             wait_puback: float = 10.0) -> str:
        """Seal and publish one message; returns its id. Raises ``DownlinkError``."""
        topics.check_gateway_id(gw)
        client = self._client
        if client is None:
            raise DownlinkError("downlink client not started")
        codec = self.keys.down(gw, self.gateway_key_ids.get(gw))
        with self._store_lock:
            seq = self.store.next_seq(gw)
        mid = msg_id or secrets.token_hex(8)
        now = dl.now_ms()
        exp = expires_ms if expires_ms is not None else now + int(ttl_s * 1000)
        blob = codec.seal(kind, mid, seq, body, issued_ms=now, expires_ms=exp)
        self.publish_raw(topics.down(gw, kind), blob, wait_puback)
        self.counts["sent"] += 1
        return mid

    def publish_raw(self, topic: str, blob: bytes, wait_puback: float = 10.0) -> None:
        """Publish already sealed bytes (tests use it to replay a captured message)."""
        client = self._client
        if client is None:
            raise DownlinkError("downlink client not started")
        info = client.publish(topic, blob, qos=1)
        if wait_puback > 0:
            info.wait_for_publish(wait_puback)
            if not info.is_published():
                raise DownlinkError(f"no PUBACK from the broker for {topic} within "
                                    f"{wait_puback:.0f} s")

    # ------------------------------------------------------------------ receive
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        gw = topics.gateway_of(msg.topic)
        kind = topics.kind_of(msg.topic)
        if gw is None or kind is None:
            return
        if kind == "status":
            online = bytes(msg.payload) == topics.STATUS_ONLINE
            for status_fn in self._status_listeners:
                try:
                    status_fn(gw, online)
                except Exception:
                    log.exception("status listener failed")
            return
        try:
            h = dl.parse_message_header(bytes(msg.payload))
            codecs = self.keys.up(gw, h.key_id)
            opened: dl.Message | None = None
            err: dl.MessageError | None = None
            for codec in codecs:
                try:
                    opened = codec.open(kind, bytes(msg.payload))
                    break
                except dl.MessageError as exc:
                    err = exc
                    if exc.reason != "auth":
                        break
            if opened is None:
                if err is not None and err.reason == "auth":
                    self.keys.forget(gw)  # re-enrolled with a new key? re-read on the next one
                raise err or dl.MessageError("unknown_key", f"no key for {gw} key id {h.key_id}")
        except (dl.MessageError, RegistryError, DownlinkError) as exc:
            reason = getattr(exc, "reason", "error")
            self.counts[f"refused_{reason}"] += 1
            log.warning("reply on %s refused (%s): %s", msg.topic, reason, exc)
            return
        self.gateway_key_ids[gw] = opened.key_id
        self.counts["replies"] += 1
        for fn in self._listeners.get(kind, ()):
            try:
                fn(gw, opened)
            except Exception:
                log.exception("reply listener for %s failed", kind)
