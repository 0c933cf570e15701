"""A real pymodbus server (TCP, RTU on a serial port, or RTU framing over TCP) for tests.

Run as a script in a subprocess. It serves ``--units`` with the register ``layout()`` below
(every kind and data type, both word orders, both byte orders), and talks JSON lines:
stdout first line ``{"ready": true, "port": N}``; then one reply line per stdin command:

- ``{"op": "counts"}`` -> ``{"counts": {"<unit>": {"<function code>": n}}}`` (requests seen)
- ``{"op": "counter", "unit": u}``: holding register 0 of unit u counts the reads that include
  it; ``{"op": "served"}`` -> ``{"served": [[unit, value, wall_ms], ...]}`` since the last call
- ``{"op": "mode", "unit": u | null, "mode": m}`` with m one of
  ``normal`` | ``silent`` (read the request, never answer; the TCP connection stays open) |
  ``exception`` (exception response 2) | ``short`` (fewer registers than asked, well-formed) |
  ``malformed`` (byte count larger than the frame) | ``garbage`` (RTU: CRC corrupted)
- ``{"op": "get", "unit": u, "table": "h|i|c|d", "address": a, "count": n}``
  -> ``{"values": [...]}``
- ``{"op": "set", "unit": u, "table": ..., "address": a, "values": [...]}``

The datastore is a test double of the *storage* only (a ModbusServerContext on pymodbus'
"old simulator" path); framing, PDUs and transport are pymodbus' own. Values are encoded with
pymodbus' ``convert_to_registers`` so the driver's codec is checked against an independent one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

TABLE_OF_FC = {1: "c", 5: "c", 15: "c", 2: "d", 3: "h", 6: "h", 16: "h", 4: "i"}


def layout(unit: int) -> list[dict[str, Any]]:
    """Points of one unit: driver point config plus ``raw`` (what is stored) and ``value``."""
    pts: list[dict[str, Any]] = []

    def add(kind: str, address: int, dtype: str, raw: Any, **extra: Any) -> None:
        name = f"{kind[0]}_{dtype}_{address}"
        value = raw
        if "scale" in extra or "offset" in extra:
            value = raw * extra.get("scale", 1.0) + extra.get("offset", 0.0)
        if dtype == "bit":
            value = bool((raw >> extra["bit"]) & 1)
        if dtype == "bool" and kind in ("holding", "input"):
            value = raw != 0
        pts.append({"name": name, "kind": kind, "address": address, "type": dtype,
                    "raw": raw, "value": value, **extra})

    for kind, seed in (("holding", unit), ("input", unit + 100)):
        add(kind, 0, "int16", -123 * seed)
        add(kind, 1, "uint16", 40000 + seed)
        add(kind, 2, "int32", -100_000 * seed - 7)
        add(kind, 4, "uint32", 3_000_000_000 + seed)
        add(kind, 6, "int64", -(2**40) * seed - 3)
        add(kind, 10, "uint64", 2**63 + 12345 * seed)
        add(kind, 14, "float32", 1.5 + seed)
        add(kind, 16, "float64", 3.141592653589793 * seed)
        add(kind, 20, "string", f"UNIT{seed}", length=4)
        bits = 0b0001_0000_0000_1000 | (seed & 0x7) << 5
        add(kind, 24, "bit", bits, bit=3)
        pts.append({**pts[-1], "name": f"{kind[0]}_bit_24_12", "bit": 12, "value": True})
        pts.append({**pts[-1], "name": f"{kind[0]}_bit_24_0", "bit": 0, "value": False})
        add(kind, 25, "bool", seed % 2)
        add(kind, 26, "uint16", 2315 + seed, scale=0.1, offset=-10.0)
        add(kind, 27, "int16", 500, max=100.0)
        # word order little (low word first)
        add(kind, 30, "int32", -7_654_321 * seed, word_order="little")
        add(kind, 32, "uint32", 4_000_000_000 + seed, word_order="little")
        add(kind, 34, "int64", -(2**50) - seed, word_order="little")
        add(kind, 38, "uint64", 2**64 - 1 - seed, word_order="little")
        add(kind, 42, "float32", -0.75 * seed, word_order="little")
        add(kind, 44, "float64", 1e300 / seed, word_order="little")
        # byte order little (bytes swapped inside each register)
        add(kind, 50, "float32", 2.5 * seed, byte_order="little")
        add(kind, 52, "int32", -99 * seed, word_order="little", byte_order="little")
        add(kind, 54, "uint16", 0x1234 + seed, byte_order="little")
        add(kind, 56, "string", f"ab{seed}", length=3, byte_order="little")
    for i in range(10):
        pts.append({"name": f"c_{i}", "kind": "coil", "address": i, "type": "bool",
                    "raw": (i + unit) % 3 == 0, "value": (i + unit) % 3 == 0})
        pts.append({"name": f"d_{i}", "kind": "discrete", "address": 100 + i, "type": "bool",
                    "raw": (i * unit) % 2 == 0, "value": (i * unit) % 2 == 0})
    return pts


def driver_points(unit: int) -> list[dict[str, Any]]:
    """The layout as driver point configs (without the test-only keys)."""
    return [{k: v for k, v in p.items() if k not in ("raw", "value")} for p in layout(unit)]


def _encode(point: dict[str, Any]) -> list[int]:
    from pymodbus.client import ModbusTcpClient as C

    dtype, raw = point["type"], point["raw"]
    if dtype in ("bit", "bool"):
        return [int(raw)]
    if dtype == "string":
        regs = C.convert_to_registers(raw, C.DATATYPE.STRING)
        regs += [0] * (point["length"] - len(regs))
    else:
        regs = C.convert_to_registers(
            raw, getattr(C.DATATYPE, dtype.upper()), word_order=point.get("word_order", "big")
        )
    if point.get("byte_order") == "little":
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return regs


def build_tables(units: list[int]) -> dict[int, dict[str, list[Any]]]:
    tables: dict[int, dict[str, list[Any]]] = {}
    for unit in units:
        t: dict[str, list[Any]] = {"h": [0] * 65536, "i": [0] * 65536,
                                   "c": [False] * 65536, "d": [False] * 65536}
        for p in layout(unit):
            if p["kind"] in ("coil", "discrete"):
                t[p["kind"][0]][p["address"]] = bool(p["raw"])
                continue
            regs = _encode(p)
            t[p["kind"][0]][p["address"] : p["address"] + len(regs)] = regs
        tables[unit] = t
    return tables


def main() -> None:
    from pymodbus.constants import ExcCodes
    from pymodbus.datastore import ModbusServerContext
    from pymodbus.exceptions import NoSuchIdException
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", type=int, help="listen on 127.0.0.1:PORT (0 = pick one)")
    ap.add_argument("--serial", help="serve RTU on this serial port / pty")
    ap.add_argument("--rtu-over-tcp", action="store_true", help="RTU framing on the TCP port")
    ap.add_argument("--units", default="1,2,3")
    args = ap.parse_args()
    units = [int(u) for u in args.units.split(",")]
    tables = build_tables(units)
    modes: dict[int, str] = dict.fromkeys(units, "normal")
    counts: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    counters: set[int] = set()
    served: list[tuple[int, int, int]] = []  # (unit, counter value, wall ms) in counter mode
    is_rtu = bool(args.serial) or args.rtu_over_tcp

    class Store(ModbusServerContext):
        def __init__(self) -> None:  # bypass the deprecated datastore; storage is ours
            self.old_simulator = True
            self.simdevices = []
            self._devices = {}

        async def async_getValues(self, device_id: int, func_code: int, address: int,
                                  count: int = 1) -> Any:
            if device_id not in tables:
                raise NoSuchIdException(f"no unit {device_id}")
            if modes[device_id] == "exception":
                return ExcCodes.ILLEGAL_ADDRESS
            if device_id in counters and func_code == 3 and address <= 0 < address + count:
                # counter mode: holding register 0 counts the reads that include it, so every
                # reading the plant served is identified by its value (soak accounting)
                table = tables[device_id]["h"]
                table[0] = (table[0] + 1) & 0xFFFF
                served.append((device_id, table[0], time.time_ns() // 1_000_000))
            values = tables[device_id][TABLE_OF_FC[func_code]][address : address + count]
            if modes[device_id] == "short" and func_code in (3, 4) and count > 1:
                return values[: count // 2]
            return list(values)

        async def async_setValues(self, device_id: int, func_code: int, address: int,
                                  values: Any) -> Any:
            if device_id not in tables:
                raise NoSuchIdException(f"no unit {device_id}")
            if modes[device_id] == "exception":
                return ExcCodes.ILLEGAL_ADDRESS
            table = tables[device_id][TABLE_OF_FC[func_code]]
            table[address : address + len(values)] = list(values)
            return None

        def device_ids(self) -> list[int]:
            return list(tables)

    def trace_pdu(sending: bool, pdu: Any) -> Any:
        if not sending:
            counts[pdu.dev_id][pdu.function_code] += 1
        return pdu

    def trace_packet(sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if is_rtu else data[6]
        mode = modes.get(unit, "normal")
        if mode == "silent":
            return b""
        if mode == "malformed":
            at = 2 if is_rtu else 8  # the byte-count field of a read response
            return data[:at] + b"\xfa" + data[at + 1 :]
        if mode == "garbage":
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "counts":
            seen = {str(u): {str(f): n for f, n in c.items()} for u, c in counts.items()}
            return {"counts": seen}
        if op == "counter":  # {"op": "counter", "unit": u}: holding 0 counts its reads
            unit = int(cmd["unit"])
            tables[unit]["h"][0] = 0
            counters.add(unit)
            return {"ok": True}
        if op == "served":  # the counter reads served since the last "served", then cleared
            out = list(served)
            served.clear()
            return {"served": out}
        if op == "reset_counts":
            counts.clear()
            return {"ok": True}
        if op == "mode":
            for u in [cmd["unit"]] if cmd.get("unit") is not None else list(modes):
                modes[u] = cmd["mode"]
            return {"ok": True}
        if op == "get":
            t = tables[cmd["unit"]][cmd["table"]]
            return {"values": list(t[cmd["address"] : cmd["address"] + cmd.get("count", 1)])}
        if op == "set":
            t = tables[cmd["unit"]][cmd["table"]]
            t[cmd["address"] : cmd["address"] + len(cmd["values"])] = cmd["values"]
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    async def serve() -> None:
        common: dict[str, Any] = {"trace_pdu": trace_pdu, "trace_packet": trace_packet}
        server: Any
        if args.serial:
            server = ModbusSerialServer(Store(), framer=FramerType.RTU, port=args.serial,
                                        baudrate=115200, **common)
        else:
            framer = FramerType.RTU if args.rtu_over_tcp else FramerType.SOCKET
            server = ModbusTcpServer(Store(), framer=framer,
                                     address=("127.0.0.1", args.tcp or 0), **common)
        await server.serve_forever(background=True)
        port = 0
        if not args.serial:
            port = server.transport.sockets[0].getsockname()[1]
        print(json.dumps({"ready": True, "port": port}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip():
                print(json.dumps(handle(json.loads(line))), flush=True)
        await server.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
