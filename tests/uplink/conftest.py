"""Fixtures for uplink/ingest tests: a real cloud data dir, a real Mosquitto (ManagedBroker with
our mTLS + ACL config on a free port), gateway identities issued by that CA and registered in the
registry, the real ingest, and a TCP proxy that can cut every connection on demand.

Nothing here is mocked: every peer is the real component on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgegw import pki
from edgegw.protocol.keys import Sealer, derive_data_key
from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.ingest import Ingest
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir
from edgegw_cloud.registry import Registry
from edgegw_cloud.store import CloudStore
from tests.cloud.helpers import free_port, pg_database


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``pred`` until true or fail after ``timeout`` (poll-until-deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def await_until(pred: Callable[[], bool], timeout: float, what: str,  # noqa: ASYNC109
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
    #: None = the SQLite store in the data dir; else a postgresql:// URL
    store_url: str | None = None

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def store_target(self) -> str | Path:
        return self.store_url or self.paths.store_db

    def ingest(self, **kw: object) -> Ingest:
        kw.setdefault("store_path", self.store_target)
        ing = Ingest(self.paths, self.broker.service_url, **kw)  # type: ignore[arg-type]
        ing.start()
        assert ing.wait_subscribed(15), "ingest did not subscribe"
        return ing

    def store(self) -> CloudStore:
        from edgegw_cloud.stores import open_store

        return open_store(self.store_target, readonly=True)  # type: ignore[no-any-return]

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
def cloud_dir() -> Iterator[Path]:
    """A data dir Mosquitto can reach: started as root it drops to user ``mosquitto``, which
    cannot traverse pytest's 0700 /tmp/pytest-of-root, so use a 0711 directory of our own."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-uplink-"))
    os.chmod(d, 0o711)
    try:
        yield d / "cloud"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store_kind() -> str:
    """The cloud store backend; fault tests parametrize it (``sqlite``, ``postgresql``)."""
    return "sqlite"


@pytest.fixture
def cloud(cloud_dir: Path, store_kind: str) -> Iterator[Cloud]:
    paths = init_data_dir(cloud_dir)
    broker = ManagedBroker(paths, free_port())
    broker.start()
    try:
        if store_kind == "postgresql":
            with pg_database() as url:
                yield Cloud(paths, broker, url)
        else:
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


# --------------------------------------------------------------------------- gateway side
class GatewaySide:
    """The real gateway data path minus drivers: Outbox (own thread) + OutboxIO + Uplink."""

    def __init__(self, ident: Identity, state: Path, broker_url: str, *, hand_off: bool = False,
                 **uplink_kw: object) -> None:
        """``hand_off``: each appended batch is handed to the uplink (``Uplink.offer``, as the
        daemon's batcher does) instead of a ``notify()`` that makes it read the outbox."""
        from concurrent.futures import ThreadPoolExecutor

        from edgegw.store.outbox import Outbox
        from edgegw.uplink.outbox_io import OutboxIO
        from edgegw.uplink.session import Uplink

        state.mkdir(parents=True, exist_ok=True)
        self.ident = ident
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.outbox = Outbox(state / "outbox.db", max_bytes=256 * 1024 * 1024,
                             sealer=ident.sealer())
        self.io = OutboxIO(self.outbox, self.executor)
        kw: dict[str, object] = {"window": 8, "ack_timeout": 2.0, "backoff_min": 0.05,
                                 "backoff_max": 0.5, "stable_after": 1.0, "keepalive": 5}
        kw.update(uplink_kw)
        self.uplink = Uplink(ident.gateway_id, ident.dir, broker_url, self.io, **kw)  # type: ignore[arg-type]
        self.task: asyncio.Task[None] | None = None
        self.produced_seqs: list[int] = []
        self.produced_readings = 0
        self._k = 0
        self.hand_off = hand_off

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.uplink.run())

    async def append(self, n_readings: int, *, lane: int = 1, alert: bool = False) -> int:
        from edgegw.model import Alert, Lane, Sample
        from edgegw.protocol.codec import encode_batch

        self._k += 1
        t0 = 1_700_000_000_000 + self._k * 100_000
        samples = [Sample("dev", f"m{self._k % 3}", t0 + i, float(i)) for i in range(n_readings)]
        alerts = [Alert("rule", "dev", t0, True)] if alert else []
        plaintext = encode_batch(samples, alerts)
        loop = asyncio.get_running_loop()
        def store() -> tuple[int, object]:
            seq = self.outbox.append(
                Lane(lane), plaintext, count=n_readings + len(alerts), first_ts_ms=t0,
                last_ts_ms=t0 + max(n_readings - 1, 0),
            )
            return seq, self.outbox.last_appended

        seq, stored = await loop.run_in_executor(self.executor, store)
        self.produced_seqs.append(seq)
        self.produced_readings += n_readings
        if self.hand_off:
            self.uplink.offer(stored)
        else:
            self.uplink.notify()
        return seq

    async def pending(self) -> int:
        return len(await self.io.next_batches(100_000, ()))

    async def drained(self, timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.pending() == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"outbox not drained after {timeout}s: {await self.pending()} batches left; "
            f"uplink {self.uplink.stats()}"
        )

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.executor, self.outbox.close)
        self.executor.shutdown()


def assert_exactly_once(cloud: Cloud, gw: GatewaySide) -> None:
    """produced == stored at the cloud, each batch once, no duplicate reading."""
    store = cloud.store()
    try:
        gid = gw.ident.gateway_id
        assert store.batch_seqs(gid) == sorted(gw.produced_seqs)
        assert store.count_readings(gid) == gw.produced_readings
        distinct = store.distinct_readings(gid)
        assert distinct == gw.produced_readings, "duplicate readings stored"
    finally:
        store.close()
