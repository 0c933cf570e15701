"""Envelope, key derivation, ack messages and topic names."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.protocol import ack, envelope, keys, topics
from edgegw.protocol.envelope import HEADER_SIZE, EnvelopeError, open_sealed, parse_header, seal

GW = "gw-0001"


@pytest.fixture(scope="module")
def key() -> bytes:
    return os.urandom(32)


def test_seal_open_round_trip_and_header(key: bytes) -> None:
    blob = seal(key, 7, 123456789012, GW, b"payload", flags=3)
    h = parse_header(blob)
    assert (h.version, h.flags, h.key_id, h.seq, len(h.nonce)) == (1, 3, 7, 123456789012, 12)
    assert blob[:2] == b"EG"
    assert h.pack() == blob[:HEADER_SIZE]
    h2, pt = open_sealed(key, GW, blob)
    assert (h2, pt) == (h, b"payload")
    # a fresh nonce every time: two seals of the same input differ
    assert seal(key, 7, 1, GW, b"x") != seal(key, 7, 1, GW, b"x")


def test_every_single_bit_flip_is_rejected(key: bytes) -> None:
    blob = seal(key, 1, 42, GW, b"some plaintext of a batch")
    for i in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                open_sealed(key, GW, bytes(bad))


def test_gateway_id_is_authenticated(key: bytes) -> None:
    blob = seal(key, 1, 42, GW, b"data")
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(key, "gw-0002", blob)
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(key, GW + "\0", blob)


def test_wrong_key_and_key_id(key: bytes) -> None:
    blob = seal(key, 1, 42, GW, b"data")
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(os.urandom(32), GW, blob)
    with pytest.raises(EnvelopeError, match="key id 1, expected 2"):
        open_sealed(key, GW, blob, expected_key_id=2)
    # rewriting the key id in the header (to steer the receiver to another key) fails too
    forged = bytearray(blob)
    forged[7] ^= 0x01
    assert parse_header(bytes(forged)).key_id == 0
    with pytest.raises(EnvelopeError):
        open_sealed(key, GW, bytes(forged))


def test_malformed_envelopes(key: bytes) -> None:
    blob = seal(key, 1, 1, GW, b"")
    for bad, needle in [
        (b"", "shorter"),
        (blob[: HEADER_SIZE + 15], "shorter"),
        (b"XX" + blob[2:], "magic"),
        (blob[:2] + b"\x02" + blob[3:], "version 2"),
    ]:
        with pytest.raises(EnvelopeError, match=needle):
            open_sealed(key, GW, bad)
    with pytest.raises(EnvelopeError, match="32 bytes"):
        open_sealed(b"short", GW, blob)
    with pytest.raises(EnvelopeError, match=r"2\*\*63"):
        seal(key, 1, 2**63, GW, b"")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80))
def test_fuzz_only_envelope_error(data: bytes) -> None:
    k = b"k" * 32
    for blob in (data, b"EG\x01" + data):
        with pytest.raises(EnvelopeError):
            open_sealed(k, GW, blob)


def test_key_derivation_agrees_on_both_sides_and_rotates() -> None:
    gw_key = ec.generate_private_key(ec.SECP256R1())
    ingest_key = ec.generate_private_key(ec.SECP256R1())
    k_gw = keys.derive_data_key(gw_key, ingest_key.public_key(), 5, GW)
    k_cloud = keys.derive_data_key(ingest_key, gw_key.public_key(), 5, GW)
    assert k_gw == k_cloud and len(k_gw) == 32
    assert keys.derive_data_key(gw_key, ingest_key.public_key(), 6, GW) != k_gw
    assert keys.derive_data_key(gw_key, ingest_key.public_key(), 5, "gw-other") != k_gw
    sealer = keys.Sealer(k_gw, 5, GW)
    blob = sealer.seal(99, b"batch")
    assert open_sealed(k_cloud, GW, blob, expected_key_id=5)[1] == b"batch"
    assert sealer.open(blob)[0].seq == 99
    # the cloud opening with the key of another key id fails
    k6 = keys.derive_data_key(ingest_key, gw_key.public_key(), 6, GW)
    with pytest.raises(EnvelopeError):
        open_sealed(k6, GW, blob)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        keys.derive_data_key(p384, ingest_key.public_key(), 5, GW)


def test_acks_round_trip_and_errors() -> None:
    items = [(1, 0), (2**64 - 1, 1), (77, 2)]
    out = ack.decode_acks(ack.encode_acks(items))
    assert out == [(1, ack.AckStatus.DELIVERED), (2**64 - 1, ack.AckStatus.RETRY),
                   (77, ack.AckStatus.REJECTED)]
    assert ack.encode_acks([]) == b"\x01\x00\x00"
    good = ack.encode_acks(items)
    for bad in (b"", b"\x01\x00", b"\x02" + good[1:], good[:-1], good + b"\x00",
                good[:-1] + b"\x03"):
        with pytest.raises(ack.AckError):
            ack.decode_acks(bad)
    for bad_items in ([(-1, 0)], [(1, 3)], [(0, 0)] * 70000):
        with pytest.raises(ack.AckError):
            ack.encode_acks(bad_items)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40))
def test_fuzz_acks(data: bytes) -> None:
    try:
        out = ack.decode_acks(data)
    except ack.AckError:
        return
    assert ack.encode_acks(out) == data


def test_topics() -> None:
    assert topics.up_batch("g1") == "gw/g1/up/batch"
    assert topics.up_status("g1") == "gw/g1/up/status"
    assert topics.down_ack("g1") == "gw/g1/down/ack"
    assert topics.down("g1", "ota/chunk") == "gw/g1/down/ota/chunk"
    assert topics.down_subscription("g1") == "gw/g1/down/#"
    assert topics.INGEST_SUBSCRIPTION == "$share/ingest/gw/+/up/batch"
    assert topics.gateway_of("gw/g1/up/batch") == "g1"
    assert topics.gateway_of("other/g1") is None
    for bad in ("", "a/b", "a+", "#", "$SYS", "a\0"):
        with pytest.raises(ValueError):
            topics.up_batch(bad)
    with pytest.raises(ValueError):
        topics.down("g1", "x/#")
    assert envelope.MAGIC == b"EG"
