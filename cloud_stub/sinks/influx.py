"""InfluxDB line protocol: ``influx+udp://HOST:PORT``, ``influx+tcp://HOST:PORT``,
``influx+file:///PATH``.

One line per reading::

    edgegw,gateway=plant1-gw1,device=boiler1 temperature=71.5,quality=0i 1714564800123000000

Measurement ``edgegw`` (``?measurement=NAME`` to change it), tags ``gateway`` and ``device``, the
metric as the field key, the reading's quality as the integer field ``quality``, timestamp in
nanoseconds (readings have millisecond resolution). Value types map to line-protocol types:
float -> float, int -> integer (``5i``), bool -> boolean, str -> string; ``None`` (no value:
a failed read) writes only the quality field; bytes (camera frames) are skipped (the blob stays
in the cloud store). Escaping follows the line-protocol reference: commas, spaces and ``=`` in
tags and keys, commas and spaces in the measurement, ``"`` and ``\\`` in string values.

Destinations: UDP (InfluxDB 1.x UDP service, Telegraf ``inputs.socket_listener``; lines are
packed into datagrams of at most ``UDP_MAX`` bytes), TCP (Telegraf socket_listener; reconnects on
the next write after an error), or a file (appended; also a named pipe).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from edgegw.protocol.broker_url import parse_endpoint_url
from edgegw_cloud.sinks.base import Reading, Sink, SinkError

UDP_MAX = 1400


def _escape_key(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_measurement(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _field_value(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return f"{v}i"
        return f"{float(v)!r}"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return None  # line protocol has no NaN/Inf
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return None


def to_line(r: Reading, measurement: str = "edgegw") -> str | None:
    """One reading as a line-protocol line, or None if it has nothing to write (bytes)."""
    if isinstance(r.value, (bytes, bytearray, memoryview)):
        return None
    fields = [f"quality={int(r.quality)}i"]
    value = _field_value(r.value)
    if value is not None:
        fields.insert(0, f"{_escape_key(r.metric)}={value}")
    tags = f"gateway={_escape_key(r.gateway)},device={_escape_key(r.device)}"
    return (f"{_escape_measurement(measurement)},{tags} {','.join(fields)} "
            f"{int(r.ts_ms) * 1_000_000}")


class InfluxLineSink(Sink):
    schemes = ("influx+udp", "influx+tcp", "influx+file")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        u = parse_endpoint_url(url)
        q = u.query
        self.measurement = q.get("measurement", "edgegw")
        self.kind = u.scheme.split("+", 1)[1]
        self._sock: socket.socket | None = None
        self._file: IO[str] | None = None
        if self.kind == "file":
            if not u.path:
                raise SinkError(f"{url}: no path (influx+file:///var/lib/edgegw/lines.txt)")
            self.path = Path(u.path)
        else:
            if not u.host or not u.port:
                raise SinkError(f"{url}: needs HOST:PORT")
            self.addr = (u.host, u.port)

    def lines(self, readings: Sequence[Reading]) -> list[str]:
        return [ln for r in readings if (ln := to_line(r, self.measurement)) is not None]

    def write(self, readings: Sequence[Reading]) -> None:
        lines = self.lines(readings)
        if not lines:
            return
        try:
            if self.kind == "file":
                if self._file is None:
                    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                self._file.write("\n".join(lines) + "\n")
                self._file.flush()
            elif self.kind == "udp":
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for packet in _packets(lines):
                    self._sock.sendto(packet, self.addr)
            else:
                if self._sock is None:
                    self._sock = socket.create_connection(self.addr, timeout=5)
                self._sock.sendall(("\n".join(lines) + "\n").encode())
        except OSError as exc:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            raise SinkError(str(exc)) from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._file is not None:
            self._file.close()


def _packets(lines: list[str]) -> list[bytes]:
    out: list[bytes] = []
    buf = b""
    for ln in lines:
        b = ln.encode() + b"\n"
        if buf and len(buf) + len(b) > UDP_MAX:
            out.append(buf)
            buf = b""
        buf += b
    if buf:
        out.append(buf)
    return out
