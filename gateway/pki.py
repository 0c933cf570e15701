"""PKI helpers shared by the gateway and the cloud stub: keys, CSRs, certificates, CRLs, TLS.

One implementation for both sides (the cloud CA issues what the gateway requests).

Invariants:
- Keys are EC P-256 (TLS identities, key agreement) or Ed25519 (OTA signing).
- Private keys are written with mode 0600 from creation on (``os.open`` with the mode, never a
  chmod after the fact), atomically (temporary file in the same directory + ``os.replace``),
  unencrypted PEM (PKCS#8): file permissions are the protection, as for OpenSSH host keys.
- ``save_private_key`` refuses to overwrite an existing key unless asked to.
- Certificate common names that become MQTT topic segments (gateway ids) must pass
  ``check_gateway_id``: no ``/ + #``, no control characters, bounded length.
- TLS contexts pin the given CA only (never the system store) and require TLS >= 1.2.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgegw.protocol.identity import (
    CA_CERT,
    GATEWAY_CERT,
    GATEWAY_KEY,
    INGEST_KA_PUB,
    META,
    Identity,
    identity_meta_json,
)
from edgegw.protocol.ids import IdError, check_id

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

KEY_MODE = 0o600
#: ids the cloud reserves for its own identities; never valid gateway ids
RESERVED_IDS = frozenset({"bootstrap", "edgegw-ingest", "edgegw-enroll", "edgegw-broker"})


class PkiError(Exception):
    """A key, CSR or certificate is unusable; the message says which file or field and why."""


# --------------------------------------------------------------------------- names
def check_gateway_id(gateway_id: str) -> str:
    """Return ``gateway_id`` if it is usable as a certificate CN and MQTT topic segment.

    Raises ``PkiError`` otherwise: the one id grammar (``edgegw.protocol.ids``) applies, and the
    cloud's reserved ids are refused.
    """
    try:
        check_id(gateway_id, "gateway id")
    except IdError as exc:
        raise PkiError(f"bad gateway id {gateway_id!r}: {exc} ({exc.hint})") from None
    if gateway_id in RESERVED_IDS:
        raise PkiError(f"gateway id {gateway_id!r} is reserved for the cloud's own identities")
    return gateway_id


# --------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; set the final mode before any byte is written
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not overwrite:
            # link() fails if the target appeared meanwhile: no silent overwrite in a race
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_public(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write a certificate / public key / CRL atomically, mode 0644."""
    _atomic_write(Path(path), data, 0o644, overwrite=overwrite)


def save_private_key(path: Path, key: PrivateKey, *, overwrite: bool = False) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM with mode 0600, atomically."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(Path(path), pem, KEY_MODE, overwrite=overwrite)


def load_private_key(path: Path) -> PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"{path}: private key file not found") from None
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise PkiError(f"{path}: unsupported key type {type(key).__name__} (want EC P-256/Ed25519)")
    return key


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data_or_path: bytes | Path) -> PublicKey:
    data = Path(data_or_path).read_bytes() if isinstance(data_or_path, Path) else data_or_path
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise PkiError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise PkiError(f"unsupported public key type {type(key).__name__}")
    return key


# --------------------------------------------------------------------------- keys
def generate_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def generate_ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


# --------------------------------------------------------------------------- CSR
def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse and verify a PEM CSR (signature, EC P-256 key, exactly one CN)."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PkiError(f"malformed CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise PkiError("CSR signature does not verify (proof of key possession failed)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PkiError("CSR key must be EC P-256")
    common_name(csr.subject)
    return csr


def common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PkiError(f"expected exactly one common name, found {len(cns)}")
    value = cns[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# --------------------------------------------------------------------------- certificates
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # dedupe, keep order
        try:
            out.append(x509.IPAddress(ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def make_ca(
    key: ec.EllipticCurvePrivateKey, common_name_: str = "edgegw cloud CA", *, days: int = 3650
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True, slots=True)
class Issuer:
    """A CA certificate with its key: what signs certificates and CRLs."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Issuer:
        key = load_private_key(key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path}: CA key must be EC")
        return cls(load_certificate(cert_path), key)

    def issue(
        self,
        public_key: PublicKey,
        common_name_: str,
        *,
        server: bool = False,
        client: bool = True,
        san: Sequence[str] = (),
        days: int = 365,
        serial: int | None = None,
    ) -> x509.Certificate:
        """Sign an end-entity certificate (never a CA) for ``public_key``."""
        now = _now()
        ekus = []
        if server:
            ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if not ekus:
            raise PkiError("a certificate needs server and/or client usage")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(san)), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_from_csr(
        self, csr: x509.CertificateSigningRequest, *, days: int = 365
    ) -> x509.Certificate:
        """Issue a client certificate for a verified CSR; only its key and CN are used."""
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise PkiError("CSR key must be EC P-256")
        return self.issue(key, common_name(csr.subject), client=True, days=days)

    def crl(
        self, revoked: Iterable[tuple[int, dt.datetime]], *, days: int = 30
    ) -> x509.CertificateRevocationList:
        """Build a CRL listing ``(serial, revocation time)`` pairs."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
                .build()
            )
        return builder.sign(self.key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def load_certificate(data_or_path: bytes | str | Path) -> x509.Certificate:
    if isinstance(data_or_path, Path):
        try:
            data = data_or_path.read_bytes()
        except FileNotFoundError:
            raise PkiError(f"{data_or_path}: certificate file not found") from None
    else:
        data = data_or_path.encode("ascii") if isinstance(data_or_path, str) else data_or_path
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        where = f"{data_or_path}: " if isinstance(data_or_path, Path) else ""
        raise PkiError(f"{where}not a PEM certificate ({exc})") from None


def verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise ``PkiError`` unless ``cert`` is signed by ``ca`` and valid now."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"certificate is not issued by the pinned CA ({exc})") from None
    except Exception as exc:  # cryptography raises InvalidSignature
        raise PkiError(f"certificate signature does not verify against the CA ({exc})") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError(
            f"certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} - "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate, lowercase hex with colons."""
    digest = cert.fingerprint(hashes.SHA256()).hex()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def public_key_fingerprint(key: CertificatePublicKeyTypes) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


#: Every MQTT client id starts with this (the broker's ``clientid_prefixes``). Gateway ids
#: start with a letter or digit, so no client id on the service listener can equal a gateway's
#: (on the gateway listener the broker replaces the id with the certificate CN).
CLIENT_ID_PREFIX = "~"


def client_id(name: str) -> str:
    """``name`` as a client id the broker accepts (``CLIENT_ID_PREFIX`` + name)."""
    return name if name.startswith(CLIENT_ID_PREFIX) else CLIENT_ID_PREFIX + name


def random_client_id(prefix: str) -> str:
    """An MQTT client id that no other client will guess (enrollment, renewal, tools)."""
    return client_id(f"{prefix}-{secrets.token_hex(12)}")


# --------------------------------------------------------------------------- TLS
#: TLS 1.2 suites we offer and accept: forward-secret ECDHE with AEAD ciphers only (no CBC).
#: Both ECDSA (our P-256 PKI) and RSA server keys (an external broker) are allowed.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def make_tls_context(
    ca: Path, cert: Path | None = None, key: Path | None = None, *, server: bool = False
) -> ssl.SSLContext:
    """A TLS context that trusts only ``ca`` and presents ``cert``/``key`` when given.

    Client contexts check the server's hostname against its SAN (our broker certificates carry
    127.0.0.1, localhost and the configured broker host).
    """
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED + hostname check; neither loads the system trust store
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)  # TLS 1.2: AEAD only (1.3 suites are all AEAD already)
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise PkiError("a TLS identity needs both a certificate and a key file")
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise PkiError(f"cannot load TLS identity {cert} / {key}: {exc}") from None
    if server:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# --------------------------------------------------------------------------- identity dir
def write_identity(
    identity_dir: Path,
    *,
    gateway_id: str,
    key_id: int,
    broker: str,
    certificate_pem: str,
    ca_pem: str,
    ingest_ka_pub_pem: str,
) -> Identity:
    """Write certificate, CA, ingest key and identity.json (last) next to gateway.key
    (layout: ``edgegw.protocol.identity``)."""
    d = Path(identity_dir)
    write_public(d / GATEWAY_CERT, certificate_pem.encode())
    write_public(d / CA_CERT, ca_pem.encode())
    write_public(d / INGEST_KA_PUB, ingest_ka_pub_pem.encode())
    write_public(d / META, identity_meta_json(gateway_id, key_id, broker))
    return Identity.load(d)


def load_or_create_key(identity_dir: Path, *, new_key: bool = False) -> ec.EllipticCurvePrivateKey:
    """The identity dir's gateway key, generated (0600) when there is none or ``new_key``."""
    d = Path(identity_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = d / GATEWAY_KEY
    if path.exists() and not new_key:
        key = load_private_key(path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{path}: gateway key must be EC P-256; move it away")
        return key
    key = generate_ec_key()
    save_private_key(path, key, overwrite=new_key)
    return key
