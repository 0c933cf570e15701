"""A simulated weather station speaking the same HTTP/JSON API, for demos and tests.

``edgegw-weather-sim --port 8080 [--token T]`` serves ``GET /api/v1/current`` and
``PUT /api/v1/settings`` on 127.0.0.1. Readings drift slowly (a sine over the day plus noise).
``StationSimulator`` runs the same server in a thread for tests; its ``behaviour`` switch lets
a test make the station misbehave (``"silent"``, ``"garbage"``, ``"error500"``).
Counts requests per path so a test can tell that a gateway really polled it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StationSimulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.token = token
        self.heater = False
        self.firmware = b""  # the last complete image flashed (firmware hook example)
        self._upload = bytearray()
        self.behaviour = "normal"  # normal | silent | garbage | error500 | missing_field
        self.overrides: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self._release = threading.Event()  # lets "silent" handlers go when the server stops
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def current(self) -> dict[str, Any]:
        t = time.time()
        day = math.sin(2 * math.pi * (t % 86400) / 86400)
        data: dict[str, Any] = {
            "station": "SIM-1",
            "ts": int(t),
            "temperature_c": round(12 + 8 * day + random.gauss(0, 0.1), 2),
            "humidity_pct": round(60 - 15 * day + random.gauss(0, 0.5), 1),
            "pressure_hpa": round(1013 + random.gauss(0, 0.3), 1),
            "wind_speed_ms": round(abs(random.gauss(3, 1)), 1),
            "wind_dir_deg": random.randrange(0, 360),
            "rain_mm": 0.0,
            "heater": self.heater,
        }
        data.update(self.overrides)
        return data

    def start(self) -> StationSimulator:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> StationSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(station: StationSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _reply(self, status: int, body: Any) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _gate(self) -> bool:
            station.requests[f"{self.command} {self.path}"] += 1
            if station.behaviour == "silent":
                station._release.wait(30)  # hold the connection, answer nothing
                return False
            if station.behaviour == "error500":
                self._reply(500, {"error": "sensor bus fault"})
                return False
            if station.token and self.headers.get("Authorization") != f"Bearer {station.token}":
                self._reply(401, {"error": "unauthorized"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._gate():
                return
            if self.path != "/api/v1/current":
                self._reply(404, {"error": "not found"})
            elif station.behaviour == "garbage":
                self._reply(200, b"\x00\xffnot json")
            else:
                data = station.current()
                if station.behaviour == "missing_field":
                    data.pop("temperature_c")
                self._reply(200, data)

        def do_PUT(self) -> None:
            if not self._gate():
                return
            if self.path.startswith("/api/v1/firmware?"):
                self._firmware()
                return
            if self.path != "/api/v1/settings":
                self._reply(404, {"error": "not found"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            except (ValueError, json.JSONDecodeError):
                self._reply(400, {"error": "body must be JSON"})
                return
            if not isinstance(body, dict) or not isinstance(body.get("heater"), bool):
                self._reply(400, {"error": 'expected {"heater": true|false}'})
                return
            station.heater = body["heater"]
            self._reply(200, {"heater": station.heater})

        def _firmware(self) -> None:
            query = dict(kv.split("=", 1) for kv in self.path.split("?", 1)[1].split("&"))
            offset, total = int(query.get("offset", -1)), int(query.get("total", -1))
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if offset != len(station._upload):
                station._upload.clear()  # out of order: start over
                if offset != 0:
                    self._reply(409, {"error": "firmware pieces must arrive in order"})
                    return
            station._upload += data
            reply: dict[str, Any] = {"received": len(station._upload)}
            if len(station._upload) >= total:
                station.firmware = bytes(station._upload)
                station._upload.clear()
                reply["sha256"] = hashlib.sha256(station.firmware).hexdigest()
            self._reply(200, reply)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulated HTTP/JSON weather station")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 = pick a free port")
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    station = StationSimulator(args.host, args.port, args.token)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, print counts
    print(f"weather station simulator on {station.url}", flush=True)
    try:
        station.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        station.server.server_close()
    print(f"requests served: {dict(station.requests)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
