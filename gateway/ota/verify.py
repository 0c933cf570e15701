"""Gateway-side verification of an OTA release, before anything is written to a slot.

Order (each step refuses with a short machine-readable ``reason`` and a human ``detail``):

1. ``check_offer``: Ed25519 signature of the manifest bytes with the trusted OTA key
   (``bad_signature``), manifest well-formed (``bad_manifest``), meant for this gateway
   (``wrong_target``), not a replay of an older offer (``replayed_offer``: its serial is not
   above the last release of that kind this gateway accepted), not a downgrade unless the signed
   manifest allows it (``downgrade``), and the running version not older than ``min_version``
   (``too_old``).
2. ``check_chunk``: every downloaded chunk against its SHA-256 in the signed manifest
   (``tampered_chunk``); the download code stores only chunks that pass.
3. ``verify_payload``: the whole payload hash (``tampered_payload``), then every tar member: a
   normalised relative path (``unsafe_path``: absolute, ``..``, backslashes), only regular files
   and directories (``link_in_archive`` for symlinks/hard links, ``special_file`` for devices,
   fifos), each file's size and SHA-256 equal to the manifest's (``tampered_file``), no file
   missing or extra (``file_list_mismatch``).
4. ``extract_verified``: writes files only under the destination, re-checking containment.

Invariant: a caller writes to a slot only through ``extract_verified``, which runs
``verify_payload`` itself first, so a skipped step cannot install unverified bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.asymmetric import ed25519

from edgegw.protocol.release import Manifest, ReleaseError, compare_versions, verify_signature

log = logging.getLogger("edgegw.ota.verify")


class Refusal(Exception):
    """A release refused by this gateway; ``reason`` goes to the cloud, ``detail`` to the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_trusted_key(path: Path) -> ed25519.Ed25519PublicKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise Refusal("bad_key", f"{path} is not an Ed25519 public key")
    return key


def check_offer(
    manifest_bytes: bytes,
    signature: bytes,
    trusted_key: ed25519.Ed25519PublicKey,
    *,
    gateway_id: str,
    labels: Mapping[str, str] | None = None,
    last_serial: int = 0,
    installed_version: str | None = None,
) -> Manifest:
    """Signature, target, replay and version checks. Returns the verified manifest."""
    try:
        m = verify_signature(manifest_bytes, signature, trusted_key)
    except ReleaseError as exc:
        raise Refusal(exc.reason, exc.detail) from None
    if not m.targets_gateway(gateway_id, labels or {}):
        raise Refusal(
            "wrong_target", f"{m.release_id} targets {dict(m.targets)}, not gateway {gateway_id}"
        )
    if m.serial <= last_serial:
        raise Refusal(
            "replayed_offer",
            f"{m.release_id} has serial {m.serial}; this gateway already accepted serial "
            f"{last_serial} of kind {m.kind}",
        )
    if installed_version is not None:
        order = compare_versions(m.version, installed_version)
        if order <= 0 and not m.allow_downgrade:
            raise Refusal(
                "downgrade",
                f"{m.name} {m.version} is not newer than the installed {installed_version} "
                "(publish with --allow-downgrade to go back on purpose)",
            )
        if m.min_version and compare_versions(installed_version, m.min_version) < 0:
            raise Refusal(
                "too_old",
                f"{m.release_id} upgrades only from {m.min_version} on; installed "
                f"{installed_version}",
            )
    return m


def check_chunk(m: Manifest, index: int, data: bytes) -> None:
    if not 0 <= index < len(m.chunks):
        raise Refusal("tampered_chunk", f"chunk index {index} out of range")
    want_len = min(m.chunk_size, m.payload_size - index * m.chunk_size)
    if len(data) != want_len or hashlib.sha256(data).hexdigest() != m.chunks[index]:
        raise Refusal("tampered_chunk", f"chunk {index} of {m.release_id} fails its SHA-256")


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or "\\" in name or "\0" in name:
        raise Refusal("unsafe_path", f"archive member {name!r} is absolute or malformed")
    parts = name.rstrip("/").split("/")
    if any(part in ("..", "", ".") for part in parts):
        raise Refusal("unsafe_path", f"archive member {name!r} leaves the slot or is not normal")
    return "/".join(parts)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_payload(payload: Path, m: Manifest) -> None:
    """Whole-payload hash, then every member's path, type, size and hash."""
    if payload.stat().st_size != m.payload_size or _hash_file(payload) != m.payload_sha256:
        raise Refusal("tampered_payload", f"{payload.name} does not match the signed manifest")
    want = {f.path: f for f in m.files}
    seen: set[str] = set()
    try:
        with tarfile.open(payload, "r:") as tar:
            for member in tar:
                name = _safe_name(member.name)
                if member.issym() or member.islnk():
                    raise Refusal(
                        "link_in_archive",
                        f"{name} is a link to {member.linkname!r}; releases hold no links",
                    )
                if member.isdir():
                    continue
                if not member.isfile():
                    raise Refusal("special_file", f"{name} is not a regular file")
                entry = want.get(name)
                if entry is None or name in seen:
                    raise Refusal("file_list_mismatch", f"{name} is not in the manifest (or twice)")
                seen.add(name)
                f = tar.extractfile(member)
                assert f is not None
                h = hashlib.sha256()
                size = 0
                while block := f.read(1 << 20):
                    h.update(block)
                    size += len(block)
                if size != entry.size or h.hexdigest() != entry.sha256:
                    raise Refusal("tampered_file", f"{name} does not match its manifest SHA-256")
    except tarfile.TarError as exc:
        raise Refusal("bad_archive", f"{payload.name}: {exc}") from None
    missing = set(want) - seen
    if missing:
        raise Refusal("file_list_mismatch", f"missing from the archive: {sorted(missing)[:5]}")


def extract_verified(payload: Path, m: Manifest, dest: Path) -> list[Path]:
    """Verify, then write the files under ``dest`` (created; must not exist yet)."""
    verify_payload(payload, m)
    dest.mkdir(parents=True)
    root = dest.resolve()
    written: list[Path] = []
    with tarfile.open(payload, "r:") as tar:
        for member in tar:
            name = _safe_name(member.name)
            target = (root / name).resolve()
            if root not in target.parents:
                raise Refusal("unsafe_path", f"{name} resolves outside the destination")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            written.append(target)
    return written
