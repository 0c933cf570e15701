"""``GatewayConfig.release_source``: what the daemon drops after its check (resident memory).

The YAML source map, the raw loaded data and the check's copy of the validated driver options
are gone; the validated config itself (devices, their options as given) is untouched, and a
later check still works (locations then fall back to the file).
"""

from __future__ import annotations

from cfgtest_drivers import DRIVERS
from cfgtest_helpers import FIXTURES

from edgegw.config import check_config, load_and_check

GOOD = FIXTURES / "good" / "main.yaml"


def test_release_source_drops_what_only_the_check_reads() -> None:
    cfg = load_and_check(str(GOOD), DRIVERS, env={})
    devices = [(d.id, d.driver, d.options) for d in cfg.devices]
    assert cfg.source is not None and cfg.options_for("pump1") is not None
    cfg.release_source()
    assert cfg.source is None and cfg._data == {} and cfg.options_for("pump1") is None
    assert [(d.id, d.driver, d.options) for d in cfg.devices] == devices
    assert check_config(cfg, DRIVERS) == []
    assert cfg.options_for("pump1") is not None  # the check fills it again
