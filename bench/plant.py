"""A plant of real pymodbus TCP servers for the weak-link bench (one per device, one process).

Each server holds ``--registers`` holding registers (unit id 1). Kinds:
- ``stepping`` (W1/W2): every register steps by its own constant on each read of it
  (register r of device d: base + step x reads, step = 1 + r % 7, uint16 wrap-around), so each
  poll sees exactly one step, whatever the poll period;
- ``noisy``: an analog value around 20.00 with noise (raw int16 = 2000 + gauss(0, 40)), fresh
  on each read, meant for ``scale: 0.01``.
Prints ``{"ports": [...], "bases": [[...], ...]}`` (per device, the value each register has at
its first read) then, on each stdin line, ``{"reads": n, "per_device": [...]}``
(register-block reads served so far, in total and per device in port order); exits when stdin
closes. Framing, PDUs and transport are pymodbus' own.

    python bench/plant.py --devices 10 --registers 100 --kind stepping
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from typing import Any


def main() -> None:
    from pymodbus.datastore import ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--registers", type=int, default=100)
    ap.add_argument("--kind", choices=["stepping", "noisy"], default="stepping")
    ap.add_argument("--seed", type=int, default=15)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    reads = [0]
    per_device = [0] * a.devices

    class Store(ModbusServerContext):
        def __init__(self, dev: int) -> None:  # storage is ours (no deprecated datastore)
            self.old_simulator = True
            self.simdevices = []
            self._devices = {}
            self.dev = dev
            self.base = [rng.randrange(65536) for _ in range(a.registers)]
            self.n = [0] * a.registers

        async def async_getValues(self, device_id: int, func_code: int, address: int,
                                  count: int = 1) -> Any:
            reads[0] += 1
            per_device[self.dev] += 1
            out = []
            for r in range(address, min(address + count, a.registers)):
                if a.kind == "stepping":
                    out.append((self.base[r] + (1 + r % 7) * self.n[r]) & 0xFFFF)
                    self.n[r] += 1
                else:
                    out.append((2000 + round(rng.gauss(0, 40))) & 0xFFFF)
            return out

        async def async_setValues(self, device_id: int, func_code: int, address: int,
                                  values: Any) -> Any:
            return None

        def device_ids(self) -> list[int]:
            return [1]

    async def serve() -> None:
        servers = []
        stores = [Store(d) for d in range(a.devices)]
        for store in stores:
            server = ModbusTcpServer(store, address=("127.0.0.1", 0))
            await server.serve_forever(background=True)
            servers.append(server)
        ports = [s.transport.sockets[0].getsockname()[1] for s in servers]
        print(json.dumps({"ports": ports, "bases": [s.base for s in stores]}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            print(json.dumps({"reads": reads[0], "per_device": per_device}), flush=True)
        for s in servers:
            await s.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
