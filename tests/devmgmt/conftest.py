"""Fixtures for device-management tests: the real cloud (data dir, managed Mosquitto with our
mTLS + ACL config on a free port), gateway identities issued by its CA. Reuses the uplink
suite's helpers; nothing is mocked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from uplink.conftest import Cloud, cloud_dir, free_port  # noqa: F401  (fixture re-export)

from edgegw_cloud.broker import ManagedBroker
from edgegw_cloud.pki_setup import init_data_dir


@pytest.fixture
def cloud(cloud_dir: Path) -> Iterator[Cloud]:  # noqa: F811
    paths = init_data_dir(cloud_dir)
    broker = ManagedBroker(paths, free_port())
    broker.start()
    try:
        yield Cloud(paths, broker)
    finally:
        broker.stop()
