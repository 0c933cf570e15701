"""Which gateways are connected right now: the retained ``gw/+/up/status`` messages.

Each gateway publishes a retained ``online`` on connect and has ``offline`` as its last will, so
one subscription (with the ingest identity, which may read ``gw/+/up/#``) gives the live state of
the whole fleet, including a gateway that vanished without a goodbye (the broker publishes its
will after the keepalive). A status payload that is a JSON object (a richer heartbeat) is kept
as it is; ``online``/``offline`` are the plain forms.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.protocol import topics
from edgegw_cloud.pki_setup import CloudPaths

log = logging.getLogger("edgegw.cloud.web")


class Presence:
    """A paho client tracking ``gw/+/up/status``; ``state()`` is safe from any thread."""

    def __init__(self, paths: CloudPaths, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=pki.random_client_id("edgegw-web"),
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set_context(
            pki.make_tls_context(paths.ca_crt, paths.ingest_crt, paths.ingest_key)
        )
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self) -> Presence:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, c: mqtt.Client, ud: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        if not rc.is_failure:
            c.subscribe(topics.EVERY_STATUS, qos=1)

    def _on_message(self, c: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        gw = topics.gateway_of(msg.topic)
        if not gw:
            return
        payload = bytes(msg.payload)
        text = payload.decode("utf-8", "replace")
        entry: dict[str, Any] = {"since_ms": time.time_ns() // 1_000_000}
        if payload in (topics.STATUS_ONLINE, topics.STATUS_OFFLINE):
            entry["online"] = payload == topics.STATUS_ONLINE
        else:
            try:
                doc = json.loads(text)
            except ValueError:
                log.debug("gateway %s: unreadable status %r", gw, text[:80])
                return
            if not isinstance(doc, dict):
                return
            entry.update(doc)
            entry["online"] = bool(doc.get("online", True))
        with self._lock:
            self._state[gw] = entry

    def state(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._state.items()}
