"""The issue-13 workloads' Modbus peer: TCP servers whose holding registers ALL change every 100 ms.

W1/W2 (ThingsBoard IoT Gateway's own kind of workload): one endpoint, unit ids 1..10, 100 holding
registers each. W3: the same per endpoint, several endpoints. Register r of unit u holds
``(u * 1000 + r * 7 + tick) & 0xFFFF`` with ``tick = int(wall time / 0.1 s)``, so every register
changes every 100 ms and the values are computed at read time (no timer task competes with the
server). Run: ``python bench/register_plant.py --endpoints 1 --units 10 --registers 100
--ports-file F`` (writes {"ports": [...]} when serving, then serves until killed).

``--fast``: a minimal Modbus TCP responder (asyncio Protocol; function 3 only, the same register
values, exception 0x01 for other functions, 0x02 beyond the registers, pipelined requests
answered in order) instead of pymodbus' server. W3 needs 1000 requests/s of 100 registers:
pymodbus' server in one Python process could not answer that on this machine (the gateway
skipped 80% of its slots waiting for it), so the plant, not the gateway, was measured. The
fast responder does the same wire work at a fraction of the CPU; it exists only for the bench
(the gateway's own Modbus client is pymodbus, unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import struct
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


_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id


class FastModbus(asyncio.Protocol):
    """Modbus TCP, function 3 (read holding registers), values as ``Unit.action`` computes."""

    def __init__(self, units: int, registers: int) -> None:
        self.units, self.registers = units, registers
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self._cache: dict[tuple[int, int, int], tuple[int, bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while len(buf) >= 7:
            tid, _pid, length, uid = _MBAP.unpack_from(buf)
            if length < 2 or len(buf) < 6 + length:
                break
            pdu, buf = buf[7:6 + length], buf[6 + length:]
            out.append(self._answer(tid, uid, pdu))
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _answer(self, tid: int, uid: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        if fc != 3 or len(pdu) != 5:
            return _MBAP.pack(tid, 0, 3, uid) + bytes((fc | 0x80, 1))
        address, count = struct.unpack_from(">HH", pdu, 1)
        if not 1 <= count <= 125 or address + count > self.registers or not (
                1 <= uid <= self.units):
            return _MBAP.pack(tid, 0, 3, uid) + bytes((0x83, 2))
        tick = int(time.time() * 10)
        key = (uid, address, count)
        hit = self._cache.get(key)
        if hit is None or hit[0] != tick:
            base = uid * 1000 + tick
            data = struct.pack(f">{count}H", *(
                (base + (address + i) * 7) & 0xFFFF for i in range(count)))
            hit = self._cache[key] = (tick, bytes((3, 2 * count)) + data)
        return _MBAP.pack(tid, 0, 1 + len(hit[1]), uid) + hit[1]


async def serve(endpoints: int, units: int, registers: int, ports_file: Path,
                fast: bool = False) -> None:
    ports, tasks = [], []
    loop = asyncio.get_running_loop()
    for _ in range(endpoints):
        port = free_port()
        ports.append(port)
        if fast:
            server = await loop.create_server(lambda: FastModbus(units, registers),
                                              "127.0.0.1", port)
            tasks.append(asyncio.create_task(server.serve_forever()))
            continue
        devs = [Unit(u, registers).device for u in range(1, units + 1)]
        tasks.append(asyncio.create_task(
            ModbusTcpServer(devs, address=("127.0.0.1", port)).serve_forever()))
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
    p.add_argument("--fast", action="store_true", help="minimal responder instead of pymodbus")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(serve(a.endpoints, a.units, a.registers, a.ports_file, a.fast))


if __name__ == "__main__":
    main()
