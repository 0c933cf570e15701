"""Install a verified software release into a new slot and hand it to the launcher on trial.

Steps of ``install_software`` (each failure removes the half-made slot and raises Refusal):

1. ``verify_payload`` (signature already checked by the caller's ``check_offer``): nothing is
   written to the slots dir before it passes.
2. ``slots/<version>/`` created with an ``.incomplete`` marker; the bundle is extracted into
   ``slots/<version>/bundle/`` by ``extract_verified``.
3. ``python -m venv`` there, then ``pip install --no-index --find-links bundle/wheels`` of the
   bundle's requirement: offline, only the bundle's own wheels.
4. ``<slot>/bin/edgegw check -c CONFIG``: the live config must be valid for the new version.
5. marker removed, ``launcher.begin_trial``: the next service start runs the new version.

Test mode (``deps_from``): instead of installing every dependency wheel, the slot gets a
``.pth`` line naming an existing site-packages (the test venv's) and only the edgegw wheel is
installed, with ``--no-deps``, by the running interpreter's pip (``pip --python SLOT``) into a
venv made ``--without-pip`` (ensurepip is most of a venv's creation time). The slot still runs
its own edgegw (a .pth path line does not activate the editable install's finder in that
directory). Used by the fault tests to keep
them fast; the full offline install of every wheel is tested once (test_bundle_install_offline).

Slot retention: the committed and the previous committed slots are kept, older ones removed
when a new one is installed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from edgegw.ota import launcher
from edgegw.ota.verify import Refusal, extract_verified, verify_payload
from edgegw.protocol.release import Manifest

log = logging.getLogger("edgegw.ota.slots")

TEST_DEPS_PTH = "_edgegw_ota_test_deps.pth"


def _run(cmd: list[str], what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Refusal("install_failed", f"{what} took longer than {timeout:g}s") from None
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        reason = "check_failed" if what.startswith("edgegw check") else "install_failed"
        raise Refusal(reason, f"{what} exited {proc.returncode}: " + " | ".join(out))


def _site_packages(slot: Path) -> Path:
    return (
        slot
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / ("site-packages")
    )


def _discard(slot: Path) -> None:
    """Remove a slot directory that something may still be writing into: the pip of an
    interrupted install keeps running after its updater was SIGKILLed, so a plain rmtree can
    fail with "Directory not empty" while pip adds files. The slot is renamed out of the way
    first (atomic; the orphan writes into the renamed tree), then deleted as far as it can be;
    ``prune`` removes what is left next time."""
    trash = slot.with_name(f".trash-{slot.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        slot.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def prune(slots: Path) -> None:
    for d in slots.glob(".trash-*"):
        shutil.rmtree(d, ignore_errors=True)
    boot = launcher.read_boot(slots)
    keep = {boot.get("committed"), boot.get("previous"), launcher.current_version(slots)}
    trial = boot.get("trial")
    if trial:
        keep.add(trial.get("version"))
    for d in slots.iterdir():
        if d.is_dir() and not d.is_symlink() and d.name not in keep and d.name[0].isdigit():
            log.info("removing old slot %s", d.name)
            shutil.rmtree(d, ignore_errors=True)


def install_software(
    slots: Path,
    payload: Path,
    m: Manifest,
    *,
    config: Path | None,
    python: str = sys.executable,
    deps_from: Path | None = None,
    max_attempts: int = launcher.DEFAULT_MAX_ATTEMPTS,
    deadline_s: float = launcher.DEFAULT_DEADLINE_S,
    timeout: float = 600.0,
) -> Path:
    """Verify, install offline, check the live config, start the trial. Returns the slot."""
    if m.kind != "software":
        raise Refusal("wrong_kind", f"{m.release_id} is a {m.kind} release, not software")
    verify_payload(payload, m)  # before anything is written under slots/
    slots.mkdir(parents=True, exist_ok=True)
    boot = launcher.read_boot(slots)
    if m.version in (boot.get("committed"), launcher.current_version(slots)):
        raise Refusal("already_installed", f"{m.version} is the running version")
    slot = slots / m.version
    if slot.exists():
        log.info("removing leftover slot %s (interrupted install or old trial)", slot)
        _discard(slot)
    prune(slots)
    try:
        slot.mkdir()
        (slot / launcher.INCOMPLETE).write_text(m.release_id + "\n")
        bundle = slot / "bundle"
        extract_verified(payload, m, bundle)
        info = json.loads((bundle / "bundle.json").read_text())
        venv = [python, "-m", "venv", str(slot)]
        if deps_from is not None:
            venv.insert(3, "--without-pip")  # test mode: this interpreter's pip installs
        _run(venv, "python -m venv", timeout)
        spy = str(slot / "bin" / "python")
        wheels = bundle / "wheels"
        if deps_from is not None:
            site = _site_packages(slot)
            site.mkdir(parents=True, exist_ok=True)
            (site / TEST_DEPS_PTH).write_text(str(deps_from) + "\n")
            own = sorted(wheels.glob(f"edgegw-{m.version}-*.whl"))
            if not own:
                raise Refusal("install_failed", f"no edgegw-{m.version} wheel in the bundle")
            cmd = [sys.executable, "-m", "pip", "--python", spy, "install", "-q", "--no-index",
                   "--no-deps", str(own[0])]
        else:
            req = str(info.get("requirement") or f"edgegw=={m.version}")
            cmd = [spy, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
            cmd.append(req)
        _run(cmd, "pip install (offline, from the bundle)", timeout)
        if config is not None:
            _run(
                [str(slot / "bin" / "edgegw"), "check", "-c", str(config)],
                f"edgegw check -c {config} with {m.version}",
                timeout,
            )
        (slot / launcher.INCOMPLETE).unlink()
        fd = os.open(slot, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _discard(slot)
        raise
    launcher.begin_trial(
        slots,
        m.version,
        release=m.release_id,
        serial=m.serial,
        max_attempts=max_attempts,
        deadline_s=deadline_s,
    )
    log.info("installed %s into %s; the next start runs it on trial", m.release_id, slot)
    return slot


def create_first_slot(
    slots: Path, bundle_dir: Path, *, python: str = sys.executable, timeout: float = 900.0
) -> str:
    """Installer: the first slot from an unpacked bundle dir (no signature: root installs it)."""
    info = json.loads((bundle_dir / "bundle.json").read_text())
    version = str(info["version"])
    slots.mkdir(parents=True, exist_ok=True)
    slot = slots / version
    if launcher.slot_ok(slots, version):
        return version
    shutil.rmtree(slot, ignore_errors=True)
    slot.mkdir()
    (slot / launcher.INCOMPLETE).write_text("installer\n")
    _run([python, "-m", "venv", str(slot)], "python -m venv", timeout)
    _run(
        [
            str(slot / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(bundle_dir / "wheels"),
            str(info["requirement"]),
        ],
        "pip install (offline, from the bundle)",
        timeout,
    )
    (slot / launcher.INCOMPLETE).unlink()
    boot = launcher.read_boot(slots)
    if not boot.get("committed") or not launcher.slot_ok(slots, boot.get("committed")):
        boot.update({"committed": version, "trial": None})
        launcher.write_boot(slots, boot)
    launcher.point_current(slots, str(boot["committed"]))
    return version
