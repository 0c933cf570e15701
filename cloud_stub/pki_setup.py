"""The cloud stub's data directory: its layout (``CloudPaths``) and ``init_data_dir``.

Layout (docs/CONTRACTS.md "Cloud stub data dir layout", plus the enrollment service identity)::

    DATA/pki/      ca.crt ca.key broker.crt broker.key ingest.crt ingest.key
                   ingest-ka-<keyid>.key ingest-ka-<keyid>.pub  (P-256 key agreement)
                   ota-signing.key ota-signing.pub (Ed25519) bootstrap.crt bootstrap.key crl.pem
                   enroll.crt enroll.key   (the enrollment service's broker identity)
    DATA/broker/   mosquitto.conf acl mosquitto.log (written by edgegw_cloud.broker)
    DATA/registry.db   DATA/store.db

Invariants:
- ``init_data_dir`` is idempotent: it creates what is missing and never overwrites a key. A half
  identity (a certificate without its key or the reverse) is an error naming both files.
- Every ``*.key`` is mode 0600; ``pki/`` is 0700.
- Certificate CNs: broker "edgegw-broker" (SAN 127.0.0.1, localhost, broker_host), ingest
  "edgegw-ingest", enrollment "edgegw-enroll", bootstrap "bootstrap". Gateways get their id.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edgegw import pki
from edgegw_cloud.registry import Registry

log = logging.getLogger("edgegw.cloud.pki")

BROKER_CN = "edgegw-broker"
INGEST_CN = "edgegw-ingest"
ENROLL_CN = "edgegw-enroll"
BOOTSTRAP_CN = "bootstrap"
FIRST_KEY_ID = 1
#: the server and service identities live ten years; gateways get GATEWAY_CERT_DAYS (registry)
SERVICE_CERT_DAYS = 3650


@dataclass(frozen=True)
class CloudPaths:
    """Every path of a cloud stub data dir. Building one creates nothing (see ``for_dir``)."""

    data_dir: Path
    pki_dir: Path
    broker_dir: Path
    ca_crt: Path
    ca_key: Path
    broker_crt: Path
    broker_key: Path
    ingest_crt: Path
    ingest_key: Path
    ota_signing_key: Path
    ota_signing_pub: Path
    bootstrap_crt: Path
    bootstrap_key: Path
    enroll_crt: Path
    enroll_key: Path
    crl: Path
    mosquitto_conf: Path
    acl: Path
    mosquitto_log: Path
    registry_db: Path
    store_db: Path

    @classmethod
    def for_dir(cls, data_dir: Path | str) -> CloudPaths:
        d = Path(data_dir).absolute()
        p = d / "pki"
        b = d / "broker"
        return cls(
            data_dir=d,
            pki_dir=p,
            broker_dir=b,
            ca_crt=p / "ca.crt",
            ca_key=p / "ca.key",
            broker_crt=p / "broker.crt",
            broker_key=p / "broker.key",
            ingest_crt=p / "ingest.crt",
            ingest_key=p / "ingest.key",
            ota_signing_key=p / "ota-signing.key",
            ota_signing_pub=p / "ota-signing.pub",
            bootstrap_crt=p / "bootstrap.crt",
            bootstrap_key=p / "bootstrap.key",
            enroll_crt=p / "enroll.crt",
            enroll_key=p / "enroll.key",
            crl=p / "crl.pem",
            mosquitto_conf=b / "mosquitto.conf",
            acl=b / "acl",
            mosquitto_log=b / "mosquitto.log",
            registry_db=d / "registry.db",
            store_db=d / "store.db",
        )

    # ingest key-agreement keys are numbered: rotation = a new key id (DESIGN §5)
    def ingest_ka_key(self, key_id: int) -> Path:
        return self.pki_dir / f"ingest-ka-{key_id}.key"

    def ingest_ka_pub(self, key_id: int) -> Path:
        return self.pki_dir / f"ingest-ka-{key_id}.pub"

    def ingest_key_ids(self) -> list[int]:
        """Key ids present on disk (both .key and .pub), ascending."""
        ids = []
        for f in self.pki_dir.glob("ingest-ka-*.key"):
            m = re.fullmatch(r"ingest-ka-(\d+)\.key", f.name)
            if m and self.ingest_ka_pub(int(m.group(1))).exists():
                ids.append(int(m.group(1)))
        return sorted(ids)

    @property
    def current_key_id(self) -> int:
        """The newest ingest key id: the one handed to gateways at enrollment."""
        ids = self.ingest_key_ids()
        if not ids:
            raise pki.PkiError(f"{self.pki_dir}: no ingest-ka-<id>.key/.pub pair; run init")
        return ids[-1]

    def is_initialised(self) -> bool:
        return self.ca_crt.exists() and self.ca_key.exists() and self.crl.exists()

    def require_initialised(self) -> CloudPaths:
        if not self.is_initialised():
            raise pki.PkiError(
                f"{self.data_dir} is not an edgegw cloud data dir (no pki/ca.crt, ca.key, "
                "crl.pem); "
                f"run `edgegw-cloud init --data-dir {self.data_dir}` first"
            )
        return self


def _pair_state(crt: Path, key: Path) -> bool:
    """True if both exist, False if neither; raises on a half pair."""
    if crt.exists() and key.exists():
        return True
    if crt.exists() or key.exists():
        missing = key if crt.exists() else crt
        raise pki.PkiError(
            f"{missing} is missing but its partner exists; restore it from backup, or delete "
            f"both {crt.name} and {key.name} to issue a new identity"
        )
    return False


def _ensure_identity(
    paths: CloudPaths,
    issuer: pki.Issuer,
    crt: Path,
    key: Path,
    cn: str,
    *,
    server: bool = False,
    san: tuple[str, ...] = (),
) -> bool:
    if _pair_state(crt, key):
        return False
    k = pki.generate_ec_key()
    cert = issuer.issue(
        k.public_key(), cn, server=server, client=not server, san=san, days=SERVICE_CERT_DAYS
    )
    pki.save_private_key(key, k)
    pki.write_public(crt, pki.cert_pem(cert).encode())
    log.info("issued %s (%s)", crt.name, cn)
    return True


def broker_sans(crt: Path) -> list[str]:
    """The host names and IP addresses the broker certificate ``crt`` covers, in its order."""
    cert = pki.load_certificate(crt)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return out + list(san.get_values_for_type(x509.DNSName))


def _check_broker_san(crt: Path, names: tuple[str, ...]) -> None:
    have = set(broker_sans(crt))
    missing = [n for n in names if n not in have]
    if missing:
        raise pki.PkiError(
            f"{crt} does not cover {', '.join(missing)} (it has {', '.join(sorted(have))}); "
            f"add them with `edgegw-cloud broker-cert --data-dir {crt.parent.parent} "
            + " ".join(f"--add-host {m}" for m in missing)
            + "` (re-issues the broker certificate, same key)"
        )


def _valid_host(name: str) -> str:
    """A SAN entry: an IP address or a DNS name (letters, digits, '-', '.', a leading '*.')."""
    name = name.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*", name):
        raise pki.PkiError(
            f"{name!r} is neither an IP address nor a DNS host name; give the name or address "
            "gateways dial (e.g. cloud.example.net or 192.0.2.10)"
        )
    return name.lower()


def add_broker_hosts(paths: CloudPaths, hosts: Sequence[str]) -> tuple[list[str], bool]:
    """Re-issue the broker certificate (same key) so it also covers ``hosts``.

    Returns (the SANs now covered, whether a new certificate was written). The CA signs the new
    certificate; gateways need nothing new (they trust the CA, not the certificate). A running
    ``serve`` picks it up when the broker restarts (``serve`` restarts it when broker.crt changes).
    """
    paths.require_initialised()
    have = broker_sans(paths.broker_crt)
    wanted = list(dict.fromkeys([*have, *(_valid_host(h) for h in hosts)]))
    if wanted == have:
        return have, False
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    key = pki.load_private_key(paths.broker_key)
    cert = issuer.issue(
        key.public_key(),
        BROKER_CN,
        server=True,
        client=False,
        san=tuple(wanted),
        days=SERVICE_CERT_DAYS,
    )
    pki.write_public(paths.broker_crt, pki.cert_pem(cert).encode())
    log.info("re-issued %s for %s", paths.broker_crt, ", ".join(wanted))
    return wanted, True


def init_data_dir(
    data_dir: Path,
    *,
    broker_host: str | Sequence[str] = "127.0.0.1",
) -> CloudPaths:
    """Create (or complete) a cloud data dir; returns its paths. Never overwrites a key.

    ``broker_host``: the host names / addresses gateways dial (one or several); the broker
    certificate covers them plus 127.0.0.1 and localhost. Add more later with
    ``add_broker_hosts`` (``edgegw-cloud broker-cert --add-host``).
    """
    hosts = [broker_host] if isinstance(broker_host, str) else list(broker_host)
    hosts = [_valid_host(h) for h in hosts]
    paths = CloudPaths.for_dir(data_dir)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    paths.pki_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(paths.pki_dir, 0o700)
    paths.broker_dir.mkdir(exist_ok=True)

    if _pair_state(paths.ca_crt, paths.ca_key):
        issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    else:
        ca_key = pki.generate_ec_key()
        ca_cert = pki.make_ca(ca_key)
        pki.save_private_key(paths.ca_key, ca_key)
        pki.write_public(paths.ca_crt, pki.cert_pem(ca_cert).encode())
        issuer = pki.Issuer(ca_cert, ca_key)
        log.info("created CA %s", paths.ca_crt)

    san = tuple(dict.fromkeys(("127.0.0.1", "localhost", *hosts)))
    if not _ensure_identity(
        paths, issuer, paths.broker_crt, paths.broker_key, BROKER_CN, server=True, san=san
    ):
        _check_broker_san(paths.broker_crt, san)
    _ensure_identity(paths, issuer, paths.ingest_crt, paths.ingest_key, INGEST_CN)
    _ensure_identity(paths, issuer, paths.enroll_crt, paths.enroll_key, ENROLL_CN)
    _ensure_identity(paths, issuer, paths.bootstrap_crt, paths.bootstrap_key, BOOTSTRAP_CN)

    if not paths.ingest_key_ids():
        kid = FIRST_KEY_ID
        if _pair_state(paths.ingest_ka_pub(kid), paths.ingest_ka_key(kid)):
            raise AssertionError("unreachable: ingest_key_ids() saw no pair")
        ka = pki.generate_ec_key()
        pki.save_private_key(paths.ingest_ka_key(kid), ka)
        pki.write_public(paths.ingest_ka_pub(kid), pki.public_pem(ka.public_key()))

    if not _pair_state(paths.ota_signing_pub, paths.ota_signing_key):
        ota = pki.generate_ed25519_key()
        pki.save_private_key(paths.ota_signing_key, ota)
        pki.write_public(paths.ota_signing_pub, pki.public_pem(ota.public_key()))

    with Registry(paths.registry_db) as reg:
        if not paths.crl.exists():
            pki.write_public(paths.crl, pki.crl_pem(issuer.crl(reg.revoked_serials())))
    return paths


def rotate_ingest_key(paths: CloudPaths) -> int:
    """Create the next ingest key-agreement key; returns its id. Old keys stay for old batches."""
    kid = paths.current_key_id + 1
    ka = pki.generate_ec_key()
    pki.save_private_key(paths.ingest_ka_key(kid), ka)
    pki.write_public(paths.ingest_ka_pub(kid), pki.public_pem(ka.public_key()))
    return kid
