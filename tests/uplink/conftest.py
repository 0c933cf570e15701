"""Fixtures for uplink/ingest tests: a real cloud data dir, a real Mosquitto (ManagedBroker with
our mTLS + ACL config on a free port), gateway identities issued by that CA and registered in the
registry, the real ingest, and a TCP proxy that can cut every connection on demand.

Nothing here is mocked: every peer is the real component on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_stub.broker import ManagedBroker
from cloud_stub.ingest import Ingest
from cloud_stub.pki_setup import CloudPaths, init_data_dir
from cloud_stub.registry import Registry
from cloud_stub.store import CloudStore
from gateway import pki
from gateway.wire.keys import Sealer, derive_data_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``pred`` until true or fail after ``timeout`` (poll-until-deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def await_until(pred: Callable[[], bool], timeout: float, what: str,
                      step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Cloud:
    paths: CloudPaths
    broker: ManagedBroker

    @property
    def url(self) -> str:
        return self.broker.url

    def ingest(self, **kw: object) -> Ingest:
        ing = Ingest(self.paths, self.url, **kw)  # type: ignore[arg-type]
        ing.start()
        assert ing.wait_subscribed(15), "ingest did not subscribe"
        return ing

    def store(self) -> CloudStore:
        return CloudStore(self.paths.store_db, readonly=True)

    def gateway(self, gw_id: str, identity_dir: Path) -> Identity:
        """Issue + register a gateway certificate (the provisioning path, no enrollment)."""
        key = pki.generate_ec_key()
        issuer = pki.Issuer.load(self.paths.ca_crt, self.paths.ca_key)
        with Registry(self.paths.registry_db) as reg:
            cert = reg.provision(gw_id, key.public_key(), issuer)
        identity_dir.mkdir(parents=True, exist_ok=True)
        pki.save_private_key(identity_dir / "gateway.key", key)
        pki.write_public(identity_dir / "gateway.crt", pki.cert_pem(cert).encode())
        pki.write_public(identity_dir / "ca.crt", self.paths.ca_crt.read_bytes())
        kid = self.paths.current_key_id
        pki.write_public(identity_dir / "ingest-ka.pub", self.paths.ingest_ka_pub(kid).read_bytes())
        (identity_dir / "identity.json").write_text(
            json.dumps({"gateway_id": gw_id, "key_id": kid, "broker": self.url})
        )
        return Identity(gw_id, identity_dir, kid)


@dataclass
class Identity:
    gateway_id: str
    dir: Path
    key_id: int

    def sealer(self) -> Sealer:
        own = pki.load_private_key(self.dir / "gateway.key")
        peer = pki.load_public_key(self.dir / "ingest-ka.pub")
        key = derive_data_key(own, peer, self.key_id, self.gateway_id)  # type: ignore[arg-type]
        return Sealer(key, self.key_id, self.gateway_id)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    paths = init_data_dir(tmp_path / "cloud")
    broker = ManagedBroker(paths, free_port())
    broker.start()
    try:
        yield Cloud(paths, broker)
    finally:
        broker.stop()


# --------------------------------------------------------------------------- TCP proxy
class CutProxy:
    """asyncio TCP proxy between the gateway and the broker; ``cut()`` drops every connection.

    While ``blocked`` it accepts and immediately closes connections (a dead network path).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blocked = False
        self.cuts = 0
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.blocked:
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self.accepted += 1
        self._writers |= {w, uw}
        try:
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        finally:
            self._writers -= {w, uw}

    def cut(self) -> None:
        """Abort every open connection (both directions, RST-like)."""
        self.cuts += 1
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
