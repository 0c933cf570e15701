"""A/B slots end to end on one gateway: real wheels, real launcher, real daemon.

Each test builds a version-bumped edgegw wheel from this checkout (optionally with a source
patch that breaks it on purpose), publishes it with the cloud's release store and OTA key,
verifies and installs it into a new slot (test mode ``deps_from``: see gateway/ota/slots.py),
and runs the launcher under ServiceSim (systemd's role, see helpers.py). No network is used:
the gateway runs standalone (uplink disabled), which is also the "rollback with no network" case.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgegw.ota import launcher
from edgegw.ota.slots import install_software
from edgegw.ota.verify import check_offer, load_trusted_key
from edgegw_cloud.ota import ReleaseStore, publish_bundle
from edgegw_cloud.pki_setup import init_data_dir
from tests.ota.helpers import (
    SITE_PACKAGES,
    ServiceSim,
    build_wheel,
    fake_slot,
    make_bundle,
    patch_source,
)
from tests.runtime.helpers import gateway_config, poll_until, write_config

pytestmark = pytest.mark.slow
LAUNCHER = Path(launcher.__file__)
BASE = "0.1.0"


def sim_config(tmp: Path) -> Path:
    doc = gateway_config(
        "gw-ota",
        tmp / "state",
        log_level="info",
        uplink={"enabled": False},
        devices=[
            {
                "id": "boiler",
                "driver": "sim",
                "poll": "200ms",
                "options": {"points": [{"name": "t", "signal": "counter"}]},
            }
        ],
    )
    return write_config(tmp / "gateway.yaml", doc)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cloud = tmp / "cloud"
        init_data_dir(self.cloud)
        self.key = load_trusted_key(self.cloud / "pki" / "ota-signing.pub")
        self.slots = tmp / "slots"
        fake_slot(self.slots, BASE)
        launcher.write_boot(self.slots, {"committed": BASE, "trial": None})
        launcher.point_current(self.slots, BASE)
        self.config = sim_config(tmp)
        self.svc: ServiceSim | None = None

    def install(
        self, version: str, patch: Callable[[Path], None] | None = None, **kw: float
    ) -> None:
        wheel = build_wheel(self.tmp / "build", version, patch)
        bundle = make_bundle(self.tmp / f"bundle-{version}", wheel, version)
        with ReleaseStore(self.cloud) as store:
            row = publish_bundle(store, bundle)
            manifest, sig = store.read(row)
        boot = launcher.read_boot(self.slots)
        m = check_offer(
            manifest,
            sig,
            self.key,
            gateway_id="gw-ota",
            last_serial=int(boot.get("accepted_serial") or 0),
            installed_version=boot["committed"],
        )
        install_software(
            self.slots,
            row.path / "payload.tar",
            m,
            config=self.config,
            deps_from=SITE_PACKAGES,
            max_attempts=int(kw.get("max_attempts", 3)),
            deadline_s=kw.get("deadline_s", 60.0),
        )

    def run(self, **kw: float) -> ServiceSim:
        argv = [sys.executable, str(LAUNCHER), "--slots", str(self.slots)]
        argv += ["run", "-c", str(self.config)]
        self.svc = ServiceSim(argv, self.tmp, **kw).start()
        return self.svc

    def boot(self) -> dict:
        return launcher.read_boot(self.slots)

    def wait_result(self, state: str, timeout: float = 90) -> dict:
        def done() -> dict | None:
            res = self.boot().get("last_result")
            return res if res and res.get("state") == state else None

        try:
            return poll_until(done, timeout, f"last_result {state}")  # type: ignore[no-any-return]
        except AssertionError:
            print(self.svc.log.read_text()[-4000:] if self.svc else "")
            raise

    def close(self) -> None:
        if self.svc is not None:
            self.svc.stop()


@pytest.fixture
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    tmp_path.chmod(0o755)
    r = Rig(tmp_path)
    yield r
    r.close()


def test_update_commits_after_health_gate(rig: Rig) -> None:
    rig.install("0.2.0")
    assert rig.boot()["trial"]["version"] == "0.2.0"
    svc = rig.run(watchdog_sec=2.0)
    res = rig.wait_result("committed")
    assert res["version"] == "0.2.0"
    boot = rig.boot()
    assert boot["committed"] == "0.2.0" and boot["previous"] == BASE
    assert launcher.current_version(rig.slots) == "0.2.0"
    assert svc.starts == 1  # one start: no rollback, no restart
    # the running process really is the slot's edgegw 0.2.0, not the checkout
    out = subprocess.run(
        [
            str(rig.slots / "0.2.0" / "bin" / "python"),
            "-c",
            "import edgegw, importlib.metadata as m; print(m.version('edgegw'), edgegw.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=rig.tmp,
    ).stdout.split()
    assert out[0] == "0.2.0" and str(rig.slots / "0.2.0") in out[1]


def test_failing_health_gate_rolls_back_without_network(rig: Rig) -> None:
    broken = patch_source(
        "drivers/sim/__init__.py",
        "        ts = now_ms()\n        return {s.p.name",
        "        from edgegw import PermanentError\n"
        "        raise PermanentError('register map does not fit')\n"
        "        ts = now_ms()\n        return {s.p.name",
    )
    rig.install("0.2.0", broken)
    rig.run()
    res = rig.wait_result("rolled_back")
    assert res["version"] == "0.2.0"
    assert "boiler" in res["reason"] and "CONFIG_ERROR" in res["reason"]
    assert rig.boot()["committed"] == BASE
    assert launcher.current_version(rig.slots) == BASE
    # the old version is serving again
    poll_until(lambda: rig.svc and rig.svc.readies >= 2, 30, "old version READY again")


def test_crash_loop_rolls_back_by_boot_counter(rig: Rig) -> None:
    crash = patch_source(
        "gateway/commands/run.py",
        "def run(args: argparse.Namespace) -> int:\n",
        "def run(args: argparse.Namespace) -> int:\n    import os\n\n    os._exit(3)\n",
    )
    rig.install("0.2.0", crash, max_attempts=2)
    svc = rig.run()
    res = rig.wait_result("rolled_back")
    assert "2 start(s)" in res["reason"]
    poll_until(lambda: svc.readies >= 1, 30, "old version READY")
    exits = [d for k, d in svc.events if k == "exit"]
    assert exits[:2] == ["3", "3"]


def test_hang_before_ready_rolls_back(rig: Rig) -> None:
    hang = patch_source(
        "gateway/runtime/daemon.py",
        "    gw = Gateway(cfg, drivers)\n",
        "    await asyncio.Event().wait()\n    gw = Gateway(cfg, drivers)\n",
    )
    rig.install("0.2.0", hang, max_attempts=1)
    svc = rig.run(start_timeout=4.0)
    res = rig.wait_result("rolled_back")
    assert "health gate" in res["reason"]
    assert ("timeout", "") in svc.events
    poll_until(lambda: svc.readies >= 1, 30, "old version READY")


def test_watchdog_silence_rolls_back(rig: Rig) -> None:
    mute = patch_source(
        "gateway/runtime/supervisor.py",
        '                notify("WATCHDOG=1")\n                self.watchdog_pings += 1',
        "                pass",
    )
    rig.install("0.2.0", mute, max_attempts=1)
    svc = rig.run(watchdog_sec=1.5)
    res = rig.wait_result("rolled_back")
    assert ("watchdog", "") in svc.events
    assert res["version"] == "0.2.0"
    assert rig.boot()["committed"] == BASE


def test_trial_deadline_rolls_back_when_gate_never_passes(rig: Rig) -> None:
    silent = patch_source(
        "drivers/sim/__init__.py",
        "        ts = now_ms()\n        return {s.p.name",
        "        from edgegw import TransientError\n"
        "        raise TransientError('no answer')\n"
        "        ts = now_ms()\n        return {s.p.name",
    )
    rig.install("0.2.0", silent, deadline_s=3.0)
    rig.run()
    res = rig.wait_result("rolled_back")
    assert "within 3s" in res["reason"]


def test_sigkill_during_trial_resumes_trial_then_commits(rig: Rig) -> None:
    rig.install("0.2.0")
    svc = rig.run()
    poll_until(lambda: svc.readies >= 1 or rig.boot().get("last_result"), 30, "trial READY")
    if rig.boot().get("trial"):  # still on trial: kill it in the middle
        svc.kill_main(signal.SIGKILL)
    res = rig.wait_result("committed")
    assert res["version"] == "0.2.0"


def test_sigkill_mid_install_leaves_committed_version_running(rig: Rig) -> None:
    """The updater is killed while pip runs: no trial is recorded, the old slot keeps running."""
    wheel = build_wheel(rig.tmp / "build", "0.2.0")
    bundle = make_bundle(rig.tmp / "bundle", wheel, "0.2.0")
    with ReleaseStore(rig.cloud) as store:
        row = publish_bundle(store, bundle)
    rig.tmp.joinpath("identity").mkdir()
    (rig.tmp / "identity" / "ota-signing.pub").write_bytes(
        (rig.cloud / "pki" / "ota-signing.pub").read_bytes()
    )
    cmd = [
        sys.executable,
        "-m",
        "edgegw.cli",
        "ota",
        "install",
        str(row.path),
        "-c",
        str(rig.config),
        "--slots",
        str(rig.slots),
        "--trusted-key",
        str(rig.tmp / "identity" / "ota-signing.pub"),
        "--deps-from",
        str(SITE_PACKAGES),
    ]
    proc = subprocess.Popen(cmd)
    poll_until(lambda: (rig.slots / "0.2.0" / "bin").exists(), 60, "venv being created")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rig.boot().get("trial") is None
    svc = rig.run()
    poll_until(lambda: svc.readies >= 1, 30, "committed version READY")
    assert launcher.current_version(rig.slots) == BASE
    svc.stop()
    rig.svc = None
    # the interrupted install is retried with the same offer and completes; once it has, the
    # same offer is a replay
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert rig.boot()["trial"]["version"] == "0.2.0"
    assert not (rig.slots / "0.2.0" / launcher.INCOMPLETE).exists()
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1 and "replayed_offer" in res.stderr
