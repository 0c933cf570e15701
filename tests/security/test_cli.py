"""`edgegw-cloud` end to end: init, token create, serve (broker + enrollment + ingest),
gateways, revoke from another process while serve runs."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from edgegw import pki
from edgegw.model import Sample, now_ms
from edgegw.protocol.ack import decode_acks
from edgegw.protocol.codec import encode_batch
from edgegw.protocol.keys import Sealer, derive_data_key
from edgegw.uplink.enroll import enroll

from .conftest import free_port, make_probe, wait_until


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgegw_cloud.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return q, t


def test_cli_lifecycle_with_revocation_while_serving(data_root: Path, tmp_path: Path) -> None:
    d = str(data_root / "cloud")
    r = cli("init", "--data-dir", d)
    assert r.returncode == 0 and "cloud data dir ready" in r.stdout, r.stderr
    assert cli("init", "--data-dir", d).returncode == 0  # idempotent

    r = cli("token", "create", "gw-c", "--data-dir", d, "--ttl", "10m")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert len(token) >= 40 and "not be shown again" in r.stderr
    assert token not in (data_root / "cloud" / "registry.db").read_bytes().decode("latin-1")

    bad = cli("token", "create", "gw/c", "--data-dir", d)
    assert bad.returncode == 1 and "bad gateway id" in bad.stderr
    assert cli("revoke", "nobody", "--data-dir", d).returncode == 1
    assert cli("gateways", "--data-dir", str(tmp_path / "none")).returncode == 1

    port, eport = free_port(), free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "edgegw_cloud.cli", "serve", "--data-dir", d, "--port", str(port),
         "--enroll-port", str(eport)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    probes = []
    lines, pump = _lines(serve)
    try:
        first = lines.get(timeout=30)
        assert first.strip() == f"serving mqtts://127.0.0.1:{port}"
        assert lines.get(timeout=30).strip() == f"enrollment mqtts://127.0.0.1:{eport}"
        children = psutil.Process(serve.pid).children(recursive=True)
        assert any(c.name() == "mosquitto" for c in children)

        boot = tmp_path / "boot"
        boot.mkdir()
        pki_dir = data_root / "cloud" / "pki"
        for name in ("ca.crt", "bootstrap.crt", "bootstrap.key"):
            (boot / name).write_bytes((pki_dir / name).read_bytes())
        ident = enroll(
            "gw-c",
            tmp_path / "id",
            broker=f"mqtts://127.0.0.1:{port}",
            enroll_broker=f"mqtts://127.0.0.1:{eport}",
            token=token,
            bootstrap_dir=boot,
            timeout=20,
        )
        live = make_probe(port, ident.ca_path, ident.cert_path, ident.key_path, "gw-c")
        probes.append(live)
        live.wait_connected()
        assert not live.publish("gw/gw-c/up/status", b"online").is_failure

        # the enrolled identity is what the cloud ingest (started by serve) authenticates:
        # a sealed batch from it is stored and acked end to end
        live.subscribe("gw/gw-c/down/ack")
        key = derive_data_key(ident.private_key(), ident.ingest_public_key(), ident.key_id, "gw-c")
        batch = encode_batch(samples=[Sample("pump-1", "temp", now_ms(), 21.5)])
        sealed = Sealer(key, ident.key_id, "gw-c").seal(1, batch)
        assert not live.publish("gw/gw-c/up/batch", sealed).is_failure
        wait_until(lambda: live.got("gw/gw-c/down/ack") != [], 20, "the ingest's ack")
        assert decode_acks(live.got("gw/gw-c/down/ack")[0]) == [(1, 0)]

        table = cli("gateways", "--data-dir", d)
        assert table.returncode == 0
        row = next(line for line in table.stdout.splitlines() if line.startswith("gw-c "))
        serial = format(pki.load_certificate(ident.cert_path).serial_number, "x")
        assert serial[:16] in row and " no " in row
        assert row.split()[-3:] == ["1", "1", "0"]  # devices seen, batches, gaps (store.db)

        r = cli("revoke", "gw-c", "--data-dir", d)
        assert r.returncode == 0 and "revoked gw-c" in r.stdout, r.stderr
        # serve notices the new crl.pem and reloads the broker: the live session loses its rights
        wait_until(
            lambda: live.publish("gw/gw-c/up/status", b"x").value == 0x87,
            20,
            "serve to reload the broker after revoke",
        )
        again = make_probe(port, ident.ca_path, ident.cert_path, ident.key_path, "gw-c-2")
        probes.append(again)
        wait_until(lambda: len(again.disconnects) >= 2, 15, "the revoked certificate's refusal")
        assert not again.connected_ok
        row = next(
            line
            for line in cli("gateways", "--data-dir", d).stdout.splitlines()
            if line.startswith("gw-c ")
        )
        assert " no " not in row
    finally:
        for p in probes:
            p.close()
        children = psutil.Process(serve.pid).children(recursive=True)
        serve.send_signal(signal.SIGTERM)
        rc = serve.wait(30)
        pump.join(10)
        assert serve.stdout is not None
        serve.stdout.close()
    assert rc == 0
    wait_until(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        10,
        "serve's children to exit",
    )


def test_serve_refuses_an_uninitialised_dir(tmp_path: Path) -> None:
    r = cli("serve", "--data-dir", str(tmp_path / "x"), "--port", str(free_port()))
    assert r.returncode == 1 and "edgegw-cloud init" in r.stderr
    assert os.listdir(tmp_path) == []  # nothing created
