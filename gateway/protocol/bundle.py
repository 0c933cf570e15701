"""Config bundles on the wire: a set of text files relative to the gateway's config folder.

Shared by the cloud (``edgegw-cloud config push``, OTA config bundles) and the gateway
(``edgegw.device.config_apply``). Wire form: ``{"main": "gateway.yaml", "files": {name: text}}``.
Invariants: names are relative POSIX paths that stay inside the folder (no ``..``, not absolute,
never the transaction folder ``.edgegw-apply``); the main file is one of the files; the total
is at most ``MAX_BUNDLE_BYTES``. Any violation raises ``BundleError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

APPLY_DIR = ".edgegw-apply"
MAX_BUNDLE_BYTES = 2 * 1024 * 1024


class BundleError(ValueError):
    """A bundle that cannot be installed (bad file names, too large, no main file)."""


@dataclass(frozen=True)
class Bundle:
    """Files relative to the config folder; ``main`` is the gateway's config file in it."""

    files: Mapping[str, bytes]
    main: str = "gateway.yaml"

    def __post_init__(self) -> None:
        total = 0
        for name, data in self.files.items():
            p = PurePosixPath(name)
            if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] == APPLY_DIR:
                raise BundleError(f"bundle file name {name!r} must be relative, inside the "
                                  "config folder")
            total += len(data)
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle of {total} bytes exceeds {MAX_BUNDLE_BYTES}")
        if self.main not in self.files:
            raise BundleError(f"bundle has no main file {self.main!r} "
                              f"(files: {', '.join(sorted(self.files)) or 'none'})")

    @classmethod
    def from_path(cls, path: Path, main: str | None = None) -> Bundle:
        """A single config file, or a folder (every *.yaml/*.yml/*.json file under it)."""
        path = Path(path)
        if path.is_file():
            return cls({path.name: path.read_bytes()}, main or path.name)
        if not path.is_dir():
            raise BundleError(f"{path}: no such file or folder")
        files = {
            f.relative_to(path).as_posix(): f.read_bytes()
            for f in sorted(path.rglob("*"))
            if f.is_file() and f.suffix in (".yaml", ".yml", ".json")
        }
        return cls(files, main or "gateway.yaml")

    def to_wire(self) -> dict[str, Any]:
        try:
            files = {k: v.decode("utf-8") for k, v in self.files.items()}
        except UnicodeDecodeError as exc:
            raise BundleError(f"bundle files must be UTF-8 text: {exc}") from None
        return {"main": self.main, "files": files}

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> Bundle:
        files = doc.get("files") if isinstance(doc, Mapping) else None
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise BundleError("bundle files must be a mapping of name -> text")
        return cls({k: v.encode("utf-8") for k, v in files.items()},
                   str(doc.get("main") or "gateway.yaml"))
