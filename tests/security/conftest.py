"""Fixtures for security tests: a real cloud data dir, a real Mosquitto with our mTLS + ACL config
(ManagedBroker on a free port), the real enrollment service, and a paho MQTT v5 probe client.

Nothing is mocked: every peer is the real component on loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.uplink.enroll import Identity
from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.enrollment import EnrollmentService, provision_gateway
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` until true, or fail after ``timeout`` (poll-until-deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Probe:
    """A paho MQTT v5 client that records everything the broker tells it."""

    client: mqtt.Client
    connacks: list[ReasonCode] = field(default_factory=list)
    disconnects: list[ReasonCode] = field(default_factory=list)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def connected_ok(self) -> bool:
        return any(not rc.is_failure for rc in self.connacks)

    def wait_connected(self, timeout: float = 10.0) -> None:
        wait_until(lambda: self.connected_ok, timeout, "CONNACK success")

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> ReasonCode:
        """QoS 1 publish; returns the PUBACK reason code (v5: 0x87 when the ACL denies)."""
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.pubacks, timeout, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic: str, timeout: float = 10.0) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        wait_until(lambda: mid in self.subacks, timeout, f"SUBACK for {topic}")
        return self.subacks[mid]

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_probe(
    port: int,
    ca: Path,
    cert: Path | None,
    key: Path | None,
    client_id: str,
    *,
    connect: bool = True,
) -> Probe:
    # every client id starts with "~" (the broker's clientid_prefixes); on the gateway listener
    # the broker replaces it with the certificate CN anyway
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=pki.client_id(client_id),
                         protocol=mqtt.MQTTv5)
    client.reconnect_delay_set(0.2, 1)
    probe = Probe(client)
    client.tls_set_context(pki.make_tls_context(ca, cert, key))

    def on_connect(c: Any, ud: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        probe.connacks.append(rc)

    def on_disconnect(c: Any, ud: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        probe.disconnects.append(rc)

    def on_publish(c: Any, ud: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        probe.pubacks[mid] = rc

    def on_subscribe(c: Any, ud: Any, mid: int, rcs: list[ReasonCode], props: Any) -> None:
        probe.subacks[mid] = rcs

    def on_message(c: Any, ud: Any, msg: mqtt.MQTTMessage) -> None:
        with probe.lock:
            probe.messages.append((msg.topic, msg.payload))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    if connect:
        client.connect_async("127.0.0.1", port, keepalive=30)
        client.loop_start()
    return probe


@dataclass
class Cloud:
    paths: CloudPaths
    broker: ManagedBroker
    tmp: Path
    probes: list[Probe] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def service_port(self) -> int:
        return self.broker.service_port

    def probe(
        self,
        cert: Path | None,
        key: Path | None,
        client_id: str,
        ca: Path | None = None,
        *,
        port: int | None = None,
    ) -> Probe:
        """A probe on the listener its identity belongs on: bootstrap, ingest and enroll on
        the service listener, gateways on the gateway listener (``port`` overrides)."""
        services = {self.paths.bootstrap_crt, self.paths.ingest_crt, self.paths.enroll_crt}
        if port is None:
            port = self.service_port if cert in services else self.port
        p = make_probe(port, ca or self.paths.ca_crt, cert, key, client_id)
        self.probes.append(p)
        return p

    def ingest_probe(self) -> Probe:
        p = self.probe(self.paths.ingest_crt, self.paths.ingest_key, "edgegw-ingest-test")
        p.wait_connected()
        return p

    def gateway(self, gw_id: str) -> Identity:
        return provision_gateway(self.paths, gw_id, self.tmp / "gw" / gw_id, broker=self.broker.url)

    def gateway_probe(
        self, ident: Identity, client_id: str | None = None, *, port: int | None = None
    ) -> Probe:
        p = self.probe(ident.cert_path, ident.key_path, client_id or ident.gateway_id,
                       port=port)
        return p

    def bootstrap_dir(self) -> Path:
        d = self.tmp / "bootstrap"
        d.mkdir(exist_ok=True)
        for src in (self.paths.ca_crt, self.paths.bootstrap_crt, self.paths.bootstrap_key):
            (d / src.name).write_bytes(src.read_bytes())
            (d / src.name).chmod(0o600 if src.suffix == ".key" else 0o644)
        return d


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A temp dir the broker's user can enter (pytest's tmp_path parents are 0700 for root,
    and Mosquitto started as root drops to user ``mosquitto`` before opening its files)."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-sec-"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cloud(data_root: Path, tmp_path: Path) -> Iterator[Cloud]:
    paths = init_data_dir(data_root / "cloud")
    broker = ManagedBroker(paths, free_port())
    broker.start()
    c = Cloud(paths, broker, tmp_path)
    try:
        yield c
    finally:
        for p in c.probes:
            p.close()
        broker.stop()


@pytest.fixture
def enrollment(cloud: Cloud) -> Iterator[EnrollmentService]:
    svc = EnrollmentService(cloud.paths, "127.0.0.1", cloud.service_port).start()
    try:
        yield svc
    finally:
        svc.stop()


def file_mode(path: Path) -> int:
    """Permission bits of ``path`` (key files must be 0600, directories 0700)."""
    return Path(path).stat().st_mode & 0o777
