"""A rig for the OTA transfer on loopback: the real cloud stub (managed Mosquitto with our mTLS +
ACL config, ingest, the device manager that confirms commit-confirmed configs), releases
published with the cloud's release store and OTA key, and the real daemon (`edgegw run`) in a
subprocess with its uplink enabled. Nothing is mocked.

``ChunkServer`` plays the cloud end of the transfer directly (the rollout engine is built
elsewhere): it sends sealed offers/cancels with the real ``Downlink`` and answers every chunk
``request`` of the gateway from the published payload (optionally tampering with a chunk), and
records every request and state the gateway sends, with the time it arrived.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from runtime.helpers import poll_until
from uplink.conftest import Cloud, Identity

from edgegw.protocol import downlink as dl
from edgegw.protocol import ota_transfer as ot
from edgegw_cloud.devmgmt import DeviceManager, record_broker_url
from edgegw_cloud.downlink import DownlinkError
from edgegw_cloud.ingest import Ingest
from edgegw_cloud.ota import ReleaseRow, ReleaseStore

GW = "gw-ota"


@dataclass
class Seen:
    """What the cloud end received from the gateway, in arrival order."""

    states: list[tuple[float, int, ot.State]] = field(default_factory=list)  # (t, epoch, s)
    requests: list[tuple[float, int, ot.Request]] = field(default_factory=list)  # (t, epoch, r)


class ChunkServer:
    def __init__(self, cloud: Cloud, dm: DeviceManager) -> None:
        self.cloud = cloud
        self.down = dm.down
        self.seen = Seen()
        self.epoch = 0  # bumped by the test at each cut/restart: requests are tagged with it
        self.tamper: dict[tuple[str, int], bytes] = {}
        self.chunks_sent = 0
        self.bytes_sent = 0
        self._payloads: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Condition()
        self._q: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.down.listen(dl.OTA, self._on_ota)

    # ------------------------------------------------------------------ releases
    def publish(self, files: dict[str, bytes], *, kind: str = "config", name: str = "site",
                version: str = "1", chunk_size: int = 4096, **kw: Any) -> ReleaseRow:
        with ReleaseStore(self.cloud.paths.data_dir) as store:
            row = store.publish(files, kind=kind, name=name, version=version,
                                chunk_size=chunk_size, **kw)
        self.serve_release(row)
        return row

    def serve_release(self, row: ReleaseRow) -> None:
        manifest = json.loads((row.path / "manifest.json").read_bytes())
        self._payloads[row.release_id] = ((row.path / "payload.tar").read_bytes(),
                                          int(manifest["payload"]["chunk_size"]))

    def offer(self, row: ReleaseRow, *, rollout: int = 1, window: str | None = None,
              sig: bytes | None = None, labels: dict[str, str] | None = None) -> None:
        with ReleaseStore(self.cloud.paths.data_dir) as store:
            manifest, good_sig = store.read(row)
        body = ot.Offer(rollout, row.release_id, manifest, sig if sig is not None else good_sig,
                        window, labels).body()
        self.down.send(GW, dl.OTA, body)

    def cancel(self, row: ReleaseRow, rollout: int = 1) -> None:
        self.down.send(GW, dl.OTA, ot.Cancel(rollout, row.release_id).body())

    # ------------------------------------------------------------------ gateway -> cloud
    def _on_ota(self, gw: str, msg: dl.Message) -> None:
        try:
            up = ot.parse_up(msg.body)
        except ot.TransferError:
            return
        with self._lock:
            now = time.monotonic()
            if isinstance(up, ot.Request):
                self.seen.requests.append((now, self.epoch, up))
                for i in up.chunks:
                    self._q.put((up.release, i))
            else:
                self.seen.states.append((now, self.epoch, up))
            self._lock.notify_all()

    def _serve(self) -> None:
        while (item := self._q.get()) is not None:
            release, i = item
            payload, size = self._payloads[release]
            data = self.tamper.get((release, i), payload[i * size:(i + 1) * size])
            try:
                self.down.send(GW, dl.OTA, ot.Chunk(release, i, data).body(), wait_puback=2.0)
            except (DownlinkError, RuntimeError):  # paho: "client is not currently connected"
                continue  # link down: lost, like a chunk in flight on a cut line
            with self._lock:
                self.chunks_sent += 1
                self.bytes_sent += len(data)

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(10)

    # ------------------------------------------------------------------ views
    def states(self, release: str) -> list[ot.State]:
        with self._lock:
            return [s for _t, _e, s in self.seen.states if s.release == release]

    def last_state(self, release: str) -> ot.State | None:
        got = self.states(release)
        return got[-1] if got else None

    def wait_state(self, release: str, state: str, timeout: float = 30.0) -> ot.State:
        def find() -> ot.State | None:
            return next((s for s in reversed(self.states(release)) if s.state == state), None)

        got = poll_until(find, timeout, f"{release} state {state} (seen: "
                                        f"{[s.state for s in self.states(release)]})")
        return got  # type: ignore[no-any-return]

    def requested(self, release: str, epoch: int | None = None) -> list[int]:
        with self._lock:
            return [i for _t, e, r in self.seen.requests if r.release == release
                    and (epoch is None or e == epoch) for i in r.chunks]


class Rig:
    def __init__(self, cloud: Cloud, tmp: Path) -> None:
        self.cloud = cloud
        self.tmp = tmp
        self.ident: Identity = cloud.gateway(GW, tmp / "identity")
        (self.ident.dir / "ota-signing.pub").write_bytes(
            (cloud.paths.data_dir / "pki" / "ota-signing.pub").read_bytes())
        self.ingest: Ingest = cloud.ingest()
        record_broker_url(cloud.paths, cloud.broker.service_url)
        self.dm = DeviceManager(cloud.paths, cloud.broker.service_url, resend_every=1.0).start()
        self.server = ChunkServer(cloud, self.dm)
        self.config_path = tmp / "etc" / "gateway.yaml"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.state = tmp / "state"
        self.log = tmp / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_doc(self, poll: str = "200ms", **ota: Any) -> dict[str, Any]:
        return {
            "gateway": {"id": GW, "state_dir": str(self.state), "log_level": "info"},
            "metrics": {"enabled": False},
            "batch": {"max_age": "100ms"},
            "uplink": {"enabled": True, "broker": self.cloud.url,
                       "identity_dir": str(self.ident.dir), "backoff_min": "0.1s",
                       "backoff_max": "0.5s", "ack_timeout": "3s"},
            "devices": [{"id": "boiler", "driver": "sim", "poll": poll,
                         "options": {"points": [{"name": "t", "signal": "counter"}]}}],
            "ota": ota,
        }

    def write_config(self, doc: dict[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.config_path

    def start(self) -> None:
        before = int(self.dm.counts.get("info", 0))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgegw.cli", "run", "-c", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        poll_until(lambda: int(self.dm.counts.get("info", 0)) > before, 30,
                   f"gateway hello (log: {self.log_text()[-2000:]})")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.proc = None
        return rc

    def release_state(self, release: str) -> dict[str, Any]:
        return dict(json.loads((self.state / "ota" / release / "state.json").read_text()))

    def held(self, release: str) -> set[int]:
        """The chunks the gateway's persisted bitmap claims (empty before the offer landed)."""
        try:
            doc = self.release_state(release)
        except FileNotFoundError:
            return set()
        bits = bytes.fromhex(doc["have"])
        return {i for i in range(int(doc["total"])) if bits[i >> 3] & (1 << (i & 7))}

    def gateway_stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "status.json").read_text())["stats"])
        except (FileNotFoundError, ValueError, KeyError):
            return {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            self.server.stop()
            self.dm.stop()
            self.ingest.stop()

