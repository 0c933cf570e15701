"""OSCORE security contexts of the constrained devices, kept on disk under the driver's state dir.

Layout: ``STATE/oscore/{device_id}/`` (mode 0700) with ``settings.json`` (ids, algorithm),
``secret.json`` (master secret + salt, mode 0600) and aiocoap's ``sequence.json`` (sender
sequence number and replay window, written by aiocoap). This is aiocoap's
``FilesystemSecurityContext`` format.

Invariants:
- The files are rewritten from the configuration at every open; when the key material or ids
  changed, ``sequence.json`` is deleted (a new context starts fresh), otherwise it is kept so
  replay protection survives restarts. After a crash aiocoap recovers the replay window with
  the Echo option (RFC 8613 B.1.2): the device's first request gets a 4.01 + Echo and retries.
- Each context is locked (aiocoap's lock file) while the driver runs; ``close_contexts``
  persists the state and releases the locks.
- The credential label of a device is ``":" + device_id``; an authenticated request carries it
  in ``request.remote.authenticated_claims``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiocoap.credentials import CredentialsMap

from .options import ConstrainedDevice


def label(device_id: str) -> str:
    return ":" + device_id


def _write_if_changed(path: Path, data: dict[str, Any], mode: int) -> bool:
    text = json.dumps(data, indent=1, sort_keys=True)
    try:
        if path.read_text() == text:
            os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def load_contexts(state_dir: Path, devices: Iterable[ConstrainedDevice]) -> CredentialsMap:
    """Write each device's context directory and load them all (blocking: run off the loop)."""
    creds = CredentialsMap()
    root = state_dir / "oscore"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for dev in devices:
        key = dev.oscore
        if key is None:
            continue
        d = root / dev.id
        d.mkdir(exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        settings = {
            "sender-id_hex": key.sender_id.hex(),
            "recipient-id_hex": key.recipient_id.hex(),
            "algorithm": key.algorithm,
        }
        secret = {"secret_hex": key.master_secret.hex(), "salt_hex": key.master_salt.hex()}
        changed = _write_if_changed(d / "settings.json", settings, 0o600)
        changed |= _write_if_changed(d / "secret.json", secret, 0o600)
        if changed:
            (d / "sequence.json").unlink(missing_ok=True)
        try:
            creds.load_from_dict({label(dev.id): {"oscore": {"contextfile": str(d)}}})
        except Exception:
            close_contexts(creds)
            raise
    return creds


def close_contexts(creds: CredentialsMap) -> None:
    """Persist sequence numbers / replay windows and release the context locks."""
    for item in list(creds.values()):
        if getattr(item, "lockfile", None) is not None:
            item._destroy()  # aiocoap's own persist-and-unlock (there is no public close)
    creds.clear()
