"""Data keys: derived on both sides, never sent.

``derive_data_key`` = HKDF-SHA256 over the ECDH (P-256) shared secret between the gateway's key
and the cloud ingest key, salt = key id (u32 big-endian), info = b"edgegw data v1|" + gateway id.
Gateway (own private key, ingest public key) and cloud (ingest private key, gateway public key)
arrive at the same 32 bytes. Rotation is a key-id bump: a new key id gives an unrelated key.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgegw.protocol.envelope import KEY_SIZE, MAX_SEQ, EnvelopeError, _seal_with, open_sealed
from edgegw.protocol.envelope import Header as Header

INFO_PREFIX = b"edgegw data v1|"


def derive_data_key(
    own_private_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    key_id: int,
    gateway_id: str,
) -> bytes:
    """The 32-byte AES-256-GCM data key for ``gateway_id`` and ``key_id``."""
    for k, what in ((own_private_key, "own private key"), (peer_public_key, "peer public key")):
        if not isinstance(k.curve, ec.SECP256R1):
            raise ValueError(f"{what} must be on curve P-256 (secp256r1), got {k.curve.name}")
    if not 0 <= key_id < 2**32:
        raise ValueError(f"key id {key_id} outside u32")
    shared = own_private_key.exchange(ec.ECDH(), peer_public_key)
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=struct.pack(">I", key_id),
        info=INFO_PREFIX + gateway_id.encode("utf-8"),
    ).derive(shared)


class Sealer:
    """Seals batches for one gateway with one data key (the AES context is built once)."""

    def __init__(self, key: bytes, key_id: int, gateway_id: str) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise EnvelopeError(f"data key must be {KEY_SIZE} bytes (AES-256)")
        if not 0 <= key_id < 2**32:
            raise EnvelopeError(f"key id {key_id} outside u32")
        self.key = bytes(key)
        self.key_id = key_id
        self.gateway_id = gateway_id
        self._aead = AESGCM(self.key)

    def seal(self, seq: int, plaintext: bytes, flags: int = 0) -> bytes:
        if not 0 <= seq < MAX_SEQ:
            raise EnvelopeError(f"sequence {seq} outside [0, 2**63)")
        if not 0 <= flags < 256:
            raise EnvelopeError(f"flags {flags} outside u8")
        return _seal_with(self._aead, self.key_id, seq, self.gateway_id, plaintext, flags)

    def open(self, blob: bytes) -> tuple[Header, bytes]:
        """Open an envelope sealed by this gateway with this key id (tests, local checks)."""
        return open_sealed(self.key, self.gateway_id, blob, expected_key_id=self.key_id)
