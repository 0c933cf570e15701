#!/usr/bin/env python3
"""edgegw-install: install (or uninstall) edgegw on a Debian 12 / Raspberry Pi OS 64-bit gateway.

One command, from a software bundle (``edgegw-cloud ota build-bundle`` / ``make bundle``; the
bundle carries this script as ``install.py``)::

    sudo python3 BUNDLE/install.py                 # install or update in place (idempotent)
    sudo python3 BUNDLE/install.py --uninstall     # remove everything it installed, data too
    sudo python3 BUNDLE/install.py --uninstall --keep-data   # keep /etc/edgegw, /var/lib/edgegw

Standard library only (runs with the system python3 before any venv exists). What it does:

1. system user ``edgegw`` in ``dialout`` (systemd-sysusers with systemd/edgegw.sysusers.conf);
2. directories (systemd-tmpfiles): /etc/edgegw (0750 root:edgegw), /var/lib/edgegw (0750, the
   state dir), /opt/edgegw/slots (owned by edgegw: OTA installs new slots there);
3. the launcher /opt/edgegw/bin/edgegw-launch (root-owned: no update can replace it);
4. the first slot: a venv under /opt/edgegw/slots/<version> installed offline from the
   bundle's wheels, ``current`` pointing at it, boot.json committed;
5. a starter /etc/edgegw/gateway.yaml (state_dir /var/lib/edgegw) unless one exists;
6. the unit /etc/systemd/system/edgegw.service, enabled and started.

``--root DIR`` installs into another root (an image being prepared, or a test): users and
directories are created with ``--root``, units are enabled with ``systemctl --root`` and
nothing is started. Every step checks before it acts, so a second run changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PREFIX = Path("/opt/edgegw")
SLOTS = PREFIX / "slots"
LAUNCHER = PREFIX / "bin" / "edgegw-launch"
CONF_DIR = Path("/etc/edgegw")
STATE_DIR = Path("/var/lib/edgegw")
UNIT = Path("/etc/systemd/system/edgegw.service")
SYSUSERS = Path("/usr/lib/sysusers.d/edgegw.conf")
TMPFILES = Path("/usr/lib/tmpfiles.d/edgegw.conf")
USER = "edgegw"

SYSUSERS_CONF = """# edgegw gateway user, in dialout for serial ports (installed by edgegw-install)
u edgegw - "edgegw gateway" /var/lib/edgegw
m edgegw dialout
"""
TMPFILES_CONF = """# edgegw directories (installed by edgegw-install)
d /etc/edgegw 0750 root edgegw -
d /var/lib/edgegw 0750 edgegw edgegw -
d /opt/edgegw 0755 root root -
d /opt/edgegw/bin 0755 root root -
d /opt/edgegw/slots 0755 edgegw edgegw -
"""


def say(msg: str) -> None:
    print(f"edgegw-install: {msg}", flush=True)


class InstallError(Exception):
    pass


def run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def at(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def write_if_changed(path: Path, text: str, mode: int) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


def unit_text(bundle_unit: Path | None) -> str:
    """The shipped unit (systemd/edgegw.service): it already runs the launcher."""
    here = Path(__file__).resolve().parent
    for cand in (
        bundle_unit,
        here / "edgegw.service",
        here.parents[1] / "systemd" / "edgegw.service",
    ):
        if cand is not None and cand.exists():
            return cand.read_text()
    raise InstallError("edgegw.service not found next to install.py or in the bundle")


def lookup_ids(root: Path) -> tuple[int, int]:
    uid = gid = -1
    for line in at(root, Path("/etc/passwd")).read_text().splitlines():
        f = line.split(":")
        if f[0] == USER:
            uid, gid = int(f[2]), int(f[3])
    if uid < 0:
        raise InstallError(f"user {USER} was not created (systemd-sysusers)")
    return uid, gid


def python_for_slots(root: Path) -> str:
    if root == Path("/"):
        return shutil.which("python3") or "/usr/bin/python3"
    return sys.executable


def install(bundle: Path, root: Path, *, start: bool) -> None:
    info = json.loads((bundle / "bundle.json").read_text())
    version = str(info["version"])
    if sys.version_info < (3, 11):  # noqa: UP036 (runs under the system python3)
        raise InstallError("Python 3.11 or newer is needed (Debian 12 / Raspberry Pi OS 12)")
    changed = write_if_changed(at(root, SYSUSERS), SYSUSERS_CONF, 0o644)
    changed |= write_if_changed(at(root, TMPFILES), TMPFILES_CONF, 0o644)
    rootopt = [] if root == Path("/") else [f"--root={root}"]
    run(["systemd-sysusers", *rootopt, str(at(root, SYSUSERS))])
    run(["systemd-tmpfiles", "--create", *rootopt, str(at(root, TMPFILES))])
    uid, gid = lookup_ids(root)
    if root != Path("/"):
        # tmpfiles --root resolves users on the host; fix owners from the root's own passwd
        for d in (STATE_DIR, SLOTS):
            os.chown(at(root, d), uid, gid)
        os.chown(at(root, CONF_DIR), 0, gid)
    launcher_src = Path(__file__).resolve().with_name("edgegw-launch")
    if not launcher_src.exists():
        launcher_src = Path(__file__).resolve().with_name("launcher.py")
    changed |= write_if_changed(at(root, LAUNCHER), launcher_src.read_text(), 0o755)
    slots = at(root, SLOTS)
    from_slot = slots / version / "bin" / "edgegw"
    if not from_slot.exists() or (slots / version / ".incomplete").exists():
        say(f"installing edgegw {version} into {SLOTS / version} (offline, from the bundle)")
        create_first_slot(slots, bundle, python_for_slots(root), version, info)
        changed = True
    for dirpath, dirnames, filenames in os.walk(slots):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(slots, uid, gid)
    cfg = at(root, CONF_DIR / "gateway.yaml")
    if not cfg.exists():
        starter = bundle / "gateway.yaml"
        text = starter.read_text() if starter.exists() else STARTER
        write_if_changed(cfg, text, 0o640)
        os.chown(cfg, 0, gid)
        say(f"wrote a starter {CONF_DIR / 'gateway.yaml'}: edit it, then restart edgegw")
        changed = True
    changed |= write_if_changed(at(root, UNIT), unit_text(bundle / "edgegw.service"), 0o644)
    if root == Path("/"):
        run(["systemctl", "daemon-reload"], check=False)
        run(["systemctl", "enable", "edgegw.service"])
        if start:
            run(["systemctl", "restart" if changed else "start", "edgegw.service"])
    else:
        run(["systemctl", f"--root={root}", "enable", "edgegw.service"])
    say(f"edgegw {version} installed" + ("" if changed else " (nothing to change)"))


STARTER = """# edgegw starter config (installed by edgegw-install). Check: edgegw check -c THIS_FILE
gateway:
  id: my-gateway
  state_dir: /var/lib/edgegw     # writable under the unit's ProtectSystem=strict
uplink:
  enabled: false                 # enroll first (README "Installing on a gateway")
devices:
  - id: demo
    driver: sim
    poll: 1s
    options:
      points: [{name: temperature, signal: sine}]
"""


def create_first_slot(
    slots: Path, bundle: Path, python: str, version: str, info: dict[str, object]
) -> None:
    slot = slots / version
    shutil.rmtree(slot, ignore_errors=True)
    slot.mkdir(parents=True)
    (slot / ".incomplete").write_text("installer\n")
    run([python, "-m", "venv", str(slot)])
    run(
        [
            str(slot / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(bundle / "wheels"),
            str(info["requirement"]),
        ]
    )
    (slot / ".incomplete").unlink()
    boot = slots / "boot.json"
    doc = json.loads(boot.read_text()) if boot.exists() else {}
    if not doc.get("committed") or not (slots / str(doc["committed"]) / "bin").exists():
        doc.update({"committed": version, "trial": None})
        boot.write_text(json.dumps(doc, indent=1, sort_keys=True))
    link = slots / "current"
    tmp = slots / ".current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(str(doc["committed"]), tmp)
    os.replace(tmp, link)


def uninstall(root: Path, *, keep_data: bool) -> None:
    if root == Path("/"):
        run(["systemctl", "disable", "--now", "edgegw.service"], check=False)
    elif at(root, UNIT).exists():
        run(["systemctl", f"--root={root}", "disable", "edgegw.service"], check=False)
    for f in (UNIT, SYSUSERS, TMPFILES):
        at(root, f).unlink(missing_ok=True)
    shutil.rmtree(at(root, PREFIX), ignore_errors=True)
    if not keep_data:
        shutil.rmtree(at(root, CONF_DIR), ignore_errors=True)
        shutil.rmtree(at(root, STATE_DIR), ignore_errors=True)
        rootopt = [] if root == Path("/") else ["--root", str(root)]
        run(["userdel", *rootopt, USER], check=False)
        run(["groupdel", *rootopt, USER], check=False)
    if root == Path("/"):
        run(["systemctl", "daemon-reload"], check=False)
    say("edgegw removed" + (" (kept /etc/edgegw and /var/lib/edgegw)" if keep_data else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgegw-install", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--root", type=Path, default=Path("/"), help="install into another root")
    p.add_argument("--no-start", action="store_true", help="enable but do not start")
    p.add_argument("--uninstall", action="store_true")
    p.add_argument("--keep-data", action="store_true", help="with --uninstall")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("edgegw-install: run as root (sudo)", file=sys.stderr)
        return 1
    root = args.root.resolve()
    try:
        if args.uninstall:
            uninstall(root, keep_data=args.keep_data)
        else:
            install(args.bundle.resolve(), root, start=not args.no_start)
    except (InstallError, OSError, KeyError, ValueError) as exc:
        print(f"edgegw-install: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
