"""OTA config releases: verified, checked with the edgegw checker, installed commit-confirmed
through devmgmt's ConfigApply (the mechanism remote config uses), reverted when unconfirmed."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.config import ConfigError, check_loaded, drivers_from_registry, load_config
from edgegw.device.config_apply import ConfigApply
from edgegw.ota.config_release import ConfigRefused, apply_config_release
from edgegw.ota.verify import check_offer, load_trusted_key
from edgegw.sdk import discover_drivers
from edgegw_cloud.ota import ReleaseStore
from edgegw_cloud.pki_setup import init_data_dir

GOOD = """gateway: {{id: gw1, state_dir: {state}}}
devices:
  - id: boiler
    driver: sim
    poll: {poll}
    options: {{points: [{{name: t}}]}}
"""


def check_file(path: Path) -> list[str]:
    ok, broken = drivers_from_registry(discover_drivers())
    try:
        check_loaded(load_config(path), ok, unavailable=broken)
    except ConfigError as exc:
        return [str(i) for i in exc.issues if i.severity == "error"]
    return []


def publish(cloud: Path, tmp: Path, version: str, text: str):  # type: ignore[no-untyped-def]
    src = tmp / f"v{version}" / "gateway.yaml"
    src.parent.mkdir()
    src.write_text(text)
    with ReleaseStore(cloud) as store:
        row = store.publish({"gateway.yaml": src}, kind="config", name="site", version=version)
        manifest, sig = store.read(row)
    key = load_trusted_key(cloud / "pki" / "ota-signing.pub")
    return check_offer(manifest, sig, key, gateway_id="gw1"), row.path / "payload.tar"


def test_config_release_checked_installed_and_reverted(tmp_path: Path) -> None:
    cloud = tmp_path / "cloud"
    init_data_dir(cloud)
    etc = tmp_path / "etc"
    etc.mkdir()
    live = etc / "gateway.yaml"
    original = GOOD.format(state=tmp_path / "state", poll="1s")
    live.write_text(original)

    bad, payload = publish(
        cloud, tmp_path, "2", GOOD.format(state=tmp_path, poll="1s") + "oops: 1\n"
    )
    with pytest.raises(ConfigRefused) as err:
        apply_config_release(live, payload, bad, check_file, confirm_within=60)
    assert any("gateway.yaml:7:1" in m and "oops" in m for m in err.value.messages), err.value
    assert live.read_text() == original  # nothing installed

    good_text = GOOD.format(state=tmp_path / "state", poll="2s")
    good, payload = publish(cloud, tmp_path, "3", good_text)
    pending = apply_config_release(live, payload, good, check_file, confirm_within=60)
    assert pending.version == "3" and live.read_text() == good_text
    tx = ConfigApply(live)
    tx.revert("not confirmed within the time limit")  # what the timer does when no cloud answers
    assert live.read_text() == original
    pending = apply_config_release(live, payload, good, check_file, confirm_within=60)
    assert ConfigApply(live).confirm("3") and live.read_text() == good_text
