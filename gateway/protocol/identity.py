"""The one definition of a gateway identity directory (written by enrollment, read everywhere).

Layout (``uplink.identity_dir``, default ``<state_dir>/identity``)::

    gateway.key     the gateway's EC P-256 private key (0600; never leaves the gateway)
    gateway.crt     its certificate (CN = gateway id), issued by the cloud CA
    ca.crt          the cloud CA (pinned at enrollment: the bootstrap dir's ca.crt)
    ingest-ka.pub   the cloud ingest's key-agreement public key (data-key derivation)
    identity.json   {"gateway_id", "key_id", "broker"}; written LAST: a directory holding it is
                    a complete identity

Bootstrap dir (default ``<state_dir>/bootstrap``; copied from the cloud's ``DATA/pki``):
``ca.crt``, ``bootstrap.crt``, ``bootstrap.key``.

Only file names, the metadata format and loading live here (no TLS, no issuing: that is PKI);
the uplink session, enrollment, the sealer and the cloud's provisioning all use these names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "BOOTSTRAP_CERT",
    "BOOTSTRAP_KEY",
    "CA_CERT",
    "GATEWAY_CERT",
    "GATEWAY_KEY",
    "INGEST_KA_PUB",
    "META",
    "BootstrapFiles",
    "Identity",
    "IdentityError",
    "default_bootstrap_dir",
    "default_identity_dir",
    "identity_meta_json",
]

GATEWAY_KEY = "gateway.key"
GATEWAY_CERT = "gateway.crt"
CA_CERT = "ca.crt"
INGEST_KA_PUB = "ingest-ka.pub"
OTA_PUB = "ota-signing.pub"  # the cloud's Ed25519 OTA release key (from enrollment)
META = "identity.json"
BOOTSTRAP_CERT = "bootstrap.crt"
BOOTSTRAP_KEY = "bootstrap.key"


class IdentityError(Exception):
    """The identity directory is missing, incomplete or unreadable; the message says the fix."""


def default_identity_dir(state_dir: Path, configured: Path | str | None = None) -> Path:
    return Path(configured) if configured else Path(state_dir) / "identity"


def default_bootstrap_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "bootstrap"


def identity_meta_json(gateway_id: str, key_id: int, broker: str) -> bytes:
    meta = {"gateway_id": gateway_id, "key_id": key_id, "broker": broker}
    return (json.dumps(meta, indent=2) + "\n").encode()


@dataclass(frozen=True, slots=True)
class BootstrapFiles:
    dir: Path

    @property
    def ca_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def cert_path(self) -> Path:
        return self.dir / BOOTSTRAP_CERT

    @property
    def key_path(self) -> Path:
        return self.dir / BOOTSTRAP_KEY


@dataclass(frozen=True, slots=True)
class Identity:
    """A gateway identity directory (see the module doc)."""

    dir: Path
    gateway_id: str
    key_id: int
    broker: str

    @property
    def key_path(self) -> Path:
        return self.dir / GATEWAY_KEY

    @property
    def cert_path(self) -> Path:
        return self.dir / GATEWAY_CERT

    @property
    def ca_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def ingest_ka_pub_path(self) -> Path:
        return self.dir / INGEST_KA_PUB

    @staticmethod
    def files(identity_dir: Path | str) -> tuple[Path, Path, Path]:
        """(certificate, key, CA) paths of an identity dir, whether complete or not."""
        d = Path(identity_dir)
        return d / GATEWAY_CERT, d / GATEWAY_KEY, d / CA_CERT

    @classmethod
    def load(cls, identity_dir: Path | str) -> Identity:
        d = Path(identity_dir)
        meta_path = d / META
        try:
            meta: Any = json.loads(meta_path.read_text())
            ident = cls(d, str(meta["gateway_id"]), int(meta["key_id"]), str(meta["broker"]))
        except FileNotFoundError:
            raise IdentityError(
                f"{meta_path} not found: this gateway is not enrolled; run `edgegw enroll -c "
                "CONFIG --token TOKEN` (get a token with `edgegw-cloud token create GW_ID`)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{meta_path}: unreadable identity ({exc}); enroll again") from None
        for f in (ident.key_path, ident.cert_path, ident.ca_path, ident.ingest_ka_pub_path):
            if not f.exists():
                raise IdentityError(f"{f} is missing: the identity is incomplete; enroll again")
        return ident

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{self.key_path}: gateway key must be EC P-256")
        return key

    def ingest_public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_public_key(self.ingest_ka_pub_path.read_bytes())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise IdentityError(f"{self.ingest_ka_pub_path}: ingest key must be EC P-256")
        return key
