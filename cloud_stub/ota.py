"""The cloud's OTA release store: build, sign, publish and list releases (no transport here).

Layout under the cloud data dir::

    DATA/ota/ota.db                      releases (serial = INTEGER PRIMARY KEY AUTOINCREMENT)
    DATA/ota/releases/<release_id>/      manifest.json manifest.sig payload.tar

Invariants:
- A release directory is complete or absent: files are written into ``<id>.tmp`` and the
  directory is renamed into place before the database row is committed, so a crash leaves at
  most an orphan ``.tmp`` (removed by the next publish) and never a listed, half-written release.
- Serials only grow (AUTOINCREMENT never reuses one), so a gateway can refuse a replayed offer
  of an older release by its serial alone.
- The payload tar is deterministic (sorted names, mtime 0, uid/gid 0, mode 0644/0755): the same
  inputs give the same bytes. Only regular files and directories go in; paths are relative,
  never contain ``..`` and never start with ``/`` (the gateway checks the same again).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from edgegw import pki
from edgegw.protocol.release import (
    DEFAULT_CHUNK_SIZE,
    KINDS,
    FileEntry,
    Manifest,
    ReleaseError,
    canonical_json,
    parse_version,
    sign,
)

log = logging.getLogger("edgegw.cloud.ota")

BUNDLE_INFO = "bundle.json"
WHEEL_DIR = "wheels"


class OtaError(Exception):
    """An operator mistake in an OTA command (message says what to do)."""


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    serial: int
    release_id: str
    kind: str
    name: str
    version: str
    created_ms: int
    payload_size: int
    files: int
    targets: str
    path: Path


def check_arcname(name: str) -> str:
    """A safe relative POSIX path inside a release, else ReleaseError('unsafe_path')."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or name.startswith("/") or "\\" in name:
        raise ReleaseError("unsafe_path", f"{name!r} is absolute or empty")
    if any(part in ("..", "") for part in name.split("/")) or name != str(p):
        raise ReleaseError("unsafe_path", f"{name!r} is not a normalised relative path")
    return name


def build_tar(files: Mapping[str, bytes | Path], out: Path) -> list[FileEntry]:
    """Write a deterministic tar of ``files`` (arcname -> content or source path)."""
    entries: list[FileEntry] = []
    dirs: set[str] = set()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            check_arcname(name)
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(ti)
            src = files[name]
            data = src.read_bytes() if isinstance(src, Path) else src
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            tar.addfile(ti, io.BytesIO(data))
            entries.append(FileEntry(name, hashlib.sha256(data).hexdigest(), len(data)))
    return entries


def tar_file_entries(payload: Path) -> list[FileEntry]:
    """The regular files of an existing tar with their hashes (for pre-built payloads)."""
    entries = []
    with tarfile.open(payload, "r:") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                entries.append(FileEntry(m.name, hashlib.sha256(f.read()).hexdigest(), m.size))
    return entries


def payload_digests(payload: Path, chunk_size: int) -> tuple[str, int, list[str]]:
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with payload.open("rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    if not chunks:
        chunks.append(hashlib.sha256(b"").hexdigest())
    return whole.hexdigest(), size, chunks


def make_manifest(
    payload: Path,
    files: Sequence[FileEntry],
    *,
    kind: str,
    name: str,
    version: str,
    serial: int,
    min_version: str | None = None,
    allow_downgrade: bool = False,
    targets: Mapping[str, Any] | None = None,
    firmware: Mapping[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    created_ms: int | None = None,
) -> Manifest:
    digest, size, chunks = payload_digests(payload, chunk_size)
    return Manifest(
        kind=kind,
        name=name,
        version=version,
        serial=serial,
        created_ms=created_ms if created_ms is not None else int(time.time() * 1000),
        files=tuple(files),
        payload_sha256=digest,
        payload_size=size,
        chunk_size=chunk_size,
        chunks=tuple(chunks),
        min_version=min_version,
        allow_downgrade=allow_downgrade,
        targets=dict(targets or {"all": True}),
        firmware=dict(firmware) if firmware is not None else None,
    )


def parse_targets(text: str | None) -> dict[str, Any]:
    """``all`` | ``gw1,gw2`` | ``label:key=value[,key=value]`` -> manifest targets."""
    if not text or text == "all":
        return {"all": True}
    if text.startswith("label:"):
        labels = {}
        for kv in text[len("label:") :].split(","):
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise OtaError(f"--targets {text!r}: labels are key=value")
            labels[k.strip()] = v.strip()
        return {"labels": labels}
    return {"gateways": [g.strip() for g in text.split(",") if g.strip()]}


class ReleaseStore:
    """The published releases of one cloud data dir."""

    def __init__(self, data_dir: Path, signing_key: Path | None = None) -> None:
        self.root = Path(data_dir) / "ota"
        self.releases_dir = self.root / "releases"
        self.releases_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key_path = signing_key or Path(data_dir) / "pki" / "ota-signing.key"
        self.db = sqlite3.connect(self.root / "ota.db", isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS releases (
              serial INTEGER PRIMARY KEY AUTOINCREMENT,
              release_id TEXT UNIQUE, kind TEXT NOT NULL, name TEXT NOT NULL,
              version TEXT NOT NULL, created_ms INTEGER NOT NULL, payload_size INTEGER,
              files INTEGER, targets TEXT, state TEXT NOT NULL DEFAULT 'pending');
            """
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ReleaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _signing_key(self) -> ed25519.Ed25519PrivateKey:
        if not self.signing_key_path.exists():
            raise OtaError(f"{self.signing_key_path} not found: run `edgegw-cloud init` first")
        key = pki.load_private_key(self.signing_key_path)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise OtaError(f"{self.signing_key_path} is not an Ed25519 key")
        return key

    def publish(
        self,
        files: Mapping[str, bytes | Path],
        *,
        kind: str,
        name: str,
        version: str,
        min_version: str | None = None,
        allow_downgrade: bool = False,
        targets: Mapping[str, Any] | None = None,
        firmware: Mapping[str, Any] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> ReleaseRow:
        if kind not in KINDS:
            raise OtaError(f"--kind must be one of {', '.join(KINDS)}")
        try:
            parse_version(version)
            if min_version:
                parse_version(min_version)
        except ReleaseError as exc:
            raise OtaError(str(exc)) from None
        if not files:
            raise OtaError("a release needs at least one file")
        for stale in self.releases_dir.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        key = self._signing_key()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute(
                "INSERT INTO releases(kind, name, version, created_ms) VALUES (?,?,?,0)",
                (kind, name, version),
            )
            serial = int(cur.lastrowid or 0)
            tmp = self.releases_dir / f"{serial}.tmp"
            tmp.mkdir()
            entries = build_tar(files, tmp / "payload.tar")
            manifest = make_manifest(
                tmp / "payload.tar",
                entries,
                kind=kind,
                name=name,
                version=version,
                serial=serial,
                min_version=min_version,
                allow_downgrade=allow_downgrade,
                targets=targets,
                firmware=firmware,
                chunk_size=chunk_size,
            )
            raw = manifest.encode()
            (tmp / "manifest.json").write_bytes(raw)
            (tmp / "manifest.sig").write_bytes(sign(raw, key))
            final = self.releases_dir / manifest.release_id
            os.replace(tmp, final)
            self.db.execute(
                "UPDATE releases SET release_id=?, created_ms=?, payload_size=?, files=?, "
                "targets=?, state='published' WHERE serial=?",
                (
                    manifest.release_id,
                    manifest.created_ms,
                    manifest.payload_size,
                    len(entries),
                    json.dumps(manifest.targets, sort_keys=True),
                    serial,
                ),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        log.info("published %s (%d bytes)", manifest.release_id, manifest.payload_size)
        return self.get(manifest.release_id)

    def releases(self) -> list[ReleaseRow]:
        rows = self.db.execute(
            "SELECT serial, release_id, kind, name, version, created_ms, payload_size, files, "
            "targets FROM releases WHERE state='published' ORDER BY serial"
        ).fetchall()
        return [
            ReleaseRow(
                serial=r[0],
                release_id=r[1],
                kind=r[2],
                name=r[3],
                version=r[4],
                created_ms=r[5],
                payload_size=r[6],
                files=r[7],
                targets=r[8],
                path=self.releases_dir / r[1],
            )
            for r in rows
        ]

    def get(self, release_id: str) -> ReleaseRow:
        for r in self.releases():
            if r.release_id == release_id or str(r.serial) == release_id:
                return r
        raise OtaError(f"no release {release_id!r}; list them with `edgegw-cloud ota releases`")

    @staticmethod
    def read(row: ReleaseRow) -> tuple[bytes, bytes]:
        """(manifest bytes, signature) of a stored release."""
        return (row.path / "manifest.json").read_bytes(), (row.path / "manifest.sig").read_bytes()


# --------------------------------------------------------------------------- software bundles
def bundle_files(bundle_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The files of a software bundle built by ``build_bundle`` and its bundle.json."""
    info_path = bundle_dir / BUNDLE_INFO
    if not info_path.exists():
        raise OtaError(
            f"{bundle_dir} has no {BUNDLE_INFO}: build it with `edgegw-cloud ota build-bundle`"
        )
    info = json.loads(info_path.read_text())
    files: dict[str, Path] = {BUNDLE_INFO: info_path}
    for whl in sorted((bundle_dir / WHEEL_DIR).glob("*.whl")):
        files[f"{WHEEL_DIR}/{whl.name}"] = whl
    if not any(n.startswith(f"{WHEEL_DIR}/edgegw-") for n in files):
        raise OtaError(f"{bundle_dir}/{WHEEL_DIR} holds no edgegw wheel")
    return files, info


def _wheel_version(wheel_dir: Path, dist: str) -> str:
    found = sorted(wheel_dir.glob(f"{dist}-*.whl"))
    if not found:
        raise OtaError(f"pip built no {dist} wheel in {wheel_dir}")
    return found[-1].name.split("-")[1]


def build_bundle(
    project: Path,
    out: Path,
    *,
    extras: Iterable[str] = (),
    platform: str | None = None,
    python_version: str | None = None,
    pip: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build the edgegw wheel and every dependency wheel into ``out/wheels`` + ``bundle.json``.

    Dependency wheels come from pip's configured index (the local registries here); with
    ``platform`` (e.g. ``manylinux2014_aarch64``) they are downloaded as binary wheels for that
    platform, so an x86 machine can build a Raspberry Pi bundle.
    """
    pip = list(pip or [sys.executable, "-m", "pip"])
    project, out = Path(project).resolve(), Path(out).resolve()
    wheels = out / WHEEL_DIR
    wheels.mkdir(parents=True, exist_ok=True)
    extra = f"[{','.join(extras)}]" if extras else ""
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(project)],
        check=True,
    )
    version = _wheel_version(wheels, "edgegw")
    own = wheels / next(p.name for p in wheels.glob(f"edgegw-{version}-*.whl"))
    req = f"edgegw{extra} @ {own.as_uri()}"
    if platform:
        cmd = [*pip, "download", "-q", "--only-binary=:all:", "--platform", platform]
        if python_version:
            cmd += ["--python-version", python_version]
        subprocess.run([*cmd, "-d", str(wheels), req], check=True)
    else:
        subprocess.run([*pip, "wheel", "-q", "-w", str(wheels), req], check=True)
    info = {
        "name": "edgegw",
        "version": version,
        "requirement": f"edgegw{extra}=={version}",
        "platform": platform or "native",
        "python": python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
        "wheels": sorted(p.name for p in wheels.glob("*.whl")),
    }
    (out / BUNDLE_INFO).write_text(json.dumps(info, indent=1) + "\n")
    # the one-command installer travels with the bundle (README "Installing on a gateway")
    for src, name in (
        (project / "gateway" / "ota" / "install.py", "install.py"),
        (project / "gateway" / "ota" / "launcher.py", "edgegw-launch"),
        (project / "systemd" / "edgegw.service", "edgegw.service"),
    ):
        if src.exists():
            shutil.copy(src, out / name)
            (out / name).chmod(0o755 if name != "edgegw.service" else 0o644)
    return info


def publish_bundle(
    store: ReleaseStore, bundle_dir: Path, *, targets: Mapping[str, Any] | None = None, **kw: Any
) -> ReleaseRow:
    files, info = bundle_files(bundle_dir)
    return store.publish(
        files, kind="software", name="edgegw", version=str(info["version"]), targets=targets, **kw
    )


def release_summary(row: ReleaseRow) -> dict[str, Any]:
    return {
        "serial": row.serial,
        "release": row.release_id,
        "kind": row.kind,
        "name": row.name,
        "version": row.version,
        "created_ms": row.created_ms,
        "size": row.payload_size,
        "files": row.files,
        "targets": json.loads(row.targets or "{}"),
    }


def dump(doc: Any) -> bytes:
    return canonical_json(doc)
