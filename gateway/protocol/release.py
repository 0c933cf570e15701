"""OTA release format shared by the cloud (publisher) and the gateway (verifier).

A release is three things:

- ``payload.tar``: an uncompressed POSIX tar of the release files (regular files and directories
  only). It is what travels, in chunks of ``chunk_size`` bytes.
- ``manifest.json``: canonical JSON (sorted keys, no spaces, UTF-8) describing the release:
  ``format``, ``kind`` (``software`` | ``config`` | ``firmware``), ``name``, ``version``,
  ``serial`` (cloud-wide, strictly increasing per published release), ``created_ms``,
  ``min_version`` (oldest running version it may upgrade from, or null), ``allow_downgrade``,
  ``targets`` (``{"all": true}`` | ``{"gateways": [...]}`` | ``{"labels": {k: v}}``),
  ``files`` (``path``, ``sha256``, ``size`` of every file in the tar), ``payload`` (``sha256``,
  ``size``, ``chunk_size``, ``chunks``: the SHA-256 of every chunk, so a tampered chunk is caught
  on arrival), and for firmware ``firmware`` (``driver``, ``devices``: device ids it is for).
- ``manifest.sig``: the raw 64-byte Ed25519 signature of the exact manifest bytes, by the cloud's
  OTA key (``pki/ota-signing.key``).

Invariants:
- The signature covers the manifest bytes as sent; a verifier parses only bytes it has verified.
- Every file and every chunk is pinned by SHA-256 inside the signed manifest, so nothing outside
  the signature is trusted.
- Versions compare as dotted integers (PEP 440 release segment only: ``1.2.10 > 1.2.9``); a
  version with anything else is refused at publish time, so both sides agree on the order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

FORMAT = 1
KINDS = ("software", "config", "firmware")
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 256 * 1024
SIGNATURE_SIZE = 64
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ReleaseError(ValueError):
    """A manifest that is malformed or whose signature does not verify (``reason`` is short)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def parse_version(text: str) -> tuple[int, ...]:
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise ReleaseError("bad_version", f"{text!r} is not a dotted-integer version like 1.2.3")
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 1.2 == 1.2.0
    return tuple(parts)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    kind: str
    name: str
    version: str
    serial: int
    created_ms: int
    files: tuple[FileEntry, ...]
    payload_sha256: str
    payload_size: int
    chunk_size: int
    chunks: tuple[str, ...]
    min_version: str | None = None
    allow_downgrade: bool = False
    targets: Mapping[str, Any] = field(default_factory=lambda: {"all": True})
    firmware: Mapping[str, Any] | None = None

    @property
    def release_id(self) -> str:
        """Stable, human-readable id: ``name-version-kind-serial``."""
        return f"{self.name}-{self.version}-{self.kind}-{self.serial}"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "serial": self.serial,
            "created_ms": self.created_ms,
            "min_version": self.min_version,
            "allow_downgrade": self.allow_downgrade,
            "targets": dict(self.targets),
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "payload": {
                "sha256": self.payload_sha256,
                "size": self.payload_size,
                "chunk_size": self.chunk_size,
                "chunks": list(self.chunks),
            },
        }
        if self.firmware is not None:
            doc["firmware"] = dict(self.firmware)
        return doc

    def encode(self) -> bytes:
        return canonical_json(self.to_dict())

    def targets_gateway(self, gateway_id: str, labels: Mapping[str, str]) -> bool:
        t = self.targets
        if t.get("all") is True:
            return True
        if "gateways" in t:
            return gateway_id in t["gateways"]
        if "labels" in t:
            want = t["labels"]
            return bool(want) and all(labels.get(k) == v for k, v in want.items())
        return False

    def chunk_count(self) -> int:
        return len(self.chunks)


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _req(doc: Mapping[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in doc:
        raise ReleaseError("bad_manifest", f"missing field {key!r}")
    value = doc[key]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise ReleaseError("bad_manifest", f"field {key!r} has the wrong type")
    return value


def _hex64(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ReleaseError("bad_manifest", f"{what} is not a lowercase SHA-256 hex digest")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes (call only after ``verify_signature`` on the same bytes)."""
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError("bad_manifest", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReleaseError("bad_manifest", "not a JSON object")
    if doc.get("format") != FORMAT:
        raise ReleaseError("bad_manifest", f"unknown format {doc.get('format')!r}")
    kind = _req(doc, "kind", str)
    if kind not in KINDS:
        raise ReleaseError("bad_manifest", f"unknown kind {kind!r}")
    name = _req(doc, "name", str)
    if not _NAME_RE.match(name):
        raise ReleaseError("bad_manifest", f"bad release name {name!r}")
    version = _req(doc, "version", str)
    parse_version(version)
    min_version = doc.get("min_version")
    if min_version is not None:
        parse_version(min_version)
    files = []
    for f in _req(doc, "files", list):
        if not isinstance(f, dict):
            raise ReleaseError("bad_manifest", "files[] entries must be objects")
        files.append(
            FileEntry(
                _req(f, "path", str), _hex64(f.get("sha256"), "file sha256"), _req(f, "size", int)
            )
        )
    payload = _req(doc, "payload", dict)
    chunk_size = _req(payload, "chunk_size", int)
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ReleaseError("bad_manifest", f"chunk_size {chunk_size} out of range")
    size = _req(payload, "size", int)
    chunks = tuple(_hex64(c, "chunk sha256") for c in _req(payload, "chunks", list))
    if len(chunks) != max(1, -(-size // chunk_size)):
        raise ReleaseError("bad_manifest", "chunk list does not match the payload size")
    targets = _req(doc, "targets", dict)
    firmware = doc.get("firmware")
    if kind == "firmware" and not isinstance(firmware, dict):
        raise ReleaseError("bad_manifest", "a firmware release needs a firmware section")
    return Manifest(
        kind=kind,
        name=name,
        version=version,
        serial=_req(doc, "serial", int),
        created_ms=_req(doc, "created_ms", int),
        files=tuple(files),
        payload_sha256=_hex64(payload.get("sha256"), "payload sha256"),
        payload_size=size,
        chunk_size=chunk_size,
        chunks=chunks,
        min_version=min_version,
        allow_downgrade=bool(doc.get("allow_downgrade", False)),
        targets=targets,
        firmware=firmware,
    )


def sign(manifest_bytes: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.sign(manifest_bytes)


def verify_signature(
    manifest_bytes: bytes, signature: bytes, key: ed25519.Ed25519PublicKey
) -> Manifest:
    """Verify, then parse. Raises ReleaseError("bad_signature") on any mismatch."""
    if len(signature) != SIGNATURE_SIZE:
        raise ReleaseError("bad_signature", f"signature is {len(signature)} bytes, not 64")
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ReleaseError(
            "bad_signature", "manifest signature does not verify with this cloud's OTA key"
        ) from None
    return parse_manifest(manifest_bytes)


def chunk_hashes(data_chunks: Iterable[bytes]) -> list[str]:
    return [hashlib.sha256(c).hexdigest() for c in data_chunks]
