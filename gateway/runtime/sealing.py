"""Which data key seals the outbox's batches, and the key lookup used to open them again.

- Enrolled gateway (uplink enabled): the data key is derived (ECDH of the gateway's own key with
  the cloud ingest's key-agreement public key, HKDF with the key id), so no key crosses the broker.
- Local-only gateway (uplink disabled): a random 256-bit key in ``state_dir/local-data.key``
  (mode 0600, key id 0). Data at rest is encrypted either way; local-only batches are readable
  only on this gateway (``edgegw status``/tests use ``key_lookup``).
- A missing ``local-data.key`` is generated only when no batch sealed with key id 0 exists in
  the outbox. Otherwise starting refuses (``LocalKeyMissing``, naming both fixes: restore the
  key, or move the outbox aside): a new key would leave those batches undecryptable while the
  gateway carried on as if nothing happened (issue 9 #10). Nothing is deleted automatically.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path

from edgegw.protocol.identity import META, Identity, IdentityError, default_identity_dir
from edgegw.protocol.keys import Sealer, derive_data_key

LOCAL_KEY_ID = 0


class LocalKeyMissing(RuntimeError):
    """``local-data.key`` is gone but the outbox still holds batches sealed with it."""


def _batches_sealed_locally(outbox_path: Path) -> int:
    """Batches (pending or quarantined) in ``outbox_path`` sealed with key id 0; 0 if none/no db."""
    if not outbox_path.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{outbox_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    n = 0
    try:
        for table in ("batches", "quarantine"):
            try:  # envelope bytes 5..8 (1-based) are the key id, u32 big-endian
                n += int(con.execute(
                    f"SELECT count(*) FROM {table} WHERE substr(envelope, 5, 4) = x'00000000'"
                ).fetchone()[0])
            except sqlite3.Error:
                continue  # no such table / unreadable: the outbox's own recovery reports it
    finally:
        con.close()
    return n


class IdentityMissing(RuntimeError):
    """The uplink is enabled but the gateway has not been enrolled yet."""


def local_key(state_dir: Path, outbox_path: Path | None = None) -> bytes:
    path = state_dir / "local-data.key"
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path}: expected 32 bytes, found {len(key)}; move it aside")
        return key
    held = _batches_sealed_locally(outbox_path) if outbox_path is not None else 0
    if held:
        raise LocalKeyMissing(
            f"{path} is missing but {outbox_path} holds {held} batches sealed with it (key id "
            "0): a new key could never open them. Restore local-data.key from a backup, or, "
            f"to give those batches up, move {outbox_path} aside (e.g. `mv {outbox_path} "
            f"{outbox_path}.orphaned`) and start again"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key


def identity_key(identity_dir: Path) -> tuple[str, int, bytes]:
    """(gateway id, key id, derived data key) from an enrolled identity dir."""
    try:
        ident = Identity.load(identity_dir)
        own, peer = ident.private_key(), ident.ingest_public_key()
    except IdentityError as exc:
        raise IdentityMissing(
            f"{identity_dir} holds no usable enrolled identity ({exc}): run `edgegw enroll -c "
            "CONFIG --token T` first (the token comes from `edgegw-cloud token create GW_ID`)"
        ) from None
    gw, key_id = ident.gateway_id, ident.key_id
    return gw, key_id, derive_data_key(own, peer, key_id, gw)


def make_sealer(
    gateway_id: str, state_dir: Path, identity_dir: Path | None, outbox_path: Path | None = None
) -> Sealer:
    if identity_dir is None:
        return Sealer(local_key(state_dir, outbox_path), LOCAL_KEY_ID, gateway_id)
    gw, key_id, key = identity_key(identity_dir)
    if gw != gateway_id:
        raise IdentityMissing(
            f"{identity_dir} is enrolled as {gw!r} but the config says gateway.id {gateway_id!r}"
        )
    return Sealer(key, key_id, gateway_id)


KEYRING = "data-keys"
KEYRING_MAX = 8


def remember_key(state_dir: Path, key: bytes) -> None:
    """Record a data key that sealed outbox batches (``state_dir/data-keys``, 0600), so that
    after a re-enrollment the outbox can re-seal what it still holds under the new key."""
    path = state_dir / KEYRING
    known = previous_keys(state_dir, include_local=False)
    if key in known:
        return
    keep = [*known, key][-KEYRING_MAX:]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(k.hex() + "\n" for k in keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def previous_keys(state_dir: Path, *, include_local: bool = True) -> list[bytes]:
    """Data keys that may have sealed batches still in the outbox: the standalone local key
    (key id 0) and the keys of earlier enrollments (oldest first)."""
    keys: list[bytes] = []
    if include_local and (state_dir / "local-data.key").exists():
        keys.append(local_key(state_dir))
    path = state_dir / KEYRING
    if path.exists():
        for line in path.read_text().split():
            try:
                k = bytes.fromhex(line)
            except ValueError:
                continue
            if len(k) == 32 and k not in keys:
                keys.append(k)
    return keys


def key_lookup(state_dir: Path, identity_dir: Path | None = None) -> Callable[[int], bytes | None]:
    """Key by key id, for reading this gateway's own outbox."""
    keys: dict[int, bytes] = {}
    if (state_dir / "local-data.key").exists():
        keys[LOCAL_KEY_ID] = local_key(state_dir)
    ident = default_identity_dir(state_dir, identity_dir)
    if (ident / META).exists():
        _, key_id, key = identity_key(ident)
        keys[key_id] = key
    return keys.get
