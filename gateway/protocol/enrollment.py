"""Enrollment messages (JSON over MQTT v5, QoS 1): the one definition both sides use.

- request, gateway -> cloud on ``topics.enroll_request(user, client)``:
  ``{"v": 1, "nonce", "csr", "token"?}`` (no token: renewal over the gateway's own identity);
- answer, cloud -> gateway on ``topics.enroll_response(user, client)``:
  ``{"v": 1, "nonce", "ok": true, "certificate", "ca", "ingest_ka_pub", "key_id"}`` or
  ``{"v": 1, "nonce", "ok": false, "reason", "error"}``.

Messages above ``MAX_MESSAGE`` bytes are refused unread on both sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "EnrollRequest",
    "MalformedRequest",
    "answer_ok",
    "answer_refused",
    "decode_answer",
    "parse_request",
]

PROTOCOL_VERSION = 1
MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    nonce: Any
    csr: str
    token: str | None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": PROTOCOL_VERSION, "nonce": self.nonce, "csr": self.csr}
        if self.token is not None:
            body["token"] = self.token
        return json.dumps(body).encode()


class MalformedRequest(ValueError):
    """A request outside the format; ``nonce`` is the request's nonce when it had one."""

    def __init__(self, message: str, nonce: Any = None) -> None:
        super().__init__(message)
        self.nonce = nonce


def parse_request(payload: bytes) -> EnrollRequest:
    """Decode a request; ``MalformedRequest`` says what is wrong."""
    if len(payload) > MAX_MESSAGE:
        raise MalformedRequest(f"request of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    try:
        req = json.loads(payload)
    except ValueError as exc:  # JSON and UTF-8 errors alike
        raise MalformedRequest(f"request is not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise MalformedRequest("request is not a JSON object")
    nonce = req.get("nonce")
    if not isinstance(nonce, str | int | None):
        raise MalformedRequest("nonce must be a string")
    if req.get("v") != PROTOCOL_VERSION:
        raise MalformedRequest(
            f"unsupported protocol version {req.get('v')!r} (want {PROTOCOL_VERSION})", nonce
        )
    csr = req.get("csr")
    if not isinstance(csr, str):
        raise MalformedRequest("csr must be a PEM string", nonce)
    token = req.get("token")
    if token is not None and not isinstance(token, str):
        raise MalformedRequest("token must be a string", nonce)
    return EnrollRequest(nonce, csr, token)


def answer_ok(
    nonce: Any, *, certificate: str, ca: str, ingest_ka_pub: str, key_id: int, ota_pub: str = ""
) -> dict[str, Any]:
    """``ota_pub``: the cloud's Ed25519 OTA key (PEM), which gateways verify releases with."""
    return {
        "v": PROTOCOL_VERSION,
        "nonce": nonce,
        "ok": True,
        "certificate": certificate,
        "ca": ca,
        "ingest_ka_pub": ingest_ka_pub,
        "key_id": key_id,
        "ota_pub": ota_pub,
    }


def answer_refused(nonce: Any, reason: str, error: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "nonce": nonce, "ok": False, "reason": reason, "error": error}


def decode_answer(payload: bytes) -> dict[str, Any] | None:
    """An answer as a dict, or None when it is too large or not a JSON object."""
    if len(payload) > MAX_MESSAGE:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
