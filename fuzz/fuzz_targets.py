"""Fuzz targets: one function per decoder that parses bytes from outside, ``fn(data: bytes)``.

Each target feeds the input to the real decoder and accepts ONLY the exceptions its contract
names (``CodecError``, ``EnvelopeError``, ...). Anything else raised is a bug: the fuzzer
(``fuzz/run.py``, atheris) reports it as a crash, and tests/test_fuzz.py replays every committed
input (``fuzz/corpus/<target>/``, seeds and regression inputs) through the same function.

Targets and what they hold to:
- ``envelope``: ``parse_header`` / ``open_sealed`` raise ``EnvelopeError`` only; a sequence is
  never >= 2**63 after a successful parse.
- ``codec``: ``decode_any`` (versions 1, 2 and the re-packed version 3) raises ``CodecError``
  only, returns at most ``MAX_SAMPLES`` readings and gap counters below 2**63, re-packed parts
  add up (each part's readings and alerts, one digest per part), and what a version 1 batch
  returns re-encodes (the ingest stores exactly that).
- ``ack``: ``decode_acks`` raises ``AckError`` only.
- ``config``: the YAML config loader raises ``ConfigError`` only (whatever the file holds).
- ``coap``: the CoAP payload parser raises ``Malformed`` / ``UnsupportedFormat`` only.
- ``serial``: the line and binary frame decoders never raise, and give the same records and
  error counts for any split of the input stream (their documented invariant).
- ``modbus``: pymodbus' client framers (TCP and RTU) raise ``ModbusIOException`` only (what
  the bus's guard catches) and our register readers raise only what the driver catches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# imported here, not in its target: run.py instruments only what this module imports, and a
# config target importing the loader at its first call ran uninstrumented (coverage 18, flat)
from edgegw.config import ConfigError, load_config
from edgegw.drivers.coap import payload as coap_payload
from edgegw.drivers.modbus.codec import CodecError as ModbusCodecError
from edgegw.drivers.modbus.codec import compile_decoder
from edgegw.drivers.modbus.options import TYPE_WIDTH
from edgegw.drivers.serial.framing import BinaryDecoder, LineDecoder
from edgegw.drivers.serial.options import BinaryOptions, LineOptions
from edgegw.protocol import envelope
from edgegw.protocol.ack import AckError, decode_acks
from edgegw.protocol.codec import MAX_SAMPLES, CodecError, decode_batch, encode_batch
from edgegw.protocol.codec_v2 import DIGEST_BYTES, DecodedV2, decode_any

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every undecodable frame

KEY = bytes(range(32))
GW = "gw-fuzz"


def fuzz_envelope(data: bytes) -> None:
    try:
        header = envelope.parse_header(data)
    except envelope.EnvelopeError:
        return
    assert 0 <= header.seq < 2**63
    with contextlib.suppress(envelope.EnvelopeError):
        envelope.open_sealed(KEY, GW, data)


def _names(epoch: int, ids: object) -> dict[int, tuple[str, str]]:
    return {i: ("dev", f"m{i}") for i in ids}  # type: ignore[attr-defined]


def fuzz_codec(data: bytes) -> None:
    try:
        batch = decode_any(data, _names)
    except CodecError:
        return
    assert batch.readings <= MAX_SAMPLES
    # what the cloud stores as signed 64-bit INTEGERs (a larger one rolled back a group commit)
    assert all(0 <= v < 2**63 for g in batch.gaps for v in (*g.seqs, g.batches, g.readings))
    if isinstance(batch, DecodedV2):
        if batch.parts:  # what the ingest splits a re-packed batch into adds up
            assert all(len(d) == DIGEST_BYTES for d in batch.part_digests)
            assert not batch.part_digests or len(batch.part_digests) == len(batch.parts)
            split = batch.split_parts()
            assert sum(len(s.ts) for _, lst in split for s in lst) == batch.readings
            if batch.alert_part_counts:
                assert sum(len(a) for _, a in batch.split_alert_parts()) == len(batch.alerts)
        return
    again = decode_batch(encode_batch(batch.samples, batch.alerts, batch.gaps))
    assert again.readings == batch.readings
    assert len(again.alerts) == len(batch.alerts) and again.gaps == batch.gaps


def fuzz_ack(data: bytes) -> None:
    with contextlib.suppress(AckError):
        decode_acks(data)


_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="edgegw-fuzz-config-"))


def fuzz_config(data: bytes) -> None:
    path = _CONFIG_DIR / "gateway.yaml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path, env={"X": "1"})


def fuzz_coap(data: bytes) -> None:
    if not data:
        return
    cf = (None, coap_payload.JSON, coap_payload.CBOR, 0)[data[0] % 4]
    try:
        doc = coap_payload.decode(data[1:], cf)
        coap_payload.to_samples(doc, "dev", 1_800_000_000_000, max_samples=100,
                                max_skew_ms=60_000)
    except (coap_payload.Malformed, coap_payload.UnsupportedFormat):
        pass


_SERIAL_CONFIGS: list[Callable[[], LineDecoder | BinaryDecoder]] = [
    lambda: LineDecoder(LineOptions.model_validate(
        {"regex": r"T=(?P<temp>-?[\d.]+) H=(?P<hum>\d+)", "types": {"temp": "float"},
         "terminator": "\r\n", "max_length": 64})),
    lambda: LineDecoder(LineOptions.model_validate(
        {"parse": "kv", "pair_separator": ";", "max_length": 64})),
    lambda: LineDecoder(LineOptions.model_validate(
        {"parse": "delimited", "fields": ["a", None, "b"], "types": {"a": "int", "b": "bool"},
         "encoding": "latin-1"})),
    lambda: BinaryDecoder(BinaryOptions.model_validate(
        {"start": "AA 55", "length": {"offset": 2, "size": 1, "counts": "payload"},
         "layout": ">hHB", "fields": ["temp", "hum", None],
         "checksum": {"type": "crc16-modbus", "covers_from": 2}, "end": "0D",
         "max_frame": 64}), {"temp": 0.1}),
    lambda: BinaryDecoder(BinaryOptions.model_validate(
        {"start": "02", "length": {"offset": 1, "size": 2, "endian": "little", "counts": "rest",
                                   "adjust": -1},
         "layout": "<f", "fields": ["x"], "checksum": {"type": "xor"}, "max_frame": 32}), {}),
    lambda: BinaryDecoder(BinaryOptions.model_validate(
        {"start": "7E", "layout": ">BB", "fields": ["a", "b"],
         "checksum": {"type": "sum8", "covers_from": 1}, "end": "7E", "max_frame": 16}), {}),
]


def _feed(
    decoder: LineDecoder | BinaryDecoder, chunks: list[bytes]
) -> tuple[list[Any], Counter[str]]:
    records: list[Any] = []
    errors: Counter[str] = Counter()
    for c in chunks:
        r = decoder.feed(c)
        records += r.records
        errors.update(r.errors)
    return records, +errors


def fuzz_serial(data: bytes) -> None:
    if len(data) < 2:
        return
    make = _SERIAL_CONFIGS[data[0] % len(_SERIAL_CONFIGS)]
    step = data[1] % 7 + 1
    body = data[2:]
    whole = _feed(make(), [body])
    split = _feed(make(), [body[i:i + step] for i in range(0, len(body), step)])
    assert _same(whole, split), (whole, split)


def _same(a: tuple[list[Any], Counter[str]], b: tuple[list[Any], Counter[str]]) -> bool:
    """Equal records (NaN == NaN: a float payload may decode to NaN) and equal counters."""
    if a[1] != b[1] or len(a[0]) != len(b[0]):
        return False
    return all(repr(x) == repr(y) for x, y in zip(a[0], b[0], strict=True))


def fuzz_modbus(data: bytes) -> None:
    from pymodbus.exceptions import ModbusIOException
    from pymodbus.framer import FramerRTU, FramerSocket
    from pymodbus.pdu import DecodePDU

    if not data:
        return
    framer = (FramerSocket if data[0] & 1 else FramerRTU)(DecodePDU(False))
    buf = data[1:]
    for _ in range(64):  # a frame per round; a framer that consumes nothing ends the loop
        try:
            used, pdu = framer.handleFrame(buf, 0, 0)
        except ModbusIOException:
            return  # the bus's guard turns this into a MalformedFrameError for the request
        if pdu is not None:
            _read_points(pdu)
        if used <= 0:
            return
        buf = buf[used:]


def _read_points(pdu: Any) -> None:
    values = list(getattr(pdu, "registers", None) or getattr(pdu, "bits", None) or [])
    for dtype, width in TYPE_WIDTH.items():
        for word_order, byte_order in (("big", "big"), ("little", "little")):
            try:
                fn = compile_decoder(dtype, width or 2, word_order=word_order,
                                     byte_order=byte_order, bit=3)
            except ModbusCodecError:
                continue
            for at in range(min(len(values), 4)):
                # exactly what ModbusDriver.read catches (counted decode_error)
                with contextlib.suppress(struct.error, IndexError, TypeError, ValueError):
                    fn(values, at)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": fuzz_envelope,
    "codec": fuzz_codec,
    "ack": fuzz_ack,
    "config": fuzz_config,
    "coap": fuzz_coap,
    "serial": fuzz_serial,
    "modbus": fuzz_modbus,
}


def replay(target: str, corpus: Path) -> int:
    """Run every file of ``corpus`` through ``target`` (no fuzzer); returns the count."""
    n = 0
    for f in sorted(corpus.iterdir()):
        if f.is_file():
            TARGETS[target](f.read_bytes())
            n += 1
    return n


if __name__ == "__main__":  # pragma: no cover
    print(" ".join(TARGETS), os.getpid())
