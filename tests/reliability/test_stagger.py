"""Finding 11: ``stagger`` spreads the first polls over one period across the whole gateway,
as documented, not per bus: ten devices on ten buses (one endpoint each) must not all poll at
the same instant; the devices of one bus share its slot (one poll round, one batch). Real
daemon, real pymodbus server; the first reading of each device in the outbox tells when it was
polled."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from pathlib import Path

from modbus.simproc import SimServer
from runtime.helpers import write_config

from edgegw.runtime.outbox_reader import read_outbox

from .cloudproc import edgegw_cli


class Forwarder:
    """A TCP port that relays to the Modbus server: a distinct endpoint (bus) per device."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def first_polls(tmp_path: Path, buses: int, units: int, period: str) -> dict[str, int]:
    """Run the daemon 3 s with ``buses`` endpoints of ``units`` unit ids each (device
    ``b{bus}-u{unit}``); the wall-clock time of each device's first reading."""
    server = SimServer("--tcp", "0", "--units", str(units), log_dir=tmp_path)
    state = tmp_path / "state"
    relays = [Forwarder(server.port) for _ in range(buses)]
    try:
        cfg = write_config(tmp_path / "gateway.yaml", {
            "gateway": {"id": "gw-stagger", "state_dir": str(state), "log_level": "warning"},
            "metrics": {"enabled": False},
            "devices": [{
                "id": f"b{b}-u{u}", "driver": "modbus", "poll": period, "timeout": "1s",
                "options": {"transport": "tcp", "host": "127.0.0.1", "port": relays[b].port,
                            "unit_id": u, "points": [{"name": "v", "kind": "holding",
                                                      "address": 0, "type": "int16"}]},
            } for b in range(buses) for u in range(1, units + 1)],
        })
        r = edgegw_cli("run", "-c", str(cfg), "--for", "3")
        assert r.returncode == 0, r.stderr
    finally:
        server.close()
        for r in relays:
            r.close()
    first: dict[str, int] = {}
    for s in sorted(read_outbox(state)[0], key=lambda s: s.ts_ms):
        first.setdefault(s.device, s.ts_ms)
    assert len(first) == buses * units
    return first


def test_first_polls_spread_across_the_gateway(tmp_path: Path) -> None:
    # one device per endpoint (bus), like ten single-device Modbus gateways
    n = 10
    starts = sorted(first_polls(tmp_path, n, 1, "2s").values())
    # i / n of the 2 s period: 0, 0.2 ... 1.8 s; allow generous slack for a loaded machine
    assert starts[-1] - starts[0] >= 1200, starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert sum(g >= 100 for g in gaps) >= n // 2, gaps


def test_devices_of_one_bus_poll_as_one_round_and_buses_spread(tmp_path: Path) -> None:
    """Three buses of three unit ids each: a bus's devices share its slot and are polled back
    to back (one round, sealed together), the buses are spread over the period."""
    buses, units = 3, 3
    first = first_polls(tmp_path, buses, units, "3s")
    rounds = [sorted(first[f"b{b}-u{u}"] for u in range(1, units + 1)) for b in range(buses)]
    # one bus: its devices back to back (a few ms each; generous for a loaded machine)
    assert all(r[-1] - r[0] < 500 for r in rounds), rounds
    # the buses: 0, 1 and 2 s into the 3 s period
    starts = sorted(r[0] for r in rounds)
    assert all(b - a >= 600 for a, b in itertools.pairwise(starts)), starts
