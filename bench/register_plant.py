"""The issue-13 workloads' Modbus peer: TCP servers whose holding registers ALL change every 100 ms.

W1/W2 (ThingsBoard IoT Gateway's own kind of workload): one endpoint, unit ids 1..10, 100 holding
registers each. W3: the same per endpoint, several endpoints. Register r of unit u holds
``(u * 1000 + r * 7 + tick) & 0xFFFF`` with ``tick = int(wall time / 0.1 s)``, so every register
changes every 100 ms and the values are computed at read time (no timer task competes with the
server). Run: ``python bench/register_plant.py --endpoints 1 --units 10 --registers 100
--ports-file F`` (writes {"ports": [...]} when serving, then serves until killed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import time
from pathlib import Path

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Unit:
    def __init__(self, uid: int, registers: int) -> None:
        self.uid = uid
        self.n = registers
        self.device = SimDevice(
            id=uid,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self.action,
        )

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None) -> None:
        if function_code == 3:
            tick = int(time.time() * 10)
            base = self.uid * 1000 + tick
            for i in range(len(registers)):
                registers[i] = (base + (address - start_address + i) * 7) & 0xFFFF
        return None


async def serve(endpoints: int, units: int, registers: int, ports_file: Path) -> None:
    ports, servers = [], []
    for _ in range(endpoints):
        port = free_port()
        ports.append(port)
        devs = [Unit(u, registers).device for u in range(1, units + 1)]
        servers.append(ModbusTcpServer(devs, address=("127.0.0.1", port)))
    tasks = [asyncio.create_task(s.serve_forever()) for s in servers]
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ports": ports}))
    tmp.rename(ports_file)
    await asyncio.gather(*tasks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoints", type=int, default=1)
    p.add_argument("--units", type=int, default=10)
    p.add_argument("--registers", type=int, default=100)
    p.add_argument("--ports-file", type=Path, required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(serve(a.endpoints, a.units, a.registers, a.ports_file))


if __name__ == "__main__":
    main()
