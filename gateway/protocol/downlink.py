"""Device-management messages: cloud -> gateway (downlink) and gateway -> cloud (replies).

Topics: the cloud publishes on ``gw/{id}/down/<kind>``, the gateway answers on
``gw/{id}/up/<kind>`` (``kind`` in ``KINDS``: command, shadow, config, ota, info, ...).

Sealed message layout (big-endian)::

    magic "ED" | version u8 (=1) | direction u8 | key_id u32 | seq u64 | issued_ms u64
    | expires_ms u64 | nonce 12 B | AES-256-GCM(ciphertext of a JSON object) + tag 16 B

Invariants:
- End to end, like batch envelopes: the broker alone is not trusted. The key is derived on both
  sides from the same ECDH pair as the data key (gateway key x cloud ingest key-agreement key),
  with HKDF info ``b"edgegw msg v1|" + direction + b"|" + gateway id``: downlink (cloud ->
  gateway) and uplink-reply (gateway -> cloud) keys differ from each other and from the batch
  data key, so a message can never be reflected back or reused as the other kind.
- AAD = header bytes + ``b"|" + gateway id + b"|" + kind``: a message cannot be moved to
  another gateway or another kind (topic) without failing authentication.
- ``open_message`` raises ``MessageError`` with a stable ``reason`` (``malformed``,
  ``unknown_key``, ``auth``, ``expired``, ``direction``) and nothing else; the receiver counts
  refusals by reason. Replay refusal needs state (``ReplayWindow``), the receiver owns it.
- Downlink sequences are per gateway, strictly increasing at the sender
  (``max(last + 1, wall clock in microseconds)``, so a wiped sender database never reuses one),
  persisted at the cloud; the gateway persists what it accepted (``ReplayWindow``).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"ED"
VERSION = 1
DOWN = 1  # cloud -> gateway
UP = 2  # gateway -> cloud (replies, reports)
_DIRECTION_LABEL = {DOWN: b"down", UP: b"up"}
_HEADER = struct.Struct(">2sBBIQQQ12s")
HEADER_SIZE = _HEADER.size  # 44
TAG_SIZE = 16
INFO_PREFIX = b"edgegw msg v1|"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a config bundle or an OTA chunk fits; anything larger: no

#: the message kinds (one topic level each). Handlers register by kind on the gateway.
COMMAND = "command"
SHADOW = "shadow"
CONFIG = "config"
OTA = "ota"
INFO = "info"  # gateway -> cloud: software/config version, device list (fleet registry)
KINDS = (COMMAND, SHADOW, CONFIG, OTA, INFO)


class MessageError(ValueError):
    """A message was refused. ``reason`` is a stable counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MessageHeader:
    direction: int
    key_id: int
    seq: int
    issued_ms: int
    expires_ms: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One authenticated device-management message (either direction)."""

    kind: str
    msg_id: str
    seq: int
    issued_ms: int
    expires_ms: int
    body: dict[str, Any] = field(default_factory=dict)
    key_id: int = 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_kind(kind: str) -> str:
    if not kind or not kind.replace("_", "").replace("-", "").isalnum() or len(kind) > 32:
        raise ValueError(f"message kind {kind!r} must be 1-32 letters, digits, '-' or '_'")
    return kind


def derive_message_key(
    own_private_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    key_id: int,
    gateway_id: str,
    direction: int,
) -> bytes:
    """The 32-byte key for messages of ``direction`` (``DOWN``/``UP``) of ``gateway_id``."""
    if direction not in _DIRECTION_LABEL:
        raise ValueError(f"direction must be DOWN ({DOWN}) or UP ({UP}), got {direction}")
    if not 0 <= key_id < 2**32:
        raise ValueError(f"key id {key_id} outside u32")
    shared = own_private_key.exchange(ec.ECDH(), peer_public_key)
    info = INFO_PREFIX + _DIRECTION_LABEL[direction] + b"|" + gateway_id.encode("utf-8")
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=struct.pack(">I", key_id), info=info
    ).derive(shared)


def parse_message_header(blob: bytes) -> MessageHeader:
    """The clear header (NOT authenticated: use a ``MessageCodec.open`` before trusting it)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise MessageError("malformed", f"expected bytes, got {type(blob).__name__}")
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        raise MessageError("malformed", f"message of {len(blob)} bytes is shorter than "
                                        "header + tag")
    if len(blob) > MAX_MESSAGE_BYTES:
        raise MessageError("malformed", f"message of {len(blob)} bytes exceeds "
                                        f"{MAX_MESSAGE_BYTES}")
    magic, version, direction, key_id, seq, issued, expires, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise MessageError("malformed", f"bad magic {bytes(magic)!r} (not an edgegw message)")
    if version != VERSION:
        raise MessageError("malformed", f"unsupported message version {version}")
    if direction not in _DIRECTION_LABEL:
        raise MessageError("malformed", f"unknown direction {direction}")
    return MessageHeader(direction, key_id, seq, issued, expires, nonce)


class MessageCodec:
    """Seals and opens messages of one direction for one gateway with one key."""

    def __init__(self, key: bytes, key_id: int, gateway_id: str, direction: int) -> None:
        if len(key) != 32:
            raise ValueError("message key must be 32 bytes")
        if direction not in _DIRECTION_LABEL:
            raise ValueError(f"bad direction {direction}")
        self.key_id = key_id
        self.gateway_id = gateway_id
        self.direction = direction
        self._aead = AESGCM(bytes(key))
        self._gw = gateway_id.encode("utf-8")

    def _aad(self, header: bytes, kind: str) -> bytes:
        return header + b"|" + self._gw + b"|" + kind.encode("utf-8")

    def seal(
        self,
        kind: str,
        msg_id: str,
        seq: int,
        body: dict[str, Any],
        *,
        expires_ms: int,
        issued_ms: int | None = None,
    ) -> bytes:
        check_kind(kind)
        issued = now_ms() if issued_ms is None else issued_ms
        if not (0 <= seq < 2**64 and 0 <= issued < 2**64 and 0 <= expires_ms < 2**64):
            raise ValueError("seq / issued / expires outside u64")
        header = _HEADER.pack(MAGIC, VERSION, self.direction, self.key_id, seq, issued,
                              expires_ms, os.urandom(12))
        plaintext = json.dumps({"id": msg_id, "kind": kind, "body": body},
                               separators=(",", ":"), default=str).encode("utf-8")
        blob = header + self._aead.encrypt(header[-12:], plaintext, self._aad(header, kind))
        if len(blob) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(blob)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return blob

    def open(self, kind: str, blob: bytes, *, now: int | None = None,
             check_expiry: bool = True) -> Message:
        """Authenticate + decrypt; refuse expired messages. Raises ``MessageError``."""
        h = parse_message_header(blob)
        if h.direction != self.direction:
            raise MessageError("direction", f"message direction {h.direction} where "
                                            f"{self.direction} was expected (reflected?)")
        if h.key_id != self.key_id:
            raise MessageError("unknown_key", f"message uses key id {h.key_id}, this side "
                                              f"has {self.key_id}")
        raw = bytes(blob)
        try:
            plaintext = self._aead.decrypt(h.nonce, raw[HEADER_SIZE:],
                                           self._aad(raw[:HEADER_SIZE], kind))
        except InvalidTag:
            raise MessageError("auth", f"{kind} message seq {h.seq} failed authentication "
                                       "(forged, tampered, wrong gateway or wrong kind)") from None
        try:
            doc = json.loads(plaintext)
            msg_id, body, inner_kind = doc["id"], doc["body"], doc["kind"]
            if not isinstance(msg_id, str) or not isinstance(body, dict) or inner_kind != kind:
                raise TypeError("id/body/kind")
        except (ValueError, KeyError, TypeError) as exc:
            # authentic but not a message we understand: the sender's bug, not an attack
            raise MessageError("malformed", f"authentic {kind} message seq {h.seq} has a bad "
                                            f"body: {exc}") from None
        if check_expiry and (now if now is not None else now_ms()) > h.expires_ms:
            raise MessageError("expired", f"{kind} message {msg_id} expired at {h.expires_ms}")
        return Message(kind, msg_id, h.seq, h.issued_ms, h.expires_ms, body, h.key_id)


class ReplayWindow:
    """Which downlink sequences were already accepted (pure logic; the owner persists it).

    A sequence is accepted once, and only if it is above ``highest - window`` (messages may
    arrive a little out of order when several cloud processes send to one gateway). Older
    ones are refused as replays; their expiry would refuse most of them anyway.
    """

    def __init__(self, highest: int = 0, seen: Iterable[int] = (),
                 window: int = 600_000_000) -> None:
        self.window = window
        self.highest = highest
        self.seen = {s for s in seen if s > highest - window}

    def check(self, seq: int) -> str | None:
        """None if ``seq`` is fresh, else why it is refused (without recording anything)."""
        if seq in self.seen:
            return "replay"
        if seq <= self.highest - self.window:
            return "replay"
        return None

    def accept(self, seq: int) -> None:
        self.seen.add(seq)
        if seq > self.highest:
            self.highest = seq
            floor = seq - self.window
            if len(self.seen) > 64:
                self.seen = {s for s in self.seen if s > floor}


def next_seq(last: int) -> int:
    """The next downlink sequence after ``last``: strictly increasing, time-based floor."""
    return max(last + 1, time.time_ns() // 1000)
