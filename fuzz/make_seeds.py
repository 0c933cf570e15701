"""Write the small seed corpora of fuzz/corpus/ (re-run after a format change; sealed seeds get
fresh random nonces, so commit only what changed for a reason)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgegw.model import Alert, Lane, Quality, Sample
from edgegw.protocol import envelope
from edgegw.protocol.ack import encode_acks
from edgegw.protocol.codec import Gap, encode_batch
from edgegw.protocol.codec_v2 import DIGEST_BYTES, encode_batch_v2

ROOT = Path(__file__).resolve().parent / "corpus"


def put(target: str, name: str, data: bytes) -> None:
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    import fuzz_targets as ft

    samples = [Sample("plc", "temp", 1_700_000_000_000 + i * 100, 20.0 + i / 10) for i in range(20)]
    samples += [Sample("plc", "count", 1_700_000_000_000 + i, i * 3) for i in range(10)]
    samples += [Sample("cam", "ok", 1_700_000_000_000, True, Quality.BAD_DATA),
                Sample("cam", "s", 1_700_000_000_001, "text"),
                Sample("cam", "b", 1_700_000_000_002, b"\x00\x01"),
                Sample("cam", "n", 1_700_000_000_003, None)]
    alerts = [Alert("hot", "plc", 1_700_000_000_500, True, message="too hot", metric="temp",
                    value=99.5, labels={"line": "2"})]
    gaps = [Gap(Lane.TELEMETRY, (3, 4, 9), 1_699_999_000_000, 1_699_999_900_000, 3, 1500,
                "dropped_oldest")]
    put("codec", "mixed", encode_batch(samples, alerts, gaps))
    put("codec", "floats", encode_batch([Sample("d", "x", i, v) for i, v in
                                         enumerate([0.1, 1e300, -0.0, float("inf"), 3.25])]))
    put("codec", "empty", encode_batch([]))
    put("codec", "v2", encode_batch_v2(samples, alerts, gaps)[0])
    put("codec", "v3-telemetry", encode_batch_v2(
        samples[:30], parts=[11, 12, 20], part_of=[i // 10 for i in range(30)],
        part_digests=[bytes([k]) * DIGEST_BYTES for k in (11, 12, 20)])[0])
    put("codec", "v3-alerts", encode_batch_v2(
        alerts=alerts * 3, parts=[5, 6], alert_part_of=[0, 0, 1],
        part_digests=[b"\x05" * DIGEST_BYTES, b"\x06" * DIGEST_BYTES])[0])
    put("envelope", "sealed", envelope.seal(ft.KEY, 1, 7, ft.GW, encode_batch(samples[:5])))
    put("envelope", "gap", envelope.seal(ft.KEY, 0, 2**63 - 1, ft.GW, b"", envelope.FLAG_GAP))
    put("ack", "three", encode_acks([(1, 0), (2**63, 1), (5, 2)]))
    put("ack", "empty", encode_acks([]))
    put("config", "minimal", b"gateway: {id: gw-1}\ndevices: []\n")
    put("config", "modbus", (
        b"gateway:\n  id: gw-1\n  state_dir: ./var\nbatch: {max_readings: 100, max_age: 1s}\n"
        b"devices:\n  - id: plc\n    driver: modbus\n    interval: 1s\n    options:\n"
        b"      endpoint: tcp://127.0.0.1:1502\n      unit_id: 1\n      points:\n"
        b"        - {name: t, address: 0, type: float32, scale: 0.1}\n"
        b"x: &a [${X}, ${Y:-2}, *a]\n"))
    put("coap", "json", b"\x01" + json.dumps({"temp": 21.5, "ok": True}).encode())
    put("coap", "json_ts", b"\x00" + json.dumps([{"ts": 1_800_000_000_000,
                                                   "values": {"rh": 40}}]).encode())
    put("coap", "cbor", b"\x02" + bytes.fromhex("a26474656d70f94d466272681828"))
    put("serial", "regex", b"\x00\x03T=21.5 H=40\r\nT=-3 H=x\r\n" + b"y" * 80 + b"\r\n")
    put("serial", "kv", b"\x01\x02a=1;b=2.5;c=x\n;;\nbad\n")
    put("serial", "delim", b"\x02\x05 1,skip,true\n2,,no\n\xff\xfe,1,1\n")
    payload = struct.pack(">hHB", 215, 40, 0)
    from edgegw.drivers.serial.checksums import crc16_modbus
    body = bytes([len(payload)]) + payload
    frame = b"\xaa\x55" + body + crc16_modbus(body).to_bytes(2, "little") + b"\x0d"
    put("serial", "binary", b"\x03\x01" + b"junk" + frame + frame[:5] + frame)
    put("modbus", "tcp_read_holding", b"\x01" + bytes.fromhex("000100000007010304000a0014"))
    put("modbus", "rtu_read_holding", b"\x00" + bytes.fromhex("010304000a0014") + b"\xda\x3e")
    put("modbus", "tcp_coils", b"\x01" + bytes.fromhex("00020000000401010105"))
    put("modbus", "tcp_exception", b"\x01" + bytes.fromhex("000300000003018302"))
    # regression inputs of issue 9 (each crashed its target before the fix)
    put("coap", "regress-deep-json", b"\x01" + b"[" * 8000 + b"]" * 8000)  # 5.00 + traceback
    head = struct.pack(">2sBBIQ12s", b"EG", 1, 0, 1, 2**63, bytes(12))
    put("envelope", "regress-seq-2-63", head + bytes(16))  # rolled back a group commit
    from edgegw.protocol import codec
    limit = codec.COUNTER_MAX
    codec.COUNTER_MAX = 2**64 - 1  # an encoder without the limit
    try:
        put("codec", "regress-gap-counter-2-63",
            encode_batch(gaps=[Gap(Lane.TELEMETRY, (2**63,), 0, 1, 2**63, 1, "x")]))
    finally:
        codec.COUNTER_MAX = limit


if __name__ == "__main__":
    main()
