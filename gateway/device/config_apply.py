"""Config bundles applied commit-confirmed: validate, install with a rollback copy, keep only if
confirmed in time, otherwise revert by itself. Reusable: remote configuration and OTA config
bundles use the same mechanism.

A *bundle* is a set of files relative to the config folder: the main file (``gateway.yaml``)
and whatever it includes. ``Bundle.from_path(p)`` reads a single YAML file or a folder.

Usage (what ``edgegw.device.remote_config`` does)::

    tx = ConfigApply(Path("/etc/edgegw/gateway.yaml"))
    issues = tx.check(bundle, check_file)        # the `edgegw check` checker; [] when valid
    tx.install(bundle, version="17", confirm_within=120)   # backup + pending record + install
    ... apply it to the running gateway; on failure: tx.revert("why")
    tx.confirm("17")       # the cloud answered in time: keep it
    # nobody confirmed: a timer (or the next start, via ``recover()``) calls tx.revert(...)

Invariants (the transaction folder is ``<config dir>/.edgegw-apply/``, never in the state dir,
so the daemon can recover before it has read any config):
- ``install`` copies every file it will overwrite into ``rollback/`` and fsyncs, then writes
  ``pending.json`` (atomic rename) with ``installing: true``, then replaces each file atomically
  (temp file + fsync + rename), then rewrites ``pending.json`` with ``installing: false``. A crash
  at any point leaves either the old files, or a pending record from which ``revert`` restores
  them exactly (new files deleted, overwritten ones restored).
- ``recover()`` (call it at daemon start, before loading the config): a pending record that is
  still ``installing`` or whose deadline (wall clock) has passed is reverted; otherwise the caller
  re-arms the timer for the time left (``Pending.remaining_s``).
- ``confirm`` deletes the pending record and the rollback copy and records the committed
  version in ``committed.json``; ``revert`` records ``last.json`` (version, outcome, reason) so
  the outcome can be reported after a restart too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegw.protocol.bundle import APPLY_DIR, Bundle, BundleError
from edgegw.protocol.fileperms import fsync_dir

__all__ = ["APPLY_DIR", "Bundle", "BundleError", "ConfigApply", "Pending"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Pending:
    version: str
    deadline_ms: int
    installed_ms: int
    files: list[dict[str, Any]] = field(default_factory=list)  # {name, backup: bool}
    installing: bool = True

    @property
    def remaining_s(self) -> float:
        return max(0.0, (self.deadline_ms - _now_ms()) / 1000.0)


def _write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class ConfigApply:
    """The commit-confirmed transaction of one gateway config file (see module doc)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = Path(config_path).absolute()
        self.config_dir = self.config_path.parent
        self.dir = self.config_dir / APPLY_DIR
        self.rollback = self.dir / "rollback"
        self.pending_file = self.dir / "pending.json"

    def _target(self, bundle: Bundle, name: str) -> Path:
        # the bundle's main file is installed as the gateway's own config file
        return self.config_path if name == bundle.main else self.config_dir / name

    # ------------------------------------------------------------------ validate
    def check(self, bundle: Bundle, check_file: Callable[[Path], list[str]]) -> list[str]:
        """Validate with ``check_file`` (the runtime passes the ``edgegw check`` checker): []
        when valid, else its ``file:line:col: path: message`` lines (file names relative to the
        config folder, as the operator wrote them)."""
        staged = Path(tempfile.mkdtemp(prefix="staged-", dir=self._ensure_dir()))
        try:
            for name, data in bundle.files.items():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                (staged / name).write_bytes(data)
            # files the bundle does not carry are still reachable (includes left unchanged)
            for f in self.config_dir.iterdir():
                if f.is_file() and f.suffix in (".yaml", ".yml", ".json") and not (
                    staged / f.name).exists() and f != self.config_path:
                    shutil.copy2(f, staged / f.name)
            prefix = f"{staged}/"
            return [line.replace(prefix, "") for line in check_file(staged / bundle.main)]
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _ensure_dir(self) -> Path:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        return self.dir

    # ------------------------------------------------------------------ transaction
    def pending(self) -> Pending | None:
        try:
            doc = json.loads(self.pending_file.read_text())
        except FileNotFoundError:
            return None
        return Pending(str(doc["version"]), int(doc["deadline_ms"]), int(doc["installed_ms"]),
                       list(doc["files"]), bool(doc["installing"]))

    def _save_pending(self, p: Pending) -> None:
        _write_atomic(self.pending_file, json.dumps(p.__dict__).encode(), 0o600)

    def install(self, bundle: Bundle, version: str | int, confirm_within: float) -> Pending:
        """Back up what the bundle replaces, record the pending transaction, install it."""
        if self.pending() is not None:
            raise BundleError("another configuration is waiting for confirmation; confirm or "
                              "revert it first")
        self._ensure_dir()
        shutil.rmtree(self.rollback, ignore_errors=True)
        self.rollback.mkdir(mode=0o700)
        files: list[dict[str, Any]] = []
        for name in bundle.files:
            target = self._target(bundle, name)
            had = target.exists()
            if had:
                _write_atomic(self.rollback / name, target.read_bytes(), 0o600)
            files.append({"name": name, "target": str(target), "backup": had,
                          "mode": target.stat().st_mode & 0o777 if had else 0o640})
        now = _now_ms()
        p = Pending(str(version), now + int(confirm_within * 1000), now, files, True)
        self._save_pending(p)
        for name, data in bundle.files.items():
            f = next(x for x in files if x["name"] == name)
            _write_atomic(Path(f["target"]), data, int(f["mode"]))
        p.installing = False
        self._save_pending(p)
        return p

    def confirm(self, version: str | int | None = None) -> bool:
        """Keep the pending configuration. False if nothing (or another version) is pending."""
        p = self.pending()
        if p is None or (version is not None and str(version) != p.version):
            return False
        _write_atomic(self.dir / "committed.json",
                      json.dumps({"version": p.version, "confirmed_ms": _now_ms()}).encode(), 0o600)
        self._record_last(p.version, "confirmed", "")
        self.pending_file.unlink()
        fsync_dir(self.dir)
        shutil.rmtree(self.rollback, ignore_errors=True)
        return True

    def revert(self, reason: str) -> Pending | None:
        """Restore the files as they were before ``install``; returns what was reverted."""
        p = self.pending()
        if p is None:
            return None
        for f in p.files:
            target = Path(f["target"])
            if f["backup"]:
                _write_atomic(target, (self.rollback / f["name"]).read_bytes(), int(f["mode"]))
            else:
                target.unlink(missing_ok=True)
        self._record_last(p.version, "reverted", reason)
        self.pending_file.unlink()
        fsync_dir(self.dir)
        shutil.rmtree(self.rollback, ignore_errors=True)
        return p

    def recover(self) -> str | None:
        """At start: revert an interrupted install or an expired pending config.

        Returns "reverted", "pending" (still within its time: re-arm a timer for
        ``pending().remaining_s``) or None (nothing pending)."""
        p = self.pending()
        if p is None:
            return None
        if p.installing:
            self.revert("interrupted while installing")
            return "reverted"
        if p.remaining_s <= 0:
            self.revert("not confirmed within the time limit (found at start)")
            return "reverted"
        return "pending"

    def _record_last(self, version: str, outcome: str, reason: str) -> None:
        _write_atomic(self.dir / "last.json", json.dumps(
            {"version": version, "outcome": outcome, "reason": reason, "ms": _now_ms()}
        ).encode(), 0o600)

    def last(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.dir / "last.json").read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def committed_version(self) -> str | None:
        try:
            return str(json.loads((self.dir / "committed.json").read_text())["version"])
        except (FileNotFoundError, ValueError, KeyError):
            return None
