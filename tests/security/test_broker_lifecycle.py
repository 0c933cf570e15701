"""ManagedBroker lifecycle: supervision restarts a crashed Mosquitto; clear errors otherwise."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from edgegw_cloud import broker as broker_mod
from edgegw_cloud.broker import BrokerError, Listener, ManagedBroker
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir

from .conftest import Cloud, free_port, make_probe, wait_until


def test_crashed_broker_is_restarted_by_the_supervisor(cloud: Cloud) -> None:
    b = cloud.broker
    old_pid = b.pid
    assert old_pid is not None
    b._proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]  # a crash, not kill()
    wait_until(lambda: b.restarts == 1 and b.running and b.pid != old_pid, 15, "a restart")
    b.wait_ready(10)
    assert b.crashes == 1
    probe = cloud.ingest_probe()
    assert not probe.publish("gw/x/down/ack", b"x").is_failure


def test_kill_stops_supervision_until_start(cloud: Cloud) -> None:
    b = cloud.broker
    b.kill()
    assert not b.running and b.restarts == 0
    b.start()
    assert b.running
    b.restart()
    assert b.running and b.crashes == 0
    cloud.ingest_probe()


def test_extra_listener_serves_the_same_mtls(cloud: Cloud) -> None:
    b = cloud.broker
    b.stop()
    extra = free_port()
    b2 = ManagedBroker(cloud.paths, cloud.port, extra_listener=Listener(extra))
    b2.start()
    try:
        p = make_probe(
            extra,
            cloud.paths.ca_crt,
            cloud.paths.ingest_crt,
            cloud.paths.ingest_key,
            "edgegw-ingest-extra",
        )
        p.wait_connected()
        assert p.publish("gw/x/up/batch", b"x").value == 0x87  # same ACL
        p.close()
        anon = make_probe(extra, cloud.paths.ca_crt, None, None, "anon")
        wait_until(lambda: len(anon.disconnects) >= 2, 15, "refusal")
        assert not anon.connected_ok
        anon.close()
    finally:
        b2.stop()


def test_missing_mosquitto_says_how_to_install_it(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = init_data_dir(data_root / "c")
    monkeypatch.setenv("PATH", str(data_root))  # a PATH without mosquitto
    monkeypatch.setattr(broker_mod, "_SEARCH", ())
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        ManagedBroker(paths, free_port())


def test_uninitialised_data_dir_is_refused(data_root: Path) -> None:
    from edgegw.pki import PkiError

    with pytest.raises(PkiError, match="edgegw-cloud init"):
        ManagedBroker(CloudPaths.for_dir(data_root / "nothing"), free_port())


def test_unreachable_data_dir_is_explained(data_root: Path) -> None:
    import os

    if os.geteuid() != 0:  # the check only matters when Mosquitto drops privileges
        paths = init_data_dir(data_root / "c")
        ManagedBroker(paths, free_port()).write_files()
        return
    locked = data_root / "locked"
    locked.mkdir(mode=0o700)
    paths = init_data_dir(locked / "c")
    with pytest.raises(BrokerError, match="cannot enter"):
        ManagedBroker(paths, free_port()).start()


def test_port_in_use_fails_with_the_log(cloud: Cloud) -> None:
    other = ManagedBroker(cloud.paths, cloud.port)
    with pytest.raises(BrokerError, match=f"port {cloud.port} is in use"):
        other.start(timeout=3)
    assert not other.running and cloud.broker.running
