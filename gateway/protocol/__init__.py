"""The ONE definition of the wire format (imported by cloud_stub too).

- ``codec``: columnar batch <-> bytes (snappy-compressed, versioned).
- ``envelope``: AES-256-GCM sealed batch with a clear binary header.
- ``keys``: ECDH + HKDF data-key derivation and the ``Sealer``.
- ``topics``: MQTT topic names. ``ack``: end-to-end acknowledgement messages.
"""

from edgegw.protocol.ack import AckError, AckStatus, decode_acks, encode_acks
from edgegw.protocol.codec import CodecError, DecodedBatch, Gap, decode_batch, encode_batch
from edgegw.protocol.envelope import EnvelopeError, Header, open_sealed, parse_header, seal
from edgegw.protocol.keys import Sealer, derive_data_key

__all__ = [
    "AckError",
    "AckStatus",
    "CodecError",
    "DecodedBatch",
    "EnvelopeError",
    "Gap",
    "Header",
    "Sealer",
    "decode_acks",
    "decode_batch",
    "derive_data_key",
    "encode_acks",
    "encode_batch",
    "open_sealed",
    "parse_header",
    "seal",
]
