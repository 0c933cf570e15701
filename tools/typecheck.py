"""Type-check the tree under its installed names (edgegw, edgegw.drivers, edgegw_cloud).

The repository folders are fixed by the product card (gateway/, drivers/, cloud_stub/) and
mapped onto the namespace only at install time; mypy cannot follow setuptools' editable import
hook, so this builds a throw-away tree of symlinks with the installed layout and runs mypy on it.
Usage: python tools/typecheck.py [extra mypy args]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_tree(dest: Path) -> None:
    pkg = dest / "edgegw"
    pkg.mkdir()
    for entry in (ROOT / "gateway").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "drivers").symlink_to(ROOT / "drivers")
    (dest / "edgegw_cloud").symlink_to(ROOT / "cloud_stub")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="edgegw-typecheck-") as tmp:
        build_tree(Path(tmp))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        cmd += ["--cache-dir", str(ROOT / ".mypy_cache"), "-p", "edgegw", "-p", "edgegw_cloud"]
        cmd += argv
        env = {**os.environ, "MYPYPATH": tmp}
        return subprocess.run(cmd, cwd=tmp, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
