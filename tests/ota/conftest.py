"""Fixtures of the OTA transfer tests: the devmgmt ``cloud`` (paths + a started managed
broker) and a ``rig`` on it (gateway daemon, ingest, device manager, chunk server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from devmgmt.conftest import cloud, cloud_dir  # noqa: F401  (fixture re-export)
from uplink.conftest import Cloud

from tests.ota.transfer_rig import Rig


@pytest.fixture
def rig(cloud: Cloud, tmp_path: Path) -> Iterator[Rig]:  # noqa: F811
    """A Rig on the ``cloud`` fixture's broker (closed before the broker stops)."""
    tmp_path.chmod(0o755)  # the launcher and Mosquitto traverse it
    r = Rig(cloud, tmp_path)
    try:
        yield r
    finally:
        r.close()
