"""Gateway registry (DATA/registry.db): gateways, certificates, enrollment tokens, counters.

Invariants:
- Tokens are stored only as SHA-256 hex digests. A token is 256 random bits
  (``secrets.token_urlsafe(32)``), so a fast hash is enough: nobody can brute-force the preimage,
  and lookup by digest needs no secret key on disk. The plaintext is shown once, at creation.
- A token is single-use, expires, and is bound to one gateway id. Redeeming it, issuing the
  certificate and recording it happen in ONE transaction (``BEGIN IMMEDIATE``): two concurrent
  enrollments with one token cannot both succeed.
- Revocation is per gateway and marks every certificate it holds; the CRL lists certificate
  serials, so a later re-enrollment (a new token, explicitly allowed with ``reinstate``) gets a
  new, unrevoked serial while the old ones stay revoked.
- Every refusal is counted (``counters`` table) and logged at WARNING (a misbehaving peer).
- Safe for several processes (``serve`` + CLI commands): WAL mode, busy timeout, short
  transactions. One ``Registry`` object per thread.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edgegw import pki
from edgegw.protocol.ids import is_valid_id

log = logging.getLogger("edgegw.cloud.registry")

GATEWAY_CERT_DAYS = 365
DEFAULT_TOKEN_TTL_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways(
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    enrolled_ms INTEGER,
    revoked_ms INTEGER,
    last_seen_ms INTEGER
);
CREATE TABLE IF NOT EXISTS certificates(
    serial TEXT PRIMARY KEY,            -- hex: serials are up to 159 bits
    gateway_id TEXT NOT NULL REFERENCES gateways(id),
    issued_ms INTEGER NOT NULL,
    not_after_ms INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    pem TEXT NOT NULL,
    how TEXT NOT NULL,                  -- enroll | renew | provision
    revoked_ms INTEGER
);
CREATE INDEX IF NOT EXISTS certificates_gw ON certificates(gateway_id, issued_ms);
CREATE TABLE IF NOT EXISTS tokens(
    hash TEXT PRIMARY KEY,              -- sha256 hex of the token; the token itself is never stored
    gateway_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_ms INTEGER,
    used_serial TEXT
);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- Audit log: every enroll / renew / revoke / reinstate (and refusal), written in the SAME
-- transaction as the change it records. Append-only (nothing here updates or deletes it).
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,               -- enroll | renew | revoke | reinstate | token | refused
    gateway_id TEXT NOT NULL,
    actor TEXT NOT NULL,                -- broker username (bootstrap / gateway id) or operator:USER
    client_id TEXT NOT NULL DEFAULT '', -- MQTT client id of the request ('' for operator commands)
    serial TEXT,                        -- certificate issued, if any
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS fleet(       -- device management: what gateways report about themselves
    gateway_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',  -- JSON object, set by operators (rollout selectors)
    software_version TEXT,
    config_version TEXT,
    config_pending TEXT,
    devices TEXT NOT NULL DEFAULT '[]', -- JSON list as reported by the gateway
    key_id INTEGER,
    online INTEGER,                     -- from the gateway's retained status message
    status_ms INTEGER,
    info_ms INTEGER
);
"""


class RegistryError(Exception):
    """An operator command cannot be carried out (unknown gateway, revoked gateway...)."""


class EnrollmentRefused(Exception):
    """An enrollment/renewal request is refused. ``reason`` is a stable counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One gateway as the fleet view shows it (the dashboard reads these)."""

    id: str
    labels: dict[str, str]
    last_seen_ms: int | None
    online: bool | None
    status_ms: int | None
    software_version: str | None
    config_version: str | None
    config_pending: str | None
    devices: list[dict[str, object]]
    revoked: bool
    info_ms: int | None


@dataclass(frozen=True, slots=True)
class GatewayRow:
    id: str
    created_ms: int
    enrolled_ms: int | None
    revoked_ms: int | None
    last_seen_ms: int | None
    cert_serial: str | None
    cert_not_after_ms: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_ms is not None


def operator() -> str:
    """Who runs an operator command, for the audit log: ``operator:USER@HOST (pid N)``."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = f"uid{os.getuid()}"
    return f"operator:{user}@{socket.gethostname()} (pid {os.getpid()})"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _ms_of(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


class Registry:
    """The registry database. Not thread-safe: one instance per thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        if fresh:  # token digests and the audit trail: not for other local users
            os.chmod(self.path, 0o600)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection, name: str, n: int = 1) -> None:
        db.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _audit(
        self,
        db: sqlite3.Connection,
        action: str,
        gateway_id: str,
        actor: str,
        client_id: str = "",
        serial: str | None = None,
        detail: str = "",
    ) -> None:
        db.execute(
            "INSERT INTO audit(ts_ms, action, gateway_id, actor, client_id, serial, detail) "
            "VALUES(?, ?, ?, ?, ?, ?, ?)",
            (_ms(), action, gateway_id, actor, client_id, serial, detail),
        )

    def audit_log(self, gateway_id: str | None = None) -> list[dict[str, object]]:
        """The audit trail, oldest first (optionally of one gateway)."""
        sql = "SELECT ts_ms, action, gateway_id, actor, client_id, serial, detail FROM audit"
        args: tuple[str, ...] = ()
        if gateway_id is not None:
            sql += " WHERE gateway_id = ?"
            args = (gateway_id,)
        return [dict(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def _revoked_keys(self, db: sqlite3.Connection, gateway_id: str) -> set[str]:
        """Public-key fingerprints of every revoked certificate of ``gateway_id``."""
        out = set()
        for r in db.execute(
            "SELECT pem FROM certificates WHERE gateway_id = ? AND revoked_ms IS NOT NULL",
            (gateway_id,),
        ):
            cert = x509.load_pem_x509_certificate(r["pem"].encode())
            out.add(pki.public_key_fingerprint(cert.public_key()))
        return out

    def _current_key(self, db: sqlite3.Connection, gateway_id: str) -> str | None:
        r = db.execute(
            "SELECT pem FROM certificates WHERE gateway_id = ? AND revoked_ms IS NULL "
            "ORDER BY issued_ms DESC, rowid DESC LIMIT 1",
            (gateway_id,),
        ).fetchone()
        if r is None:
            return None
        return pki.public_key_fingerprint(x509.load_pem_x509_certificate(r["pem"].encode())
                                          .public_key())

    def count(self, name: str, n: int = 1) -> None:
        with self._txn() as db:
            self._bump(db, name, n)

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self._db.execute("SELECT name, value FROM counters")}

    def _ensure_gateway(self, db: sqlite3.Connection, gateway_id: str) -> sqlite3.Row | None:
        db.execute(
            "INSERT OR IGNORE INTO gateways(id, created_ms) VALUES(?, ?)", (gateway_id, _ms())
        )
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM gateways WHERE id = ?", (gateway_id,)
        ).fetchone()
        return row

    # ----------------------------------------------------------------- tokens
    def create_token(
        self,
        gateway_id: str,
        ttl_s: float = DEFAULT_TOKEN_TTL_S,
        *,
        reinstate: bool = False,
        actor: str | None = None,
    ) -> str:
        """Create a one-time token for ``gateway_id``; returns the only plaintext copy."""
        pki.check_gateway_id(gateway_id)
        if ttl_s <= 0:
            raise RegistryError(f"token ttl must be positive, got {ttl_s}s")
        token = secrets.token_urlsafe(32)
        while token.startswith("-"):  # `edgegw enroll --token -x...` would read it as an option
            token = secrets.token_urlsafe(32)
        now = _ms()
        with self._txn() as db:
            row = self._ensure_gateway(db, gateway_id)
            if row is not None and row["revoked_ms"] is not None and not reinstate:
                raise RegistryError(
                    f"gateway {gateway_id} is revoked; pass --reinstate to let it enroll again "
                    "(its old certificates stay revoked)"
                )
            db.execute(
                "INSERT INTO tokens(hash, gateway_id, created_ms, expires_ms) VALUES(?, ?, ?, ?)",
                (hash_token(token), gateway_id, now, now + int(ttl_s * 1000)),
            )
            self._bump(db, "tokens_created")
            revoked = row is not None and row["revoked_ms"] is not None
            self._audit(
                db,
                "reinstate" if revoked else "token",
                gateway_id,
                actor or operator(),
                detail=f"token {hash_token(token)[:12]} ttl {ttl_s:.0f}s"
                + ("; the gateway must enroll with a NEW key" if revoked else ""),
            )
        log.info("token created for gateway %s (expires in %.0fs)", gateway_id, ttl_s)
        return token

    def _refuse(
        self, reason: str, message: str, gateway_id: str, actor: str = "", client_id: str = ""
    ) -> EnrollmentRefused:
        try:
            with self._txn() as db:
                self._bump(db, f"refused_{reason}")
                self._audit(db, "refused", gateway_id, actor or "?", client_id, detail=reason)
        except sqlite3.Error:  # counting must never hide the refusal itself
            log.exception("could not count refusal %s", reason)
        log.warning("enrollment refused (%s) for gateway %r: %s", reason, gateway_id, message)
        return EnrollmentRefused(reason, message)

    # ----------------------------------------------------------------- issuing
    def enroll(
        self,
        token: str,
        csr: x509.CertificateSigningRequest,
        issuer: pki.Issuer,
        *,
        days: int = GATEWAY_CERT_DAYS,
        actor: str = "bootstrap",
        client_id: str = "",
    ) -> x509.Certificate:
        """Redeem ``token`` for a certificate for ``csr`` (already verified by ``pki.load_csr``).

        Refusals (``EnrollmentRefused.reason``): ``bad_id``, ``token_unknown``, ``token_used``,
        ``token_expired``, ``token_other_gateway``, ``key_revoked`` (the CSR's key is one a
        revoked certificate of this gateway held: a reinstated gateway needs a NEW key, the old
        one may be the stolen one). The token is consumed only on success.
        """
        cn = pki.common_name(csr.subject)
        try:
            pki.check_gateway_id(cn)
        except pki.PkiError as exc:
            raise self._refuse("bad_id", str(exc), cn, actor, client_id) from None
        key_fp = pki.public_key_fingerprint(csr.public_key())
        digest = hash_token(token)
        now = _ms()
        failure: tuple[str, str] | None = None
        with self._txn() as db:
            tok = db.execute("SELECT * FROM tokens WHERE hash = ?", (digest,)).fetchone()
            generic = "create a new one with `edgegw-cloud token create GW_ID`"
            if tok is None:
                failure = ("token_unknown", f"token not recognised; {generic}")
            elif tok["used_ms"] is not None:
                failure = ("token_used", f"token was already used; {generic}")
            elif tok["expires_ms"] <= now:
                failure = ("token_expired", f"token expired; {generic}")
            elif tok["gateway_id"] != cn:
                failure = (
                    "token_other_gateway",
                    f"token was issued for another gateway id than {cn!r}; check gateway.id "
                    f"in the config, or {generic}",
                )
            elif key_fp in self._revoked_keys(db, cn):
                failure = (
                    "key_revoked",
                    f"this key belonged to a revoked certificate of {cn!r}: a reinstated "
                    "gateway must enroll with a new key (`edgegw enroll --new-key --token ...`)",
                )
            else:
                was_revoked = db.execute(
                    "SELECT revoked_ms FROM gateways WHERE id = ?", (cn,)
                ).fetchone()["revoked_ms"] is not None
                cert = issuer.issue_from_csr(csr, days=days)
                self._record_cert(db, cn, cert, "enroll")
                self._audit(
                    db, "enroll", cn, actor, client_id, format(cert.serial_number, "x"),
                    f"token {digest[:12]} key {key_fp[:16]}"
                    + ("; reinstated with a new key" if was_revoked else ""),
                )
                db.execute(
                    "UPDATE gateways SET enrolled_ms = ?, revoked_ms = NULL WHERE id = ?", (now, cn)
                )
                db.execute(
                    "UPDATE tokens SET used_ms = ?, used_serial = ? WHERE hash = ?",
                    (now, format(cert.serial_number, "x"), digest),
                )
                self._bump(db, "enrolled")
        if failure is not None:
            raise self._refuse(failure[0], failure[1], cn, actor, client_id)
        log.info("gateway %s enrolled, certificate serial %x", cn, cert.serial_number)
        return cert

    def renew(
        self,
        authenticated_id: str,
        csr: x509.CertificateSigningRequest,
        issuer: pki.Issuer,
        *,
        days: int = GATEWAY_CERT_DAYS,
        client_id: str = "",
    ) -> x509.Certificate:
        """Issue a new certificate to a gateway that authenticated with its current one.

        ``authenticated_id`` comes from the broker (certificate CN in the topic, enforced by the
        ACL), so no token is needed. The CSR must carry the same CN and the gateway must not be
        revoked. Renewal keeps the key (docs/security.md): a CSR with another key than the
        current certificate's is refused (``renew_new_key``); a key change is a new enrollment
        with a token. Refusals: ``renew_other_gateway``, ``renew_unknown``, ``renew_revoked``,
        ``renew_new_key``.
        """
        cn = pki.common_name(csr.subject)
        if cn != authenticated_id:
            raise self._refuse(
                "renew_other_gateway",
                f"renewal CSR is for {cn!r} but you are {authenticated_id!r}",
                authenticated_id,
                authenticated_id,
                client_id,
            )
        key_fp = pki.public_key_fingerprint(csr.public_key())
        failure: tuple[str, str] | None = None
        with self._txn() as db:
            row = db.execute("SELECT * FROM gateways WHERE id = ?", (cn,)).fetchone()
            if row is None or row["enrolled_ms"] is None:
                failure = ("renew_unknown", f"gateway {cn!r} is not enrolled; enroll with a token")
            elif row["revoked_ms"] is not None:
                failure = ("renew_revoked", f"gateway {cn!r} is revoked")
            elif key_fp != self._current_key(db, cn):
                failure = (
                    "renew_new_key",
                    "renewal keeps the gateway's key; to change it, enroll again with a token "
                    "and --new-key",
                )
            else:
                cert = issuer.issue_from_csr(csr, days=days)
                self._record_cert(db, cn, cert, "renew")
                self._bump(db, "renewed")
                self._audit(db, "renew", cn, cn, client_id, format(cert.serial_number, "x"),
                            f"key {key_fp[:16]}")
        if failure is not None:
            raise self._refuse(failure[0], failure[1], cn, cn, client_id)
        log.info("gateway %s renewed, certificate serial %x", cn, cert.serial_number)
        return cert

    def provision(
        self,
        gateway_id: str,
        public_key: pki.PublicKey,
        issuer: pki.Issuer,
        *,
        days: int = GATEWAY_CERT_DAYS,
    ) -> x509.Certificate:
        """Issue and register a certificate without a token (operator/test path, no broker)."""
        pki.check_gateway_id(gateway_id)
        cert = issuer.issue(public_key, gateway_id, client=True, days=days)
        with self._txn() as db:
            self._record_cert(db, gateway_id, cert, "provision")
            db.execute(
                "UPDATE gateways SET enrolled_ms = ?, revoked_ms = NULL WHERE id = ?",
                (_ms(), gateway_id),
            )
        return cert

    def _record_cert(
        self, db: sqlite3.Connection, gateway_id: str, cert: x509.Certificate, how: str
    ) -> None:
        self._ensure_gateway(db, gateway_id)
        db.execute(
            "INSERT INTO certificates(serial, gateway_id, issued_ms, not_after_ms, fingerprint, "
            "pem, how) VALUES(?, ?, ?, ?, ?, ?, ?)",
            (
                format(cert.serial_number, "x"),
                gateway_id,
                _ms(),
                _ms_of(cert.not_valid_after_utc),
                pki.fingerprint(cert),
                pki.cert_pem(cert),
                how,
            ),
        )

    # ----------------------------------------------------------------- revocation
    def revoke(self, gateway_id: str, *, actor: str | None = None) -> list[str]:
        """Revoke the gateway and all its certificates; returns the newly revoked serials."""
        now = _ms()
        with self._txn() as db:
            row = db.execute("SELECT * FROM gateways WHERE id = ?", (gateway_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no gateway {gateway_id!r} in the registry (see `gateways`)")
            serials = [
                r["serial"]
                for r in db.execute(
                    "SELECT serial FROM certificates WHERE gateway_id = ? AND revoked_ms IS NULL",
                    (gateway_id,),
                )
            ]
            db.execute(
                "UPDATE certificates SET revoked_ms = ? "
                "WHERE gateway_id = ? AND revoked_ms IS NULL",
                (now, gateway_id),
            )
            db.execute(
                "UPDATE gateways SET revoked_ms = COALESCE(revoked_ms, ?) WHERE id = ?",
                (now, gateway_id),
            )
            # tokens still open for this gateway must not undo the revocation
            db.execute(
                "UPDATE tokens SET expires_ms = MIN(expires_ms, ?) "
                "WHERE gateway_id = ? AND used_ms IS NULL",
                (now, gateway_id),
            )
            self._bump(db, "revoked")
            self._audit(db, "revoke", gateway_id, actor or operator(),
                        detail=f"{len(serials)} certificates: {','.join(serials)[:500]}")
        log.warning("gateway %s revoked (%d certificates)", gateway_id, len(serials))
        return serials

    def revoked_serials(self) -> list[tuple[int, dt.datetime]]:
        return [
            (int(r["serial"], 16), dt.datetime.fromtimestamp(r["revoked_ms"] / 1000, dt.UTC))
            for r in self._db.execute(
                "SELECT serial, revoked_ms FROM certificates WHERE revoked_ms IS NOT NULL "
                "ORDER BY revoked_ms"
            )
        ]

    def revoked_gateways(self) -> list[str]:
        return [
            r["id"]
            for r in self._db.execute(
                "SELECT id FROM gateways WHERE revoked_ms IS NOT NULL ORDER BY id"
            )
        ]

    # ----------------------------------------------------------------- queries
    def gateways(self) -> list[GatewayRow]:
        rows = self._db.execute(
            """SELECT g.*, c.serial AS cert_serial, c.not_after_ms AS cert_not_after_ms
               FROM gateways g LEFT JOIN certificates c ON c.serial = (
                   SELECT serial FROM certificates WHERE gateway_id = g.id
                   ORDER BY issued_ms DESC, rowid DESC LIMIT 1)
               ORDER BY g.id"""
        ).fetchall()
        return [
            GatewayRow(
                r["id"],
                r["created_ms"],
                r["enrolled_ms"],
                r["revoked_ms"],
                r["last_seen_ms"],
                r["cert_serial"],
                r["cert_not_after_ms"],
            )
            for r in rows
        ]

    def gateway(self, gateway_id: str) -> GatewayRow | None:
        return next((g for g in self.gateways() if g.id == gateway_id), None)

    def certificates(
        self, gateway_id: str, *, include_revoked: bool = True
    ) -> list[x509.Certificate]:
        """The gateway's certificates, newest first."""
        sql = "SELECT pem FROM certificates WHERE gateway_id = ?"
        if not include_revoked:
            sql += " AND revoked_ms IS NULL"
        sql += " ORDER BY issued_ms DESC, rowid DESC"
        return [pki.load_certificate(r["pem"]) for r in self._db.execute(sql, (gateway_id,))]

    def public_keys(
        self, gateway_id: str, *, include_revoked: bool = True
    ) -> list[ec.EllipticCurvePublicKey]:
        """Distinct gateway public keys, newest first: what ingest derives data keys from.

        A renewal keeps the key, a re-enrollment may change it; batches sealed before the
        change still need the old key, so every key the gateway ever held is returned.
        """
        out: list[ec.EllipticCurvePublicKey] = []
        seen: set[str] = set()
        for cert in self.certificates(gateway_id, include_revoked=include_revoked):
            key = cert.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                continue
            fp = pki.public_key_fingerprint(key)
            if fp not in seen:
                seen.add(fp)
                out.append(key)
        return out

    def is_revoked(self, gateway_id: str) -> bool:
        row = self._db.execute(
            "SELECT revoked_ms FROM gateways WHERE id = ?", (gateway_id,)
        ).fetchone()
        return row is not None and row["revoked_ms"] is not None

    def touch(self, gateway_id: str, ts_ms: int | None = None) -> None:
        """Record that the gateway was seen (ingest may call this; cheap, no new rows)."""
        self._db.execute(
            "UPDATE gateways SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), ?) WHERE id = ?",
            (ts_ms if ts_ms is not None else _ms(), gateway_id),
        )

    # ----------------------------------------------------------------- fleet (device mgmt)
    def _fleet_row(self, db: sqlite3.Connection, gateway_id: str) -> None:
        if db.execute("SELECT 1 FROM gateways WHERE id = ?", (gateway_id,)).fetchone() is None:
            raise RegistryError(f"unknown gateway {gateway_id!r} (see `edgegw-cloud gateways`)")
        db.execute("INSERT OR IGNORE INTO fleet(gateway_id) VALUES (?)", (gateway_id,))

    def set_labels(
        self, gateway_id: str, labels: dict[str, str], remove: Sequence[str] = ()
    ) -> dict[str, str]:
        """Merge ``labels`` into the gateway's labels, drop ``remove``; returns the result."""
        for k, v in labels.items():
            if not is_valid_id(k) or len(v) > 256 or any(c in v for c in "\n\0"):
                raise RegistryError(
                    f"label {k}={v!r}: keys follow the id grammar (letters, digits, '_', '.', "
                    "'-'), values up to 256 characters on one line"
                )
        with self._txn() as db:
            self._fleet_row(db, gateway_id)
            row = db.execute("SELECT labels FROM fleet WHERE gateway_id = ?",
                             (gateway_id,)).fetchone()
            current = dict(json.loads(row["labels"]))
            current.update(labels)
            for k in remove:
                current.pop(k, None)
            db.execute("UPDATE fleet SET labels = ? WHERE gateway_id = ?",
                       (json.dumps(current, sort_keys=True), gateway_id))
        return current

    def labels(self, gateway_id: str) -> dict[str, str]:
        row = self._db.execute("SELECT labels FROM fleet WHERE gateway_id = ?",
                               (gateway_id,)).fetchone()
        return dict(json.loads(row["labels"])) if row else {}

    def select(self, selector: dict[str, str]) -> list[str]:
        """Gateways (not revoked) whose labels include every ``key: value`` of ``selector``."""
        return [f.id for f in self.fleet() if not f.revoked
                and all(f.labels.get(k) == v for k, v in selector.items())]

    def record_info(self, gateway_id: str, info: dict[str, object], ts_ms: int | None = None
                    ) -> None:
        """Store what the gateway reported about itself (its ``info`` message)."""
        with self._txn() as db:
            self._fleet_row(db, gateway_id)
            db.execute(
                "UPDATE fleet SET software_version = ?, config_version = ?, config_pending = ?, "
                "devices = ?, key_id = ?, info_ms = ? WHERE gateway_id = ?",
                (_opt_str(info.get("software_version")), _opt_str(info.get("config_version")),
                 _opt_str(info.get("config_pending")), json.dumps(info.get("devices") or []),
                 info.get("key_id"), ts_ms or _ms(), gateway_id),
            )
            db.execute("UPDATE gateways SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), ?) "
                       "WHERE id = ?", (ts_ms or _ms(), gateway_id))

    def record_status(self, gateway_id: str, online: bool, ts_ms: int | None = None) -> None:
        with self._txn() as db:
            self._fleet_row(db, gateway_id)
            db.execute("UPDATE fleet SET online = ?, status_ms = ? WHERE gateway_id = ?",
                       (int(online), ts_ms or _ms(), gateway_id))

    def reported_key_id(self, gateway_id: str) -> int | None:
        """The key id the gateway last said it uses (its ``info``): downlink keys follow it."""
        row = self._db.execute("SELECT key_id FROM fleet WHERE gateway_id = ?",
                               (gateway_id,)).fetchone()
        return int(row["key_id"]) if row is not None and row["key_id"] is not None else None

    def fleet(self) -> list[FleetRow]:
        """Every gateway with its labels, last seen, versions, devices and online state."""
        rows = self._db.execute(
            """SELECT g.id, g.last_seen_ms, g.revoked_ms, f.labels, f.software_version,
                      f.config_version, f.config_pending, f.devices, f.online, f.status_ms,
                      f.info_ms
               FROM gateways g LEFT JOIN fleet f ON f.gateway_id = g.id ORDER BY g.id"""
        ).fetchall()
        return [
            FleetRow(
                r["id"], dict(json.loads(r["labels"] or "{}")), r["last_seen_ms"],
                None if r["online"] is None else bool(r["online"]), r["status_ms"],
                r["software_version"], r["config_version"], r["config_pending"],
                list(json.loads(r["devices"] or "[]")), r["revoked_ms"] is not None,
                r["info_ms"],
            )
            for r in rows
        ]


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)
