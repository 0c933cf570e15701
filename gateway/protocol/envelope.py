"""Envelope: the sealed form of one batch on the wire and at rest (AES-256-GCM).

Layout (big-endian)::

    magic "EG" | version u8 (=1) | flags u8 | key_id u32 | seq u64 | nonce 12 B | ciphertext+tag

Invariants:
- The header (first ``HEADER_SIZE`` bytes) and the gateway id (utf-8) are the associated data:
  changing any bit of the header, the gateway id or the ciphertext makes ``open_sealed`` fail.
- Every failure to parse or authenticate raises ``EnvelopeError`` (never another exception type).
- Sequence numbers are below ``MAX_SEQ`` (2**63): the wire field is u64, but the cloud stores
  them in SQLite's signed 64-bit INTEGER, so a larger one is refused when the header is parsed
  (it used to fail the store's whole group commit, other gateways' batches with it).
- Nonces are 96 random bits from ``os.urandom`` (safe for far more than 2**32 batches per key id
  at this project's rates); a key rotation is a key-id bump (see ``keys``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"EG"
VERSION = 1
_HEADER = struct.Struct(">2sBBIQ12s")
HEADER_SIZE = _HEADER.size  # 28
TAG_SIZE = 16
#: sequence numbers are < 2**63 (signed 64-bit storage everywhere: SQLite INTEGER)
MAX_SEQ = 2**63
KEY_SIZE = 32
#: flags bit: the plaintext holds only gap records (the outbox's "we dropped these" notes)
FLAG_GAP = 0x01


class EnvelopeError(ValueError):
    """The blob is not an authentic envelope for this key and gateway. Message says why."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    flags: int
    key_id: int
    seq: int
    nonce: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, self.flags, self.key_id, self.seq, self.nonce)


def _check_key(key: bytes) -> AESGCM:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise EnvelopeError(f"data key must be {KEY_SIZE} bytes (AES-256)")
    return AESGCM(bytes(key))


def _aad(header: bytes, gateway_id: str) -> bytes:
    return header + gateway_id.encode("utf-8")


def seal(
    key: bytes, key_id: int, seq: int, gateway_id: str, plaintext: bytes, flags: int = 0
) -> bytes:
    """Encrypt ``plaintext`` into an envelope bound to ``gateway_id``, ``key_id`` and ``seq``."""
    if not 0 <= key_id < 2**32:
        raise EnvelopeError(f"key id {key_id} outside u32")
    if not 0 <= seq < MAX_SEQ:
        raise EnvelopeError(f"sequence {seq} outside [0, 2**63)")
    if not 0 <= flags < 256:
        raise EnvelopeError(f"flags {flags} outside u8")
    return _seal_with(_check_key(key), key_id, seq, gateway_id, plaintext, flags)


def _seal_with(
    aead: AESGCM, key_id: int, seq: int, gateway_id: str, plaintext: bytes, flags: int
) -> bytes:
    header = _HEADER.pack(MAGIC, VERSION, flags, key_id, seq, os.urandom(12))
    return header + aead.encrypt(header[16:], plaintext, _aad(header, gateway_id))


def parse_header(blob: bytes) -> Header:
    """Read the clear header (no authentication: use ``open_sealed`` before trusting it)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise EnvelopeError(f"expected bytes, got {type(blob).__name__}")
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        raise EnvelopeError(f"envelope of {len(blob)} bytes is shorter than header + tag")
    magic, version, flags, key_id, seq, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise EnvelopeError(f"bad magic {bytes(magic)!r} (not an edgegw envelope)")
    if version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version} (this build reads {VERSION})")
    if seq >= MAX_SEQ:
        raise EnvelopeError(f"sequence {seq} is not below 2**63 (refused: not storable)")
    return Header(version, flags, key_id, seq, nonce)


def open_sealed(
    key: bytes, gateway_id: str, blob: bytes, *, expected_key_id: int | None = None
) -> tuple[Header, bytes]:
    """Authenticate and decrypt an envelope. Raises ``EnvelopeError`` on any mismatch."""
    header = parse_header(blob)
    if expected_key_id is not None and header.key_id != expected_key_id:
        raise EnvelopeError(f"envelope uses key id {header.key_id}, expected {expected_key_id}")
    blob = bytes(blob)
    try:
        plaintext = _check_key(key).decrypt(
            header.nonce, blob[HEADER_SIZE:], _aad(blob[:HEADER_SIZE], gateway_id)
        )
    except InvalidTag:
        raise EnvelopeError(
            f"envelope seq {header.seq} key id {header.key_id} failed authentication "
            "(tampered, wrong gateway id or wrong key)"
        ) from None
    return header, plaintext
