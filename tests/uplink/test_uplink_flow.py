"""Uplink happy paths over the real broker and ingest: normal flow, status topic, lane order."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgegw import pki
from edgegw.protocol import envelope
from edgegw_cloud.pki_setup import CloudPaths

from .conftest import Cloud, GatewaySide, assert_exactly_once, await_until


class Observer:
    """Watches gw/+/up/# with the ingest identity (plain, non-shared subscription)."""

    def __init__(self, paths: CloudPaths, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=pki.random_client_id("observer"), protocol=mqtt.MQTTv5)
        c.tls_set_context(pki.make_tls_context(paths.ca_crt, paths.ingest_crt, paths.ingest_key))
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_: ready.set()
        c.on_message = self._on
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert ready.wait(10)
        self.client = c

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_normal_flow_exactly_once(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-normal", tmp_path / "id")
    ingest = cloud.ingest()
    status = Observer(cloud.paths, cloud.broker.service_port, "gw/gw-normal/up/status")
    gw = GatewaySide(ident, tmp_path / "state", cloud.url)
    gw.start()
    try:
        await await_until(lambda: gw.uplink.connected, 15, "uplink connected")
        await await_until(lambda: (b"online" in [m[1] for m in status.messages]), 10,
                          "retained online status")
        for _ in range(150):
            await gw.append(200)
        await gw.drained(60)
        assert_exactly_once(cloud, gw)
        st = gw.uplink.stats()
        assert st["batches_delivered"] == 150
        assert st["readings_delivered"] == 150 * 200
        assert st["puback_refused"] == 0 and st["auth_failures"] == 0
        assert ingest.counts["duplicates"] == 0  # no fault, so nothing was even re-sent
        assert st["inflight"] == 0
    finally:
        await gw.close()
        ingest.stop()
    # graceful stop publishes the retained "offline"
    await await_until(lambda: status.messages[-1][1] == b"offline", 10, "offline status")
    status.close()


async def test_alerts_lane_overtakes_telemetry_backlog(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.gateway("gw-lanes", tmp_path / "id")
    ingest = cloud.ingest()
    watch = Observer(cloud.paths, cloud.broker.service_port, "gw/gw-lanes/up/batch")
    gw = GatewaySide(ident, tmp_path / "state", cloud.url, window=4)
    try:
        # a backlog of telemetry exists before the link comes up; then alerts are raised
        telemetry = [await gw.append(500) for _ in range(60)]
        alerts = [await gw.append(1, lane=0, alert=True) for _ in range(3)]
        assert min(alerts) > max(telemetry)  # alerts are the newest batches
        gw.start()
        await gw.drained(60)
        assert_exactly_once(cloud, gw)
        await await_until(lambda: len(watch.messages) >= 63, 10, "observer saw every batch")
        order = [envelope.parse_header(p).seq for _, p, _ in watch.messages]
        first_sent = list(dict.fromkeys(order))
        # every alert goes out in the first window, ahead of the telemetry backlog
        assert set(first_sent[:3]) == set(alerts), first_sent[:8]
    finally:
        await gw.close()
        watch.close()
        ingest.stop()
    await asyncio.sleep(0)
