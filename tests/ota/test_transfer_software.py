"""A software release over the MQTT session into an A/B slot, with real peers: the real cloud
(broker, ingest, ``Downlink``), a version-bumped edgegw wheel built in the test and published as
a bundle, the real launcher and daemon under ``ServiceSim`` (systemd's role, tests/ota/helpers.py).

What it pins down for the end-to-end tests built on it: the agent reports ``installing`` then
``trial``, then the daemon exits with status 0 (ServiceSim records ``("exit", "0")``) and
``Restart=always`` brings the launcher back, which runs the new slot on trial; the NEW version's
agent reports ``committed`` (its ``version`` field says so) once its health gate committed it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from runtime.helpers import poll_until

from edgegw.ota import launcher
from edgegw.ota.agent import ENV_DEPS_FROM
from edgegw_cloud.ota import ReleaseStore, publish_bundle
from tests.ota.helpers import SITE_PACKAGES, ServiceSim, build_wheel, fake_slot, make_bundle
from tests.ota.transfer_rig import Rig

pytestmark = pytest.mark.slow
BASE = "0.1.0"
LAUNCHER = Path(launcher.__file__)


def test_software_release_restarts_into_trial_and_new_version_reports_committed(
    rig: Rig,
) -> None:
    slots = rig.tmp / "slots"
    fake_slot(slots, BASE)
    launcher.write_boot(slots, {"committed": BASE, "trial": None})
    launcher.point_current(slots, BASE)
    rig.write_config(rig.config_doc())
    wheel = build_wheel(rig.tmp / "build", "0.2.0")
    bundle = make_bundle(rig.tmp / "bundle", wheel, "0.2.0")
    with ReleaseStore(rig.cloud.paths.data_dir) as store:
        row = publish_bundle(store, bundle)
    rig.server.serve_release(row)
    argv = [sys.executable, str(LAUNCHER), "--slots", str(slots), "run", "-c",
            str(rig.config_path)]
    svc = ServiceSim(argv, rig.tmp, env={ENV_DEPS_FROM: str(SITE_PACKAGES)},
                     watchdog_sec=2.0).start()
    try:
        poll_until(lambda: svc.readies >= 1 and rig.dm.counts.get("info", 0) >= 1, 30,
                   "the 0.1.0 daemon online")
        rig.server.offer(row)
        trial = rig.server.wait_state(row.release_id, "trial", timeout=90)
        assert trial.version == BASE and trial.received == trial.total
        done = rig.server.wait_state(row.release_id, "committed", timeout=90)
        assert done.version == "0.2.0"  # reported by the NEW version's agent
        seen = [s.state for s in rig.server.states(row.release_id)]
        assert seen.index("installing") < seen.index("trial") < seen.index("committed")
        # the old daemon stopped itself cleanly (exit 0) and the "service manager" restarted
        # the launcher, which ran the new slot: exactly one restart, no rollback
        exits = [d for k, d in svc.events if k == "exit"]
        assert exits == ["0"] and svc.starts == 2, svc.events
        boot = launcher.read_boot(slots)
        assert boot["committed"] == "0.2.0" and boot["accepted_serial"] == row.serial
        assert launcher.current_version(slots) == "0.2.0"
        # re-offered (a cloud retry after the restart): answered committed, nothing fetched
        asked = len(rig.server.requested(row.release_id))
        n = len(rig.server.states(row.release_id))
        rig.server.offer(row)
        poll_until(lambda: len(rig.server.states(row.release_id)) > n, 10, "re-offer answer")
        assert rig.server.last_state(row.release_id).state == "committed"  # type: ignore[union-attr]
        assert len(rig.server.requested(row.release_id)) == asked
    finally:
        svc.stop()
        if svc.log.exists():
            print(svc.log.read_text()[-3000:])
