"""The running cloud stub: managed (or external) broker + enrollment service + ingest.

``serve`` prints one line ``serving mqtts://HOST:PORT`` on ``out`` once the broker accepts TLS
and the enrollment service is subscribed (scripts and tests wait for it), runs until ``stop`` is
set, reloads the managed broker whenever crl.pem changes (``revoke`` from another process) and
re-signs the CRL daily.

Listening: the managed broker always has a 127.0.0.1 listener for the cloud's own services
(enrollment, ingest, dashboard presence); ``listen`` adds the address gateways dial (an address
of the host, or 0.0.0.0 / :: for all, which then also serves loopback). A changed broker.crt
(``broker-cert --add-host``) restarts the managed broker so new handshakes present it. With
``http`` the dashboard + API (edgegw_cloud.web) run on that address over TLS.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from edgegw.protocol.broker_url import parse_broker_url
from edgegw_cloud.broker import Listener, ManagedBroker
from edgegw_cloud.devmgmt import DeviceManager, record_broker_url
from edgegw_cloud.enrollment import EnrollmentService
from edgegw_cloud.ingest import IngestProcesses, run_ingest
from edgegw_cloud.pki_setup import CloudPaths, broker_sans
from edgegw_cloud.revocation import CRL_REFRESH_S, refresh_crl
from edgegw_cloud.stores import open_store
from edgegw_cloud.web.server import HttpServer, parse_listen

log = logging.getLogger("edgegw.cloud")

__all__ = ["serve"]


def _crl_stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _start_ingest(
    paths: CloudPaths,
    url: str,
    stop: threading.Event,
    store: str | Path | None = None,
    forward: tuple[str, ...] = (),
) -> threading.Thread:
    def target() -> None:
        try:
            run_ingest(paths, url, stop, store=store, forward=forward)
        except Exception:
            log.exception("ingest failed; stopping serve")
            stop.set()

    t = threading.Thread(target=target, name="ingest", daemon=True)
    t.start()
    return t


def _start_device_manager(paths: CloudPaths, broker_url: str) -> DeviceManager | None:
    """Device management for the lifetime of ``serve`` (re-sends, confirms, fleet info, OTA
    rollouts and chunks); the broker URL is recorded for the CLI's device-management verbs."""
    record_broker_url(paths, broker_url)
    try:
        return DeviceManager(paths, broker_url, tag="serve", ota=True).start()
    except Exception as exc:
        log.error("device management not started: %s", exc)
        return None


def serve(
    paths: CloudPaths,
    *,
    port: int,
    enroll_port: int | None = None,
    listen: str = "127.0.0.1",
    http: str | None = None,
    store: str | Path | None = None,
    forward: tuple[str, ...] = (),
    broker_url: str | None = None,
    stop: threading.Event | None = None,
    ingest: bool = True,
    ingest_processes: int = 0,
    ingest_stats_dir: Path | None = None,
    crl_poll_s: float = 1.0,
    out: TextIO | None = None,
) -> int:
    """Run broker + enrollment + ingest + device management until ``stop`` is set.

    ``ingest_processes`` = 0 runs the ingest as a thread of this process; N > 0 runs N ingest
    processes sharing the subscription (decode and store use a core each; the store's SQLite
    write lock serialises their commits).
    """
    out = out or sys.stdout
    stop = stop or threading.Event()
    refresh_crl(paths)
    broker: ManagedBroker | None = None
    public_url = None
    if broker_url is None:
        # two listeners (docs/security.md "Client ids"): gateways on ``port``, enrollment and
        # the services on ``enroll_port`` (default port + 1); with ``listen`` both also on that
        # address (the cloud's own services always dial loopback)
        sport = enroll_port if enroll_port else port + 1
        extra = (
            None
            if listen in ("127.0.0.1", "localhost")
            else Listener(port, listen, service_port=sport)
        )
        broker = ManagedBroker(paths, port, service_port=sport, extra_listener=extra).start()
        broker_url = broker.url
        service_url = broker.service_url
        if extra is not None:
            shown = f"[{listen}]" if ":" in listen else listen
            public_url = f"mqtts://{shown}:{port}"
    else:
        service_url = broker_url  # an external broker: one listener for everything
    url = parse_broker_url(service_url)
    enroll = EnrollmentService(paths, url.host, url.port).start()
    ingest_thread = None
    ingest_procs: IngestProcesses | None = None
    if ingest and ingest_processes > 0:
        ingest_procs = IngestProcesses(
            paths, service_url, ingest_processes, ingest_stats_dir, store=store, forward=forward
        )
    elif ingest:
        ingest_thread = _start_ingest(paths, service_url, stop, store, forward)
    devmgr = _start_device_manager(paths, service_url)
    web: HttpServer | None = None
    if http is not None:
        target = store if store is not None else paths.store_db
        web = HttpServer(
            paths,
            *parse_listen(http),
            broker=(url.host, url.port),
            open_store=lambda: open_store(target, readonly=True),
        ).start()
    out.write(f"serving {broker_url}\n")
    out.write(f"enrollment {service_url}\n")
    if public_url is not None:
        out.write(
            f"gateways dial {public_url}, enroll at port {sport} (certificate covers "
            f"{', '.join(broker_sans(paths.broker_crt))})\n"
        )
    if web is not None:
        out.write(f"dashboard and API on {web.url} (CA: {paths.ca_crt})\n")
    out.flush()
    crl = _crl_stamp(paths.crl)
    broker_cert = _crl_stamp(paths.broker_crt)
    refreshed = time.monotonic()
    try:
        while not stop.wait(crl_poll_s):
            if time.monotonic() - refreshed > CRL_REFRESH_S:
                refresh_crl(paths)
                refreshed = time.monotonic()
            cert_now = _crl_stamp(paths.broker_crt)
            if cert_now != broker_cert:
                broker_cert = cert_now
                if broker is not None:
                    log.info("broker.crt changed (broker-cert --add-host): restarting the broker")
                    broker.stop()
                    broker.start()
            now = _crl_stamp(paths.crl)
            if now != crl:
                crl = now
                if broker is not None:
                    log.info("crl.pem changed: reloading the broker")
                    broker.reload()
                else:
                    log.warning("crl.pem changed: reload the external broker's CRL yourself")
    finally:
        stop.set()
        if web is not None:
            web.stop()
        if devmgr is not None:
            devmgr.stop()
        enroll.stop()
        if ingest_thread is not None:
            ingest_thread.join(timeout=15.0)
        if ingest_procs is not None:
            ingest_procs.stop()
        if broker is not None:
            broker.stop()
    return 0
