"""Operator accounts, API tokens and dashboard sessions (``DATA/operators.db``).

Invariants:
- No secret is stored: passwords as scrypt hashes (hashlib, n=2**14, r=8, p=1, 16-byte salt),
  API tokens and session ids (256 random bits each) as SHA-256 digests. Comparisons are
  constant-time. A token or password is shown once, when created, and never logged.
- Two roles: ``admin`` (reads and writes) and ``read-only`` (reads only). Nothing is anonymous:
  every API call and page needs a valid token or session.
- Sessions expire (``SESSION_TTL_S``, sliding is not done: log in again); logging out deletes it.
- The file is 0600; one short transaction per call (safe for several processes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

ROLES = ("admin", "read-only")
SESSION_TTL_S = 12 * 3600
TOKEN_PREFIX = "egw_"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    pw_hash    TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    name         TEXT PRIMARY KEY,
    role         TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_ms   INTEGER NOT NULL,
    last_used_ms INTEGER
);
CREATE TABLE IF NOT EXISTS sessions (
    id_sha256  TEXT PRIMARY KEY,
    user       TEXT NOT NULL,
    role       TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
"""


class AuthError(Exception):
    """A refused account operation; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: a user (dashboard session) or an API token."""

    name: str
    role: str
    kind: str  # "user" | "token"

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}$" + (
        b64(digest).decode()
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AuthError(f"bad name {name!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"bad role {role!r}: one of {', '.join(ROLES)}")
    return role


class Operators:
    """Accounts, tokens and sessions in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        if new:
            os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Operators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ users
    def add_user(self, name: str, password: str, role: str) -> None:
        _check_name(name)
        _check_role(role)
        if len(password) < 8:
            raise AuthError("password too short: at least 8 characters")
        try:
            self._db.execute(
                "INSERT INTO users (name, role, pw_hash, created_ms) VALUES (?, ?, ?, ?)",
                (name, role, hash_password(password), _ms()),
            )
        except sqlite3.IntegrityError:
            raise AuthError(f"user {name!r} exists; remove it first to change it") from None

    def remove_user(self, name: str) -> None:
        cur = self._db.execute("DELETE FROM users WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise AuthError(f"no user {name!r}")
        self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def users(self) -> list[tuple[str, str, int]]:
        return self._db.execute("SELECT name, role, created_ms FROM users ORDER BY name").fetchall()

    def login(self, name: str, password: str) -> str | None:
        """A new session id for valid credentials, else None (same cost either way)."""
        row = self._db.execute("SELECT role, pw_hash FROM users WHERE name = ?", (name,)).fetchone()
        stored = row[1] if row else hash_password("timing-equaliser")
        if not verify_password(password, stored) or row is None:
            return None
        sid = secrets.token_urlsafe(32)
        now = _ms()
        self._db.execute("DELETE FROM sessions WHERE expires_ms < ?", (now,))
        self._db.execute(
            "INSERT INTO sessions (id_sha256, user, role, expires_ms) VALUES (?, ?, ?, ?)",
            (_sha256(sid), name, row[0], now + SESSION_TTL_S * 1000),
        )
        return sid

    def session(self, sid: str) -> Principal | None:
        row = self._db.execute(
            "SELECT user, role, expires_ms FROM sessions WHERE id_sha256 = ?", (_sha256(sid),)
        ).fetchone()
        if row is None or row[2] < _ms():
            return None
        return Principal(row[0], row[1], "user")

    def logout(self, sid: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_sha256(sid),))

    # ------------------------------------------------------------------ API tokens
    def create_token(self, name: str, role: str) -> str:
        _check_name(name)
        _check_role(role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            self._db.execute(
                "INSERT INTO api_tokens (name, role, token_sha256, created_ms) VALUES (?, ?, ?, ?)",
                (name, role, _sha256(token), _ms()),
            )
        except sqlite3.IntegrityError:
            raise AuthError(f"API token {name!r} exists; revoke it first") from None
        return token

    def revoke_token(self, name: str) -> None:
        if self._db.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 0:
            raise AuthError(f"no API token {name!r}")

    def tokens(self) -> list[tuple[str, str, int, int | None]]:
        return self._db.execute(
            "SELECT name, role, created_ms, last_used_ms FROM api_tokens ORDER BY name"
        ).fetchall()

    def token(self, token: str) -> Principal | None:
        digest = _sha256(token)
        row = self._db.execute(
            "SELECT name, role, token_sha256 FROM api_tokens WHERE token_sha256 = ?", (digest,)
        ).fetchone()
        if row is None or not hmac.compare_digest(row[2], digest):
            return None
        self._db.execute(
            "UPDATE api_tokens SET last_used_ms = ? WHERE name = ?", (_ms(), row[0])
        )
        return Principal(row[0], row[1], "token")
