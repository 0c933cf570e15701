"""PKI helpers and the cloud data dir: key modes, idempotent init, CSR/CRL checks."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgegw import pki
from edgegw_cloud.pki_setup import CloudPaths, init_data_dir
from edgegw_cloud.registry import Registry

from .conftest import file_mode


def _fingerprints(paths: CloudPaths) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(paths.pki_dir.iterdir())}


def test_init_creates_the_layout_with_private_keys_0600(data_root: Path) -> None:
    paths = init_data_dir(data_root / "c", broker_host="gw-cloud.example")
    expected = {
        "ca.crt",
        "ca.key",
        "broker.crt",
        "broker.key",
        "ingest.crt",
        "ingest.key",
        "ingest-ka-1.key",
        "ingest-ka-1.pub",
        "ota-signing.key",
        "ota-signing.pub",
        "bootstrap.crt",
        "bootstrap.key",
        "crl.pem",
        "enroll.crt",
        "enroll.key",
    }
    assert {f.name for f in paths.pki_dir.iterdir()} == expected
    keys = [f for f in paths.pki_dir.iterdir() if f.suffix == ".key"]
    assert len(keys) == 7
    assert {f.name: file_mode(f) for f in keys} == {f.name: 0o600 for f in keys}
    assert file_mode(paths.pki_dir) == 0o700
    assert file_mode(paths.registry_db) == 0o600
    assert paths.current_key_id == 1 and paths.ingest_key_ids() == [1]

    ca = pki.load_certificate(paths.ca_crt)
    for crt, cn in (
        (paths.broker_crt, "edgegw-broker"),
        (paths.ingest_crt, "edgegw-ingest"),
        (paths.bootstrap_crt, "bootstrap"),
        (paths.enroll_crt, "edgegw-enroll"),
    ):
        cert = pki.load_certificate(crt)
        pki.verify_issued_by(cert, ca)
        assert pki.common_name(cert.subject) == cn
    broker = pki.load_certificate(paths.broker_crt)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "gw-cloud.example"}
    eku = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.load_private_key(paths.ota_signing_key).__class__.__name__.startswith("Ed25519")
    crl = x509.load_pem_x509_crl(paths.crl.read_bytes())
    assert len(list(crl)) == 0


def test_init_is_idempotent_and_never_overwrites_keys(data_root: Path) -> None:
    paths = init_data_dir(data_root / "c")
    before = _fingerprints(paths)
    again = init_data_dir(data_root / "c")
    assert again == paths
    assert _fingerprints(paths) == before


def test_init_refuses_a_half_identity(data_root: Path) -> None:
    paths = init_data_dir(data_root / "c")
    paths.ingest_key.unlink()
    with pytest.raises(pki.PkiError, match=r"ingest\.key is missing"):
        init_data_dir(data_root / "c")
    assert paths.ingest_crt.exists()  # nothing was replaced


def test_init_refuses_a_broker_cert_that_misses_the_new_host(data_root: Path) -> None:
    init_data_dir(data_root / "c")
    with pytest.raises(pki.PkiError, match="does not cover other-host"):
        init_data_dir(data_root / "c", broker_host="other-host")


def test_save_private_key_is_0600_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    key = pki.generate_ec_key()
    path = tmp_path / "sub" / "k.key"
    pki.save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        pki.save_private_key(path, pki.generate_ec_key())
    assert pki.load_private_key(path).private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert [p.name for p in path.parent.iterdir()] == ["k.key"]  # no temp files left


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a/b",
        "a+b",
        "a#",
        "has space",
        "bootstrap",
        "edgegw-ingest",
        "x" * 65,
        "-lead",
        "tab\tx",
    ],
)
def test_bad_gateway_ids_are_refused(bad: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.check_gateway_id(bad)


def test_csr_checks(tmp_path: Path) -> None:
    key = pki.generate_ec_key()
    csr = pki.load_csr(pki.csr_pem(pki.make_csr(key, "gw-1")))
    assert pki.common_name(csr.subject) == "gw-1"
    with pytest.raises(pki.PkiError, match="malformed CSR"):
        pki.load_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----")
    # a CSR whose signature does not match (tampered subject) is refused
    pem = pki.csr_pem(pki.make_csr(key, "gw-1"))
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"gw-1", b"gw-2")
    tampered_pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(tampered).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(pki.PkiError, match="signature"):
        pki.load_csr(tampered_pem)
    ed = pki.generate_ed25519_key()
    ed_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "gw-1")]))
        .sign(ed, None)
    )
    with pytest.raises(pki.PkiError, match="P-256"):
        pki.load_csr(pki.csr_pem(ed_csr))


def test_issued_client_cert_and_crl(data_root: Path) -> None:
    paths = init_data_dir(data_root / "c")
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    key = pki.generate_ec_key()
    cert = issuer.issue_from_csr(pki.load_csr(pki.csr_pem(pki.make_csr(key, "gw-1"))), days=10)
    pki.verify_issued_by(cert, issuer.cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 10 * 86400 <= life.total_seconds() <= 10 * 86400 + 600
    with Registry(paths.registry_db) as reg:
        reg.provision("gw-1", key.public_key(), issuer)
        serial = int(reg.gateway("gw-1").cert_serial, 16)  # type: ignore[union-attr, arg-type]
        reg.revoke("gw-1")
        crl = issuer.crl(reg.revoked_serials())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    other = pki.Issuer(pki.make_ca(pki.generate_ec_key(), "other"), pki.generate_ec_key())
    with pytest.raises(pki.PkiError):
        pki.verify_issued_by(cert, other.cert)


def test_tls_context_pins_the_given_ca_only(data_root: Path) -> None:
    import ssl

    paths = init_data_dir(data_root / "c")
    ctx = pki.make_tls_context(paths.ca_crt, paths.ingest_crt, paths.ingest_key)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "edgegw cloud CA"),),)]
    with pytest.raises(pki.PkiError, match="both"):
        pki.make_tls_context(paths.ca_crt, paths.ingest_crt, None)
    with pytest.raises(pki.PkiError, match="cannot load"):
        pki.make_tls_context(paths.ca_crt, paths.ingest_crt, paths.bootstrap_key)
