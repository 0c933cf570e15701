"""End-to-end acknowledgements (cloud ingest -> gateway on gw/{id}/down/ack).

Layout (big-endian): version u8 (=1), count u16, then count x (seq u64, status u8).
Status values are part of the wire format: 0 delivered (durably stored), 1 retry (send again
later), 2 rejected (will never be accepted: the gateway quarantines the batch).
Invariant: ``decode_acks`` raises ``AckError`` on any malformed input and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum

VERSION = 1
MAX_ACKS = 0xFFFF
_HEAD = struct.Struct(">BH")
_ITEM = struct.Struct(">QB")


class AckStatus(IntEnum):
    DELIVERED = 0
    RETRY = 1
    REJECTED = 2


class AckError(ValueError):
    """Malformed ack message (or unencodable acks)."""


def encode_acks(acks: Iterable[tuple[int, int]]) -> bytes:
    items = list(acks)
    if len(items) > MAX_ACKS:
        raise AckError(f"{len(items)} acks in one message; at most {MAX_ACKS}")
    out = bytearray(_HEAD.pack(VERSION, len(items)))
    for seq, status in items:
        if not isinstance(seq, int) or not 0 <= seq < 2**64:
            raise AckError(f"ack seq {seq!r} outside u64")
        try:
            st = AckStatus(status)
        except ValueError:
            raise AckError(f"unknown ack status {status!r} for seq {seq}") from None
        out += _ITEM.pack(seq, st)
    return bytes(out)


def decode_acks(data: bytes) -> list[tuple[int, AckStatus]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AckError(f"expected bytes, got {type(data).__name__}")
    if len(data) < _HEAD.size:
        raise AckError(f"ack message of {len(data)} bytes is shorter than its header")
    version, count = _HEAD.unpack_from(data)
    if version != VERSION:
        raise AckError(f"unsupported ack version {version} (this build reads {VERSION})")
    if len(data) != _HEAD.size + count * _ITEM.size:
        raise AckError(f"ack message announces {count} acks but has {len(data)} bytes")
    out = []
    for seq, status in _ITEM.iter_unpack(bytes(data[_HEAD.size :])):
        try:
            out.append((seq, AckStatus(status)))
        except ValueError:
            raise AckError(f"unknown ack status {status} for seq {seq}") from None
    return out
