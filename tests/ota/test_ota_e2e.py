"""OTA over MQTT end to end on a fleet of three gateways (issue 11, acceptance 1, 2 and 4).

One module, one cloud (``edgegw-cloud serve``), one plant (``bench/plant.py``, one Modbus device
per gateway) and three gateway daemons run by the real launcher under ServiceSim, each with its
own state dir and slots dir, enrolled with the cloud (see tests/ota/fleet.py). The operator's
side is the ``edgegw-cloud ota`` CLI. What the launcher/slot layer proves on its own (every
rollback cause, SIGKILL during trial, the updater killed mid-install) is in test_slots.py; here
the releases travel over the gateways' mTLS session and the cloud's rollout engine decides.

The module's fixtures share the expensive set-up: the fleet starts once; ``upgraded`` (the
wave rollout of acceptance 1) runs once and the refusal test builds on the serial it accepted
(a replayed old offer needs a gateway that accepted a newer one).
"""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgegw import pki
from edgegw.protocol import ota_transfer as ot
from edgegw.protocol.release import FileEntry, sign
from edgegw_cloud.ota import make_manifest, tar_file_entries
from edgegw_cloud.pki_setup import init_data_dir
from tests.ota.fleet import (
    BASE,
    OtaCloud,
    OtaGateway,
    Plant,
    close_all,
    delivered_once,
    modbus_device,
    software_release,
    workdir,
)
from tests.ota.helpers import patch_source, write_tar
from tests.runtime.helpers import poll_until

pytestmark = pytest.mark.slow
NEW = "0.2.0"
BROKEN = "0.4.0"
OLD_SIGNED = "9.0.0"  # published first (lowest serial), rolled out only as a replay


@dataclass
class Fleet:
    root: Path
    cloud: OtaCloud
    plant: Plant
    gws: list[OtaGateway]
    old_release: dict[str, Any]  # signed before everything else: its serial is the oldest

    def gw(self, gw_id: str) -> OtaGateway:
        return next(g for g in self.gws if g.id == gw_id)


def dummy_bundle(root: Path, version: str) -> Path:
    """A software bundle whose wheel is never installed (the release is refused first)."""
    d = root / f"dummy-{version}"
    (d / "wheels").mkdir(parents=True)
    (d / "wheels" / f"edgegw-{version}-py3-none-any.whl").write_bytes(b"not a wheel " * 300)
    (d / "bundle.json").write_text(json.dumps(
        {"name": "edgegw", "version": version, "requirement": f"edgegw=={version}"}))
    return d


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with workdir("edgegw-ota-e2e-") as root:
        yield from _fleet(root)


def _fleet(root: Path) -> Iterator[Fleet]:
    cloud = OtaCloud(root)
    plant = Plant(3, root)
    gws: list[OtaGateway] = []
    try:
        old = cloud.publish_software(dummy_bundle(root, OLD_SIGNED))
        for i in range(3):
            gws.append(OtaGateway(cloud, f"gw-{i + 1}", root, modbus_device(plant.ports[i])))
        for g in gws:
            g.start()
        for g in gws:
            g.wait_ready()
        yield Fleet(root, cloud, plant, gws, old)
    finally:
        close_all(gws)
        plant.close()
        cloud.close()


@dataclass
class Upgrade:
    rollout: int
    release: dict[str, Any]
    states: dict[str, dict[str, Any]]
    during_wave1: list[dict[str, dict[str, Any]]]  # status snapshots while gw-1 was busy
    delivered: dict[str, int]


@pytest.fixture(scope="module")
def upgraded(fleet: Fleet) -> Upgrade:
    """Acceptance 1's work: NEW published and rolled out in waves 1, then the rest."""
    cloud = fleet.cloud
    rel = software_release(cloud, fleet.root, NEW)
    rid = cloud.rollout(rel["release"], "--to", "all", "--waves", "1,100%",
                        "--max-failures", "0")
    # wave 1 = gw-1 alone (sorted target list): while it is not terminal the others wait
    during: list[dict[str, dict[str, Any]]] = []

    def wave1_done() -> bool:
        states = cloud.gateway_states(rid)
        if states["gw-1"]["state"] not in ot.TERMINAL:
            during.append(states)
            return False
        return True

    poll_until(wave1_done, 90, "gw-1 (wave 1) terminal", interval=0.3)
    states = cloud.wait_states(
        rid, lambda s: all(r["state"] in ot.TERMINAL for r in s.values()), 120,
        "every gateway terminal")
    return Upgrade(rid, rel, states, during, delivered_once(cloud, fleet.plant, fleet.gws))


def test_wave_rollout_commits_every_gateway_and_delivers_readings_once(
        fleet: Fleet, upgraded: Upgrade) -> None:
    """Acceptance 1: a version-bumped build, published, rolled out in waves (1, then the rest)
    to 3 real gateways: all committed on it, shown by `ota status`, readings exactly once."""
    cloud = fleet.cloud
    assert {g: r["state"] for g, r in upgraded.states.items()} == {
        "gw-1": "committed", "gw-2": "committed", "gw-3": "committed"}, upgraded.states
    assert all(r["version"] == NEW for r in upgraded.states.values()), upgraded.states
    # the waves: while gw-1 was on its way, gw-2 and gw-3 had been offered nothing
    busy = [s for s in upgraded.during_wave1 if s["gw-1"]["state"] != "pending"]
    assert busy, "never saw gw-1 between offer and its terminal state"
    for s in upgraded.during_wave1:
        for other in ("gw-2", "gw-3"):
            assert (s[other]["state"], s[other]["offers"]) == ("pending", 0), s
    doc = cloud.status(upgraded.rollout)
    assert doc["state"] == "completed", doc
    text = cloud.cli_process("ota", "status", str(upgraded.rollout)).stdout  # the real command
    for g in fleet.gws:
        assert any(g.id in line and "committed" in line for line in text.splitlines()), text
    # each gateway really switched: the launcher runs the new slot, committed in boot.json,
    # the daemon restarted once into it, and its agent reported from the new version
    for g in fleet.gws:
        boot = g.boot()
        assert (boot["committed"], boot["previous"], boot["trial"]) == (NEW, BASE, None), boot
        assert g.current_version() == NEW
        assert g.svc is not None and g.svc.starts >= 2
        assert boot["last_result"]["state"] == "committed"
    # exactly once across the switch, counted from the plant (delivered_once checked the
    # sequence; it also kept flowing after the switch: more reads than before the rollout)
    assert all(n > 0 for n in upgraded.delivered.values()), upgraded.delivered


def test_failing_health_gate_rolls_back_offline_and_halts_the_rollout(
        fleet: Fleet, upgraded: Upgrade) -> None:
    """Acceptance 2: the new version cannot start its device; it is rolled back on the gateway
    with its network cut; the rollout halts by itself; the other gateways are never offered."""
    cloud = fleet.cloud
    broken = patch_source(
        "drivers/modbus/driver.py",
        "        await super().open(ctx)\n",
        "        await super().open(ctx)\n"
        "        raise PermanentError('register map does not fit this firmware')\n",
    )
    rel = software_release(cloud, fleet.root, BROKEN, broken)
    gw1 = fleet.gw("gw-1")
    starts = gw1.svc.starts if gw1.svc else 0
    rid = cloud.rollout(rel["release"], "--to", "all", "--waves", "1,100%",
                        "--max-failures", "0")
    # the network goes down the moment the trial is recorded (before the switch)
    poll_until(lambda: (gw1.boot().get("trial") or {}).get("version") == BROKEN, 90,
               "gw-1 installed the broken version and began its trial", interval=0.05)
    gw1.net.cut()
    try:
        res = poll_until(lambda: (r := gw1.boot().get("last_result") or {}).get("state")
                         == "rolled_back" and r, 60, "rollback on gw-1 (no network)")
        assert res["version"] == BROKEN and "plc" in res["reason"], res
        gw1.wait_serving(starts + 2)  # the trial's start, then the old version serving again
        assert gw1.boot()["committed"] == NEW and gw1.current_version() == NEW
        assert gw1.daemon_slot() == NEW
        assert not gw1.net.up.is_set()  # all of it happened with the network cut
        # the cloud cannot know yet
        assert cloud.gateway_states(rid)["gw-1"]["state"] != "rolled_back"
    finally:
        gw1.net.restore()
    states = cloud.wait_states(rid, lambda s: s["gw-1"]["state"] == "rolled_back", 60,
                               "gw-1 reports its rollback once back online")
    assert states["gw-1"]["version"] == NEW
    assert "plc" in (states["gw-1"]["detail"] or "") + (states["gw-1"]["reason"] or "")
    doc = poll_until(lambda: (d := cloud.status(rid))["state"] == "halted" and d, 30,
                     "rollout halted by itself")
    assert "failure" in (doc["reason"] or ""), doc
    # never offered: over a few engine ticks the others stay pending with no offer sent, and
    # the gateways themselves hold nothing of that release
    end = time.monotonic() + 3
    while time.monotonic() < end:
        for other in ("gw-2", "gw-3"):
            row = cloud.gateway_states(rid)[other]
            assert (row["state"], row["offers"]) == ("pending", 0), row
        time.sleep(0.25)  # an observation window (nothing to wait for), not synchronisation
    for other in ("gw-2", "gw-3"):
        g = fleet.gw(other)
        assert rel["release"] not in g.release_dirs()
        assert g.boot()["committed"] == NEW and BROKEN not in g.slot_names()


# ---------------------------------------------------------------------------------- refusals


def _store_dir(cloud: OtaCloud, release: str) -> Path:
    return cloud.data / "ota" / "releases" / release


def _resign(cloud: OtaCloud, release: str, key_file: Path) -> None:
    d = _store_dir(cloud, release)
    (d / "manifest.sig").write_bytes(sign((d / "manifest.json").read_bytes(),
                                          pki.load_private_key(key_file)))  # type: ignore[arg-type]


def _craft(cloud: OtaCloud, release: dict[str, Any],
           members: list[tarfile.TarInfo | tuple[str, bytes]], *,
           bad_file_hash: bool = False) -> None:
    """Replace a published release's payload with ``members`` and sign a matching manifest
    with this cloud's own key (same kind, name, version and serial): a bundle that was
    crafted before signing, which only the gateway's member checks can catch."""
    d = _store_dir(cloud, release["release"])
    payload = write_tar(d / "payload.tar", members)
    files = tar_file_entries(payload)
    if bad_file_hash:
        files[0] = FileEntry(files[0].path, "0" * 64, files[0].size)
    m = make_manifest(payload, files, kind="software", name="edgegw",
                      version=release["version"], serial=release["serial"])
    (d / "manifest.json").write_bytes(m.encode())
    _resign(cloud, release["release"], cloud.data / "pki" / "ota-signing.key")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_refusals_reach_the_cloud_and_nothing_is_written_to_a_slot(
        fleet: Fleet, upgraded: Upgrade) -> None:
    """Acceptance 4: every refusal over the wire, its reason at the cloud, no slot touched."""
    cloud, root = fleet.cloud, fleet.root
    other_cloud = init_data_dir(root / "other-cloud")
    bundle_files = [("bundle.json", b'{"name": "edgegw"}'), ("wheels/x.whl", b"x" * 3000)]
    cases: list[tuple[str, dict[str, Any]]] = []

    def published(version: str, *opts: str) -> dict[str, Any]:
        return cloud.publish_software(dummy_bundle(root, version), *opts)

    rel = published("7.0.1")
    _flip(_store_dir(cloud, rel["release"]) / "manifest.sig", 5)
    cases.append(("bad_signature", rel))
    rel = published("7.0.2")
    _resign(cloud, rel["release"], other_cloud.data_dir / "pki" / "ota-signing.key")
    cases.append(("bad_signature", rel))  # another cloud's key
    rel = published("7.0.3")
    _flip(_store_dir(cloud, rel["release"]) / "payload.tar", 700)  # inside the first chunk
    cases.append(("tampered_chunk", rel))
    rel = published("7.0.4")
    _craft(cloud, rel, list(bundle_files), bad_file_hash=True)
    cases.append(("tampered_file", rel))
    cases.append(("downgrade", published("0.0.9")))
    cases.append(("wrong_target", published("7.0.5", "--targets", "gw-elsewhere")))
    rel = published("7.0.6")
    _craft(cloud, rel, [*bundle_files, ("wheels/../../escape.py", b"print('pwned')")])
    cases.append(("unsafe_path", rel))
    rel = published("7.0.7")
    link = tarfile.TarInfo("wheels/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    _craft(cloud, rel, [*bundle_files, link])
    cases.append(("link_in_archive", rel))
    # signed before NEW: its serial is below the one every gateway accepted with NEW
    assert fleet.old_release["serial"] < upgraded.release["serial"]
    cases.append(("replayed_offer", fleet.old_release))

    before = {g.id: (sorted(g.slot_names()), g.boot(), g.svc.starts if g.svc else 0)
              for g in fleet.gws}
    # three at a time: one case per gateway per round
    for start in range(0, len(cases), len(fleet.gws)):
        batch = list(zip(fleet.gws, cases[start:start + len(fleet.gws)], strict=False))
        rollouts = {g.id: (cloud.rollout(rel["release"], "--to", g.id, "--waves", "100%",
                                         "--max-failures", "100%"), reason, rel)
                    for g, (reason, rel) in batch}
        for gw_id, (rid, reason, rel) in rollouts.items():
            row = cloud.wait_states(rid, lambda s, gw_id=gw_id: s[gw_id]["state"]
                                    in ot.TERMINAL, 60, f"{gw_id}: {rel['release']} answered")
            got = row[gw_id]
            assert (got["state"], got["reason"]) == ("refused", reason), (rel["release"], got)
            assert got["detail"], got
            text = cloud.cli("ota", "status", str(rid)).stdout
            assert f"refused: {reason}" in text, text
    after = {g.id: (sorted(g.slot_names()), g.boot(), g.svc.starts if g.svc else 0)
             for g in fleet.gws}
    assert after == before  # no slot, no boot record, no restart
    for g in fleet.gws:
        assert not (g.root / "escape.py").exists() and not (g.slots / "escape.py").exists()
