"""A small simulated plant: pymodbus TCP servers with plausible, slowly changing values.

Each "site" is one Modbus TCP endpoint with several unit ids (boilers). Per unit:
- holding 0-1 float32 temperature (degC), 2-3 float32 pressure (bar), 4 uint16 flow (l/min),
  5-6 uint32 energy counter (Wh), 7 int16 setpoint (degC x 10, writable)
- input 0 int16 supply voltage (V x 10); coil 0 pump running; discrete 0 door closed
Values follow bounded random walks updated every 100 ms. Run: ``python -m examples.demo.plant
--sites 2 --units 3 --ports-file F`` (writes the chosen ports as JSON, then serves until killed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import socket
import struct
import time
from pathlib import Path

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

UNIT_IDS_BASE = 1


def f32(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def u32(value: int) -> list[int]:
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


class Boiler:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.temperature = rng.uniform(55, 70)
        self.pressure = rng.uniform(1.2, 2.0)
        self.flow = rng.randint(20, 40)
        self.energy = rng.randint(10_000, 90_000)
        self.voltage = 2300
        self.running = True

    def step(self) -> None:
        r = self.rng
        self.temperature = min(95.0, max(40.0, self.temperature + r.gauss(0, 0.05)))
        self.pressure = min(3.0, max(0.8, self.pressure + r.gauss(0, 0.002)))
        self.flow = min(80, max(0, self.flow + r.choice((-1, 0, 0, 0, 0, 1))))
        self.energy += r.randint(0, 3)
        self.voltage = min(2450, max(2150, self.voltage + r.choice((-1, 0, 0, 1))))
        if r.random() < 0.002:
            self.running = not self.running

    def holding(self) -> list[int]:
        return f32(self.temperature) + f32(self.pressure) + [self.flow] + u32(self.energy)


class Unit:
    """One simulated unit id: values advance with wall time, written into the registers on read."""

    def __init__(self, uid: int, boiler: Boiler) -> None:
        self.boiler = boiler
        self.last = time.monotonic()
        bits = [SimData(0, count=16, values=True, datatype=DataType.BITS)]
        self.device = SimDevice(
            id=uid,
            simdata=(
                bits,  # coils: pump running
                list(bits),  # discrete inputs: door closed
                [SimData(0, values=[0] * 7 + [650] + [0] * 24, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self.action,
        )

    def advance(self) -> None:
        now = time.monotonic()
        steps = min(100, int((now - self.last) / 0.1))
        for _ in range(steps):
            self.boiler.step()
        self.last += steps * 0.1

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        self.advance()
        b = self.boiler
        if function_code == 3:
            registers[0 - start_address : 7 - start_address] = b.holding()
        elif function_code == 4:
            registers[0 - start_address] = b.voltage
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(sites: int, units: int, ports_file: Path, seed: int) -> None:
    rng = random.Random(seed)
    ports = []
    servers = []
    for _ in range(sites):
        plant = [Unit(UNIT_IDS_BASE + i, Boiler(rng)) for i in range(units)]
        port = free_port()
        ports.append(port)
        servers.append(ModbusTcpServer([u.device for u in plant], address=("127.0.0.1", port)))
    tasks = [asyncio.create_task(srv.serve_forever()) for srv in servers]
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ports": ports, "units": list(range(1, units + 1))}))
    tmp.rename(ports_file)
    await asyncio.gather(*tasks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--units", type=int, default=3)
    p.add_argument("--ports-file", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)  # datastore deprecation notices
    asyncio.run(serve(a.sites, a.units, a.ports_file, a.seed))


if __name__ == "__main__":
    main()
