"""Runs the API + dashboard (``create_app``) on uvicorn in a thread of ``edgegw-cloud serve``.

TLS only, with the broker's server certificate (issued by the cloud's CA, SANs chosen at
``init``/``broker-cert --add-host``): browsers and scripts verify it against ``pki/ca.crt``.
``stop()`` asks uvicorn to exit and waits (open live streams are closed after a short grace).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from edgegw_cloud.pki_setup import CloudPaths
from edgegw_cloud.web.app import create_app
from edgegw_cloud.web.presence import Presence

log = logging.getLogger("edgegw.cloud.web")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"bad --http {text!r}: use HOST:PORT, e.g. 0.0.0.0:8443 or [::]:8443")
    return host.strip("[]"), int(port)


class HttpServer:
    """uvicorn + the app in a daemon thread; ``start()`` returns once it accepts connections."""

    def __init__(
        self,
        paths: CloudPaths,
        host: str,
        port: int,
        *,
        broker: tuple[str, int] | None = None,
        open_store: Any = None,
    ) -> None:
        self.paths = paths
        self.presence = Presence(paths, *broker) if broker is not None else None
        app = create_app(paths, open_store=open_store, presence=self.presence)
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(paths.broker_crt),
            ssl_keyfile=str(paths.broker_key),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self.server.servers:
            return int(self.server.servers[0].sockets[0].getsockname()[1])
        return int(self.config.port)

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.port}/"

    def start(self, timeout: float = 15.0) -> HttpServer:
        if self.presence is not None:
            self.presence.start()
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the HTTP server did not start on {self.config.host}:{self.config.port} "
                    "(port in use? see the log above)"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.presence is not None:
            self.presence.stop()
