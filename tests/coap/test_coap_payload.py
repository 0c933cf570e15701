"""Payload decoding: accepted shapes give exact samples; everything else is a clear Malformed."""

from __future__ import annotations

import cbor2
import pytest
from pydantic import ValidationError

from edgegw.drivers.coap import CoapOptions
from edgegw.drivers.coap.payload import Malformed, UnsupportedFormat, decode, to_samples
from edgegw.model import Sample

NOW = 1_790_000_000_000


def samples(payload: bytes, cf: int | None = 50) -> list[Sample]:
    return to_samples(decode(payload, cf), "dev", NOW, max_samples=10, max_skew_ms=60_000)


def test_accepted_shapes() -> None:
    assert samples(b'{"a": 1, "b": 2.5, "c": "x", "d": false}') == [
        Sample("dev", "a", NOW, 1), Sample("dev", "b", NOW, 2.5),
        Sample("dev", "c", NOW, "x"), Sample("dev", "d", NOW, False),
    ]
    assert samples(b'{"ts": 1700000000000, "values": {"a": 1}}', None) == [
        Sample("dev", "a", 1_700_000_000_000, 1)
    ]
    doc = [{"values": {"a": 1}}, {"ts": NOW - 5, "values": {"b": b"\x00"}}]
    assert samples(cbor2.dumps(doc), 60) == [
        Sample("dev", "a", NOW, 1), Sample("dev", "b", NOW - 5, b"\x00")
    ]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "invalid JSON"),
        (b"\xff", "invalid JSON"),
        (b"[]", "empty list"),
        (b"[1]", "expected an object"),
        (b'{"a": {"b": 1}}', "unsupported value type dict"),
        (b'{"a": null}', "unsupported value type NoneType"),
        (b'{"_status": 1}', "reserved"),
        (b'{"ts": 1700000000000, "a": 1}', "under 'values'"),
        (b'{"ts": "now", "values": {"a": 1}}', "integer epoch"),
        (b'{"ts": 1790000999999, "values": {"a": 1}}', "plausible"),
        (b'{"values": {}}', "non-empty object"),
        (b'{"values": {"a": 1}, "x": 2}', "unexpected keys"),
        (b'{"a": 1e999}', "finite"),
        (b'{"a": 99999999999999999999}', "64-bit"),
        (b'{"m0":0,"m1":1,"m2":2,"m3":3,"m4":4,"m5":5,"m6":6,"m7":7,"m8":8,"m9":9,"mA":10}',
         "more than 10"),
    ],
)
def test_malformed_is_explained(payload: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        samples(payload)


def test_cbor_garbage_and_unknown_format() -> None:
    with pytest.raises(Malformed, match="invalid CBOR"):
        samples(b"\x9f\x01", 60)
    with pytest.raises(UnsupportedFormat, match="content-format 0"):
        decode(b"a=1", 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"devices": [{"id": "a"}]}, "no credentials"),
        ({"listen": "localhost", "devices": [{"id": "a", "insecure_no_auth": True}]},
         "not host:port"),
        ({"devices": [{"id": "a", "insecure_no_auth": True}] * 2}, "duplicate device ids"),
        ({"devices": [{"id": "a/b", "insecure_no_auth": True}]}, "invalid id .a/b."),
        ({"devices": [{"id": "a", "oscore": {"sender_id": "00", "recipient_id": "01",
                                             "master_secret": "00"}}]}, "at least 16 bytes"),
    ],
)
def test_bad_options_are_actionable(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CoapOptions.model_validate(options)
