"""A private copy of the project's source tree, for tests that build the project with pip.

pip builds a local project in place: setuptools writes ``build/`` and ``edgegw.egg-info/`` into
the source folder, and bdist_wheel deletes its staging folder under ``build/`` when it is done.
Two builds of the checkout at once (two pytest-xdist workers, or a developer's ``make bundle``
while the suite runs) share those folders: one fails on a vanished file or zips the other's
half-copied modules. Invariant: a test that builds the project builds a copy made here (only the
files the build reads; never ``build/``, ``*.egg-info`` or caches), so it writes nothing into the
checkout and no two builds share a folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: what the build reads: the package-dir folders of pyproject.toml and the files it names
FOLDERS = ("gateway", "drivers", "cloud_stub", "examples", "systemd")
FILES = ("pyproject.toml", "README.md")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", ".pytest_cache")


def copy_project(dest: Path) -> Path:
    """Copy the project sources to ``dest`` (which must not exist yet) and return it."""
    dest.mkdir(parents=True)
    for name in FOLDERS:
        shutil.copytree(REPO / name, dest / name, ignore=_IGNORE)
    for name in FILES:
        shutil.copy(REPO / name, dest / name)
    return dest
