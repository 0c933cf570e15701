"""Configuration of the CoAP push driver (one gateway-side server, many constrained devices).

Invariants enforced here:
- ``listen`` is ``host:port`` / ``[v6]:port`` with a port in 0..65535;
- device ids are unique, safe as a URI path segment and as a directory name;
- every device authenticates with OSCORE unless it explicitly sets ``insecure_no_auth: true``
  (both at once is an error); OSCORE ids are unique across devices (the recipient id is how
  a request finds its security context) and short enough for the AEAD nonce;
- hex strings are bytes after validation.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgegw.sdk import DriverOptions, Duration, HexBytes, Id

_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\[\]:]+)):(?P<port>\d{1,5})$")


Seconds = Annotated[Duration, Field(gt=0)]
Algorithm = Literal["AES-CCM-16-64-128", "AES-CCM-16-128-128", "A128GCM", "A256GCM",
                    "ChaCha20/Poly1305"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Master secrets published in RFC 8613's test vectors, aiocoap's and our own examples: a
#: config holding one is refused (anyone can decrypt and forge that device's traffic).
KNOWN_SECRETS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0102030405060708090a0b0c0d0e0f10",  # RFC 8613 C.1-C.3, aiocoap's contrib examples
        "000102030405060708090a0b0c0d0e0f",  # our examples/coap.yaml before issue 9
        "0f0e0d0c0b0a09080706050403020100",
        "00112233445566778899aabbccddeeff",
        "0123456789abcdef0123456789abcdef",
    )
)


def weak_secret_reason(secret: bytes) -> str | None:
    """Why ``secret`` is a known or patterned value (None: plausibly random). 16 random bytes
    have fewer than 8 distinct values with probability < 1e-6; a counting sequence or a
    repeated short pattern is never random."""
    if secret in KNOWN_SECRETS or secret[:16] in KNOWN_SECRETS:
        return "it is a published example/test-vector secret"
    if len(set(secret)) < 8:
        return "it has fewer than 8 distinct bytes (a pattern, not a random key)"
    steps = {(b - a) % 256 for a, b in itertools.pairwise(secret)}
    if len(steps) == 1:
        return "its bytes count up or down (a pattern, not a random key)"
    return None


class OscoreKey(_Strict):
    """OSCORE (RFC 8613) security context shared with one device, from the gateway's side."""

    #: the gateway's Sender ID (the device's Recipient ID); may be empty
    sender_id: HexBytes
    #: the device's Sender ID: the ``kid`` its requests carry
    recipient_id: HexBytes
    master_secret: HexBytes = Field(repr=False)
    master_salt: HexBytes = Field(b"", repr=False)
    algorithm: Algorithm = "AES-CCM-16-64-128"

    @model_validator(mode="after")
    def _check(self) -> OscoreKey:
        if len(self.master_secret) < 16:
            raise ValueError("oscore.master_secret needs at least 16 bytes (32 hex digits)")
        weak = weak_secret_reason(bytes(self.master_secret))
        if weak is not None:
            raise ValueError(
                f"oscore.master_secret refused: {weak}. Generate one per device with "
                "`python3 -c \"import secrets; print(secrets.token_hex(16))\"` and pass it "
                "as ${ENV_VAR}"
            )
        if max(len(self.sender_id), len(self.recipient_id)) > 7:
            raise ValueError("oscore sender_id/recipient_id are at most 7 bytes")
        if self.sender_id == self.recipient_id:
            raise ValueError("oscore sender_id and recipient_id must differ")
        return self


class ConstrainedDevice(_Strict):
    """One constrained device that pushes to ``/d/{id}``."""

    id: Id
    oscore: OscoreKey | None = None
    #: accept unauthenticated requests for this device (isolated test networks only)
    insecure_no_auth: bool = False
    rate: float = Field(5.0, gt=0)  # sustained requests per second (token bucket refill)
    burst: int = Field(20, ge=1)  # token bucket size

    @model_validator(mode="after")
    def _check(self) -> ConstrainedDevice:
        if self.oscore is None and not self.insecure_no_auth:
            raise ValueError(
                f"device {self.id!r} has no credentials: give it `oscore` keys "
                "(or `insecure_no_auth: true` on an isolated test network)"
            )
        if self.oscore is not None and self.insecure_no_auth:
            raise ValueError(
                f"device {self.id!r}: `oscore` and `insecure_no_auth` exclude each other"
            )
        return self


class CoapOptions(DriverOptions):
    """Options of the CoAP server device (``devices[].options`` with ``driver: coap``)."""

    listen: str = "[::]:5683"
    devices: list[ConstrainedDevice] = Field(min_length=1)
    max_payload: int = Field(16384, ge=64, le=1 << 20)  # bytes of one (reassembled) request
    max_samples: int = Field(1000, ge=1)  # samples in one request
    max_clock_skew: Seconds = 86400.0  # a device timestamp further in the future is malformed

    @model_validator(mode="after")
    def _check(self) -> CoapOptions:
        self.bind()
        ids = [d.id for d in self.devices]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate device ids: {', '.join(dup)}")
        kids = [d.oscore.recipient_id for d in self.devices if d.oscore]
        if len(set(kids)) != len(kids):
            raise ValueError("two devices share an oscore.recipient_id: each needs its own")
        return self

    def bind(self) -> tuple[str, int]:
        m = _LISTEN.match(self.listen.strip())
        if m is None or int(m["port"]) > 65535:
            raise ValueError(
                f"listen {self.listen!r} is not host:port (e.g. '[::]:5683', '127.0.0.1:5683')"
            )
        return (m["v6"] or m["host"], int(m["port"]))
