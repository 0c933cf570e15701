"""The one-command installer in a fresh Debian root directory, then uninstall leaves nothing.

Variant used in CI: a ROOT DIRECTORY (not a booted container). It starts as a fresh Debian
system's account database (base-passwd's passwd.master/group.master, empty shadow files, as
debootstrap lays them down); the installer runs with ``--root`` exactly as it runs on a gateway
(systemd-sysusers/tmpfiles/systemctl with ``--root``), then ``systemd-analyze verify --root``
checks the installed unit against the installed files. No service is started (no PID 1 here);
the full debootstrap + chroot run is ``make install-test-debootstrap`` (see docs/ota.md).

This is also the one test of the real offline bundle: ``edgegw-cloud ota build-bundle`` builds
every dependency wheel and the slot venv installs them with ``--no-index``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgegw_cloud.ota import build_bundle
from tests.srctree import copy_project

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            body = p.read_text(errors="replace") if p.is_file() and not p.is_symlink() else ""
            out[str(p.relative_to(root))] = (st.st_mode, body)
    return out


def fresh_root(root: Path) -> Path:
    etc = root / "etc"
    etc.mkdir(parents=True)
    shutil.copy("/usr/share/base-passwd/passwd.master", etc / "passwd")
    shutil.copy("/usr/share/base-passwd/group.master", etc / "group")
    for name in ("shadow", "gshadow"):
        (etc / name).write_text("")
        (etc / name).chmod(0o640)
    # a Debian 12 root has systemd (and python3): its unit files, for verify --root
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    # directories every Debian 12 root has (base-files, systemd)
    for d in ("opt", "var/lib", "etc/systemd/system", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def test_install_is_idempotent_and_uninstall_leaves_nothing(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the installer test runs as root (CI does)"
    bundle = tmp_path / "bundle"
    info = build_bundle(copy_project(tmp_path / "src"), bundle)  # pip builds in place
    assert (bundle / "install.py").exists() and (bundle / "edgegw-launch").exists()
    wheels = {w.split("-")[0].lower() for w in info["wheels"]}
    assert {"edgegw", "pydantic", "cryptography", "paho_mqtt", "pymodbus"} <= wheels
    root = fresh_root(tmp_path / "root")
    before = snapshot(root)
    cmd = [sys.executable, str(bundle / "install.py"), "--root", str(root), "--no-start"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    passwd = (root / "etc/passwd").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith("edgegw:"))
    uid, gid = int(user.split(":")[2]), int(user.split(":")[3])
    dialout = next(
        g for g in (root / "etc/group").read_text().splitlines() if g.startswith("dialout:")
    )
    assert "edgegw" in dialout.split(":")[3].split(",")
    for d, owner, mode in (
        ("var/lib/edgegw", uid, 0o750),
        ("opt/edgegw/slots", uid, 0o755),
        ("opt/edgegw/bin", 0, 0o755),
    ):
        st = (root / d).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (owner, mode), d
    conf = (root / "etc/edgegw").stat()
    assert (conf.st_uid, conf.st_gid, conf.st_mode & 0o777) == (0, gid, 0o750)
    launcher = root / "opt/edgegw/bin/edgegw-launch"
    assert launcher.stat().st_uid == 0 and launcher.stat().st_mode & 0o777 == 0o755
    version = info["version"]
    slots = root / "opt/edgegw/slots"
    assert os.readlink(slots / "current") == version
    assert json.loads((slots / "boot.json").read_text())["committed"] == version
    assert (root / "etc/systemd/system/multi-user.target.wants/edgegw.service").is_symlink()
    # the slot's own edgegw (installed offline from the bundle) accepts the starter config,
    # whose state_dir is the unit's StateDirectory (writable under ProtectSystem=strict)
    cfg = root / "etc/edgegw/gateway.yaml"
    assert "state_dir: /var/lib/edgegw" in cfg.read_text()
    check = subprocess.run(
        [str(slots / version / "bin/edgegw"), "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = root / "etc/systemd/system/edgegw.service"
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    bad = [ln for ln in (verify.stdout + verify.stderr).splitlines() if "edgegw" in ln]
    assert verify.returncode == 0 and not bad, verify.stdout + verify.stderr

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout

    out = subprocess.run(
        [sys.executable, str(bundle / "install.py"), "--root", str(root), "--uninstall"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    after = snapshot(root)
    # passwd-/group-/shadow-/gshadow- and .pwd.lock are the account tools' own backups and
    # lock (every useradd/userdel on any Debian leaves them); they hold no edgegw entry now
    tools = {"etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock"}
    left = {k: v for k, v in after.items() if k not in tools}
    assert left == before, sorted(set(before) ^ set(left))
