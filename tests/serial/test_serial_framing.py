"""The I/O-free frame decoders: exact records and exact error counts for any split of the stream."""

from __future__ import annotations

import random
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgegw.drivers.serial import BinaryDecoder, LineDecoder, SerialOptions, make_decoder
from edgegw.drivers.serial.checksums import crc8, crc16_modbus, sum8, xor8
from edgegw.drivers.serial.options import BinaryOptions, LineOptions


def feed_all(
    decoder: LineDecoder | BinaryDecoder, chunks: list[bytes]
) -> tuple[list[dict], Counter]:
    records: list[dict] = []
    errors: Counter[str] = Counter()
    for c in chunks:
        r = decoder.feed(c)
        records += r.records
        errors.update(r.errors)
    return records, +errors


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 7)
        out.append(data[i : i + n])
        i += n
    return out


# ---------------------------------------------------------------------------- checksums
def test_checksums_match_reference_values() -> None:
    # Modbus RTU request "01 03 00 00 00 0A" has CRC C5 CD (sent low byte first).
    crc = crc16_modbus(bytes.fromhex("01030000000A"))
    assert crc.to_bytes(2, "little") == bytes.fromhex("C5CD")
    assert crc8(b"123456789") == 0xF4  # CRC-8/SMBUS check value (poly 0x07)
    assert crc8(b"123456789", poly=0x31, init=0xFF) == 0xF7  # CRC-8/NRSC-5 check value
    assert crc16_modbus(b"123456789") == 0x4B37  # CRC-16/MODBUS check value
    assert xor8(b"GPGGA") == 0x47 ^ 0x50 ^ 0x47 ^ 0x47 ^ 0x41
    assert sum8(bytes([0xFF, 0x02])) == 0x01


# ---------------------------------------------------------------------------- lines
def line_decoder(**line: object) -> LineDecoder:
    return LineDecoder(LineOptions.model_validate(line))


def test_regex_lines_typed_and_split_anywhere() -> None:
    opts = {"regex": r"T=(?P<temp>-?[\d.]+) H=(?P<hum>\d+) S=(?P<state>\w+)",
            "types": {"temp": "float"}, "terminator": "\r\n"}
    stream = b"".join(f"T={t}.5 H={h} S=ok\r\n".encode() for t, h in [(-3, 40), (21, 55), (7, 60)])
    for seed in range(20):
        recs, errs = feed_all(line_decoder(**opts), splits(stream, random.Random(seed)))
        assert recs == [
            {"temp": -3.5, "hum": 40, "state": "ok"},
            {"temp": 21.5, "hum": 55, "state": "ok"},
            {"temp": 7.5, "hum": 60, "state": "ok"},
        ]
        assert errs == Counter()


def test_line_errors_counted_exactly() -> None:
    dec = line_decoder(regex=r"^v=(?P<v>\d+)$", max_length=16)
    stream = (
        b"v=1\n"
        b"garbage here\n"  # parse_error
        b"v=" + b"9" * 40 + b"\n"  # line_too_long (detected before its terminator arrives)
        b"\xff\xfe\n"  # decode_error (not utf-8)
        b"\n"  # empty: ignored
        b"v=2\n"
    )
    for seed in range(10):
        dec.reset()
        recs, errs = feed_all(dec, splits(stream, random.Random(seed)))
        assert recs == [{"v": 1}, {"v": 2}]
        assert errs == Counter(parse_error=1, line_too_long=1, decode_error=1)


def test_kv_and_delimited_lines() -> None:
    kv = line_decoder(parse="kv", pair_separator=";", types={"id": "str", "on": "bool"})
    recs, errs = feed_all(kv, [b"id=07; t=1.25;on=true\n", b"broken\n"])
    assert recs == [{"id": "07", "t": 1.25, "on": True}]
    assert errs == Counter(parse_error=1)
    delim = line_decoder(parse="delimited", delimiter=",", fields=["a", None, "c"],
                         types={"c": "hex"})
    recs, errs = feed_all(delim, [b"1,x,ff\n2,y\n3,z,10\n"])
    assert recs == [{"a": 1, "c": 255}, {"a": 3, "c": 16}]
    assert errs == Counter(parse_error=1)


# ---------------------------------------------------------------------------- binary
BIN = {
    "start": "AA 55",
    "length": {"offset": 2, "size": 1, "counts": "payload"},
    "layout": ">hHB",
    "fields": ["temp", "hum", None],
    "checksum": {"type": "crc16-modbus", "covers_from": 2},
    "end": "0D",
    "max_frame": 64,
}


def frame(temp: int, hum: int, flag: int = 0, *, corrupt: bool = False) -> bytes:
    payload = struct.pack(">hHB", temp, hum, flag)
    body = bytes([len(payload)]) + payload
    crc = crc16_modbus(body) ^ (1 if corrupt else 0)
    return b"\xaa\x55" + body + crc.to_bytes(2, "little") + b"\x0d"


def test_binary_frames_with_garbage_partial_and_bad_crc() -> None:
    stream = (
        b"\x01\x02\x03"  # garbage run 1
        + frame(215, 40)
        + frame(216, 41, corrupt=True)  # checksum_error
        + frame(217, 42)[:5]  # partial frame (sensor reset): its claimed length ends on a byte
        # of the next frame that is not the end marker -> bad_end_marker, resync on next start
        + frame(218, 43)
        + b"\x10\x20"  # garbage run 2
        + frame(-5, 44)
        + b"\xaa\x55\xff"  # length 255: bad_length
        + frame(219, 45)
    )
    for seed in range(30):
        dec = BinaryDecoder(BinaryOptions.model_validate(BIN), {"temp": 0.1})
        recs, errs = feed_all(dec, splits(stream, random.Random(seed)))
        assert [(round(r["temp"], 1), r["hum"]) for r in recs] == [
            (21.5, 40), (21.8, 43), (-0.5, 44), (21.9, 45)
        ]
        assert errs == Counter(
            garbage=2, garbage_bytes=5, checksum_error=1, bad_end_marker=1, bad_length=1
        )


def test_binary_fixed_length_sum8_and_crc8_poly() -> None:
    base = {"start": "7E", "layout": "<HB", "fields": ["level", "code"]}
    opts = BinaryOptions.model_validate(base | {"checksum": {"type": "sum8", "covers_from": 1}})
    body = struct.pack("<HB", 1000, 3)
    good = b"\x7e" + body + bytes([sum8(body)])
    recs, errs = feed_all(BinaryDecoder(opts), [good, good[:-1] + b"\x00" + good])
    assert recs == [{"level": 1000, "code": 3}] * 2
    assert errs == Counter(checksum_error=1)
    opts8 = BinaryOptions.model_validate(base | {"checksum": {"type": "crc8", "poly": 0x31}})
    good8 = b"\x7e" + body + bytes([crc8(b"\x7e" + body, poly=0x31)])
    recs, errs = feed_all(BinaryDecoder(opts8), [good8, good])  # second uses sum8: wrong
    assert recs == [{"level": 1000, "code": 3}]
    assert errs["checksum_error"] == 1


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.tuples(st.integers(-300, 300), st.integers(0, 999)), max_size=8),
    seed=st.integers(0, 10_000),
)
def test_binary_any_split_gives_same_result(values: list[tuple[int, int]], seed: int) -> None:
    stream = b"".join(frame(t, h) for t, h in values)
    dec = BinaryDecoder(BinaryOptions.model_validate(BIN))
    recs, errs = feed_all(dec, splits(stream, random.Random(seed)))
    assert [(r["temp"], r["hum"]) for r in recs] == values
    assert errs == Counter()


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": "/dev/x"}, "exactly one of `line`"),
        ({"port": "/dev/x", "line": {"regex": "no groups"}}, "no named groups"),
        ({"port": "/dev/x", "binary": BIN | {"layout": "hHB"}}, "explicit byte order"),
        ({"port": "/dev/x", "binary": BIN | {"fields": ["a"]}}, "unpacks 3 values"),
        ({"port": "/dev/x", "binary": BIN | {"start": "zz"}}, "bad hex bytes"),
        ({"port": "/dev/x", "mode": "request", "line": {"regex": "(?P<a>.)"}}, "needs `request`"),
        ({"port": "/dev/x", "line": {"regex": "(?P<a>.)"}, "reply_timeout": "5 sex"},
         "bad duration"),
    ],
)
def test_bad_options_have_actionable_errors(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SerialOptions.model_validate(options)


def test_make_decoder_and_points() -> None:
    from edgegw.drivers.serial import SerialDriver

    o = SerialOptions.model_validate({"port": "/dev/x", "binary": BIN})
    assert isinstance(make_decoder(o), BinaryDecoder)
    assert list(SerialDriver.points(o)) == ["temp", "hum"]
    assert SerialDriver.bus_key(o) is None
    r = SerialOptions.model_validate(
        {"port": "/dev/x", "mode": "request", "request": "R\r\n", "line": {"regex": "(?P<a>.)"}}
    )
    assert SerialDriver.bus_key(r) == "serial:/dev/x"
    assert r.request_bytes() == b"R\r\n"
