"""``mqtt://HOST:PORT/PREFIX``: decoded readings republished as JSON to a plain MQTT broker.

One message per reading on ``PREFIX/<gateway>/<device>/<metric>`` (PREFIX defaults to
``edgegw``), payload ``{"gateway", "device", "metric", "ts_ms", "time", "value", "quality"}``
(bytes values as ``{"blob_sha256": ...}``; the blob stays in the cloud store). Options in the
query string: ``qos`` (0 or 1, default 1), ``retain`` (0/1, default 0: the last value per metric
kept by the broker when 1), ``client_id``; ``mqtts://`` takes ``ca=FILE`` (and ``cert=``/``key=``
for a client certificate); user and password from the URL (``mqtt://user:pass@host``).

The IDs in topics are safe: gateway, device and metric ids never contain ``/ + #``.
paho keeps its own bounded in-flight window; ``write`` waits for QoS 1 PUBACKs of the batch (up
to ``timeout``, default 5 s) so a dead broker is reported as a failure, not buffered forever.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgegw.protocol.broker_url import parse_endpoint_url
from edgegw_cloud.sinks.base import Reading, Sink, SinkError


def reading_json(r: Reading) -> dict[str, Any]:
    value = r.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = {"blob_sha256": hashlib.sha256(bytes(value)).hexdigest()}
    t = dt.datetime.fromtimestamp(r.ts_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    return {"gateway": r.gateway, "device": r.device, "metric": r.metric, "ts_ms": r.ts_ms,
            "time": t.replace("+00:00", "Z"), "value": value, "quality": r.quality}


class MqttJsonSink(Sink):
    schemes = ("mqtt", "mqtts")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        u = parse_endpoint_url(url)
        q = u.query
        if not u.host:
            raise SinkError(f"{url}: no host (mqtt://HOST:PORT/PREFIX)")
        self.prefix = u.path.strip("/") or "edgegw"
        self.qos = int(q.get("qos", "1"))
        self.retain = q.get("retain", "0") in ("1", "true", "yes")
        self.timeout = float(q.get("timeout", "5"))
        if self.qos not in (0, 1):
            raise SinkError(f"{url}: qos must be 0 or 1")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=q.get("client_id", f"edgegw-forward-{id(self):x}"),
                                  protocol=mqtt.MQTTv5)
        if u.username:
            self.client.username_pw_set(u.username, u.password)
        if u.scheme == "mqtts":
            ctx = ssl.create_default_context(cafile=q.get("ca"))
            if "cert" in q:
                ctx.load_cert_chain(q["cert"], q.get("key"))
            self.client.tls_set_context(ctx)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u_, f, rc, p: (
            self._connected.set() if not rc.is_failure else None)
        self.client.on_disconnect = lambda c, u_, f, rc, p: self._connected.clear()
        self.client.reconnect_delay_set(1, 30)
        self.client.connect_async(u.host, u.port or (8883 if u.scheme == "mqtts" else 1883))
        self.client.loop_start()

    def topic(self, r: Reading) -> str:
        return f"{self.prefix}/{r.gateway}/{r.device}/{r.metric}"

    def write(self, readings: Sequence[Reading]) -> None:
        if not self._connected.wait(self.timeout):
            raise SinkError(f"not connected to {self.url.split('?')[0]}")
        infos = [self.client.publish(self.topic(r), json.dumps(reading_json(r)), qos=self.qos,
                                     retain=self.retain) for r in readings]
        if self.qos == 0:
            return
        deadline = time.monotonic() + self.timeout
        for info in infos:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SinkError("PUBACKs did not arrive in time")
            info.wait_for_publish(left)
            if not info.is_published():
                raise SinkError("PUBACKs did not arrive in time")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
