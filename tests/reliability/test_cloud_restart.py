"""Finding 11 (cloud side): a SIGKILLed `edgegw-cloud serve` leaves no Mosquitto running, and
a stale broker of our own (same config file) is recognised and replaced at the next start
instead of being blamed on "a system mosquitto".

Real peers: the `edgegw-cloud` CLI in a subprocess, Mosquitto, /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil
from runtime.helpers import poll_until

from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.pki_setup import init_data_dir

from .cloudproc import CloudServe, data_root

__all__ = ["data_root"]


def _mosquittos(pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children(recursive=True) if c.name() == "mosquitto"]


def test_sigkilled_serve_leaves_no_broker_and_restarts(tmp_path: Path, data_root: Path) -> None:
    cloud = CloudServe(data_root / "cloud", tmp_path / "serve.log").start()
    assert cloud.proc is not None
    (broker,) = _mosquittos(cloud.proc.pid)
    cloud.stop(signal.SIGKILL)
    poll_until(lambda: not broker.is_running() or broker.status() == psutil.STATUS_ZOMBIE, 15,
               "the managed broker to die with its parent")
    cloud.start()  # same port: nothing holds it any more
    try:
        assert cloud.proc is not None and len(_mosquittos(cloud.proc.pid)) == 1
        assert "system mosquitto" not in cloud.log.read_text()
    finally:
        assert cloud.stop() == 0


def test_stale_own_broker_is_recognised(data_root: Path) -> None:
    """A broker on our config file whose serve is gone (reparented to init, as an older build
    left it after a SIGKILL) is stopped and replaced; a live owner's broker is not touched
    (tests/security/test_broker_lifecycle.py::test_port_in_use_fails_with_the_log)."""
    from uplink.conftest import free_port

    paths = init_data_dir(data_root / "cloud")
    port = free_port()
    broker = ManagedBroker(paths, port)
    broker.write_files()
    # double fork: the shell exits at once, so Mosquitto is orphaned like a SIGKILLed serve's
    subprocess.run(["sh", "-c", f"{broker.binary} -c {paths.mosquitto_conf} "
                    ">/dev/null 2>&1 </dev/null &"], check=True)
    stale = poll_until(lambda: broker._stale_own_brokers(), 10, "the orphaned broker")[0]
    try:
        broker.start()  # would raise "port in use ... a system mosquitto?" before
        assert broker.pid != stale
        poll_until(lambda: not psutil.pid_exists(stale)
                   or psutil.Process(stale).status() == psutil.STATUS_ZOMBIE, 15,
                   "the stale broker to be stopped")
    finally:
        broker.stop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(stale, signal.SIGKILL)
