"""SIGKILL at every OTA transport state (issue 11, acceptance 3), end to end on one gateway.

One cloud (``edgegw-cloud serve``), one gateway run by the real launcher under ServiceSim
(``Restart=always``: every SIGKILL is followed by a start, like systemd), one Modbus device on a
real pymodbus server whose answers the test can switch off (to hold a trial open). One rollout
of a version-bumped build is killed four times on its way: mid-download (the download then
resumes: the bytes the agent received over the network, as reported to the cloud, stay below
twice the payload), mid-install, right after the switch (the launcher counted the trial's first
start) and during the trial (READY, gate not passed yet); it still ends committed, and after
every kill the gateway comes back serving on a working version. A second release has its
updater step (the slot's ``pip install``) SIGKILLed: the install fails cleanly, the running
version keeps serving, nothing is left in the slots. What the slot layer proves alone (SIGKILL
during trial, ``edgegw ota install`` killed mid-install) is in test_slots.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgegw.ota import launcher
from edgegw.protocol import ota_transfer as ot
from edgegw_cloud.ota import ReleaseStore, publish_bundle, release_summary
from tests.modbus.simproc import SimServer
from tests.ota.fleet import (
    BASE,
    OtaCloud,
    OtaGateway,
    modbus_device,
    workdir,
)
from tests.ota.helpers import build_wheel, make_bundle
from tests.runtime.helpers import poll_until

pytestmark = pytest.mark.slow
NEW = "0.2.0"
NEXT = "0.3.0"
CHUNK = 16 * 1024  # small chunks: a mid-download kill lands between many of them
RATE = 160 * 1024  # the gateway's bandwidth cap (bytes/s): a ~0.55 MB download takes ~3.5 s
GW = "gw-k"


@dataclass
class Rig:
    root: Path
    cloud: OtaCloud
    plant: SimServer
    gw: OtaGateway

    def publish(self, version: str) -> dict[str, object]:
        wheel = build_wheel(self.root / "build", version)
        bundle = make_bundle(self.root / f"bundle-{version}", wheel, version)
        with ReleaseStore(self.cloud.data) as store:
            return release_summary(publish_bundle(store, bundle, chunk_size=CHUNK))


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with workdir("edgegw-ota-faults-") as root:
        cloud = OtaCloud(root)
        plant = SimServer("--tcp", "0", "--units", "1", log_dir=root)
        gw = None
        try:
            gw = OtaGateway(cloud, GW, root, modbus_device(plant.port, address=60),
                            ota={"max_rate": RATE, "chunks_in_flight": 4})
            gw.start()
            gw.wait_serving(1)
            yield Rig(root, cloud, plant, gw)
        finally:
            if gw is not None:
                gw.close()
            plant.close()
            cloud.close()


def _kill_and_come_back(gw: OtaGateway) -> int:
    """SIGKILL the daemon; ServiceSim (Restart=always) starts the launcher again: wait until
    that start serves (READY). Returns the number of starts so far."""
    assert gw.svc is not None
    starts = gw.svc.starts
    gw.kill()
    gw.wait_serving(starts + 1)
    return gw.svc.starts


def test_sigkill_at_every_ota_state_ends_committed_and_the_download_resumes(rig: Rig) -> None:
    gw, cloud = rig.gw, rig.cloud
    rel = rig.publish(NEW)
    release = str(rel["release"])
    size = int(rel["size"])  # type: ignore[call-overload]
    total = -(-size // CHUNK)
    rid = cloud.rollout(release, "--to", GW, "--waves", "100%", "--max-failures", "0")

    # 1. mid-download: a third of the chunks held (persisted bitmap), the rest not yet
    def mid_download() -> bool:
        st = gw.release_state(release)
        return st.get("state") == "downloading" and total // 4 <= _held(st) <= total // 2

    poll_until(mid_download, 60, "download a quarter to half done", interval=0.02)
    held_at_kill = _held(gw.release_state(release))
    _kill_and_come_back(gw)
    assert gw.daemon_slot() is None and gw.boot()["committed"] == BASE  # the old version serves
    # the download resumes: what was held stays held, and only the missing chunks travel
    st = gw.release_state(release)
    assert st.get("state") in ("offered", "downloading", "verifying", "installing"), st
    assert _held(st) >= held_at_kill, (held_at_kill, st)

    # 2. mid-install: the new slot is being made (venv there, still marked incomplete)
    slot = gw.slots / NEW
    poll_until(lambda: (slot / launcher.INCOMPLETE).exists() and (slot / "bin").exists(), 90,
               "install under way", interval=0.02)
    _kill_and_come_back(gw)
    assert gw.daemon_slot() is None and gw.boot()["committed"] == BASE
    # from now on the device does not answer: the trial to come cannot pass its gate before
    # the test is done with it (the install itself never talks to devices)
    rig.plant.mode("silent", unit=1)
    # the download is not repeated: the agent's network byte count (reported to the cloud)
    # stays below twice the payload, and at most the chunks in flight at the kill came again
    row = cloud.wait_states(rid, lambda s: s[GW]["state"] in ("installing", "trial"), 60,
                            "the install is retried after the restart")[GW]
    assert size <= row["bytes"] < 2 * size, (row, size)
    assert row["bytes"] - size <= 5 * CHUNK, (row, size)
    assert (row["received"], row["total"]) == (total, total), row

    # 3. right after the switch: the launcher counted the trial's first start -> SIGKILL
    poll_until(lambda: (gw.boot().get("trial") or {}).get("attempts") == 1
               and gw.daemon_slot() == NEW, 60, "the trial's first start", interval=0.01)
    assert gw.svc is not None
    starts = gw.svc.starts
    gw.kill()
    # 4. during the trial: the next start of the new version is READY, gate not passed
    gw.wait_serving(starts + 1)
    trial = gw.boot()["trial"]
    assert trial is not None and trial["version"] == NEW and trial["attempts"] == 2, trial
    assert gw.daemon_slot() == NEW
    _kill_and_come_back(gw)
    assert gw.daemon_slot() == NEW  # attempt 3 of 3: still the trial, still a working version
    rig.plant.mode("normal", unit=1)
    states = cloud.wait_states(rid, lambda s: s[GW]["state"] in ot.TERMINAL, 90,
                               "the rollout's end")
    assert (states[GW]["state"], states[GW]["version"]) == ("committed", NEW), states
    assert states[GW]["bytes"] < 2 * size
    boot = gw.boot()
    assert (boot["committed"], boot["trial"]) == (NEW, None), boot
    assert gw.current_version() == NEW and gw.daemon_slot() == NEW


def _held(st: dict[str, object]) -> int:
    bits = bytes.fromhex(str(st.get("have") or ""))
    return sum(bin(b).count("1") for b in bits)


def test_sigkill_of_the_updater_step_fails_cleanly_and_keeps_serving(rig: Rig) -> None:
    gw, cloud = rig.gw, rig.cloud
    running = gw.boot()["committed"]
    rel = rig.publish(NEXT)
    rid = cloud.rollout(str(rel["release"]), "--to", GW, "--waves", "100%",
                        "--max-failures", "0")
    assert gw.svc is not None
    starts = gw.svc.starts

    def pip_of_the_install() -> int | None:
        for pid, argv in gw.processes():
            if "pip" in argv and "install" in argv and any(f"/{NEXT}/" in a for a in argv):
                return pid
        return None

    pid = poll_until(pip_of_the_install, 90, "the updater's pip install running",
                     interval=0.02)
    os.kill(pid, signal.SIGKILL)
    states = cloud.wait_states(rid, lambda s: s[GW]["state"] in ot.TERMINAL, 60,
                               "the install's outcome at the cloud")
    assert (states[GW]["state"], states[GW]["reason"]) == ("failed", "install_failed"), states
    assert "pip install" in (states[GW]["detail"] or ""), states
    # the gateway never stopped serving its version; no trial, no half slot
    assert gw.svc.starts == starts and gw.serving(starts)
    boot = gw.boot()
    assert (boot["committed"], boot["trial"]) == (running, None), boot
    assert gw.current_version() == running
    assert not (gw.slots / NEXT).exists()
