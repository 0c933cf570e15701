"""Suite-wide fixtures, and how `make test` splits the suite between pytest-xdist workers.

`make test` runs ``pytest -n 3 --dist loadgroup`` (docs/testing.md); with ``--dist loadgroup``
the suite's own scheduler below replaces xdist's. Invariants of the split (a serial run, or any
other ``--dist``, is untouched):
- a test file is one unit of work: its tests run in one worker, in file order, so module-scoped
  fixtures (a fresh venv, an RTSP server, a browser) are built once;
- the files under ``CPU_HEAVY`` (pip builds, venvs, fuzzers) form one unit, so no two of them
  ever run at once (on 2 cores two builds only slow each other and every peer-waiting test);
- units are handed out in ``_rank`` order: that unit first, then ``SLOW_FIRST``, then the rest
  in collection order, so the run ends on short files (longest first keeps workers even);
- a test marked ``xdist_group("name")`` joins that group, as with stock loadgroup.
Node ids stay the collected ones (no ``@group`` suffix), so a failing id can be rerun as shown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadGroupScheduling

from edgegw.protocol.logthrottle import RepeatFilter

#: path prefixes (from the repository root) of tests that keep a core busy for many seconds
#: (pip wheel builds, fresh venvs, coverage-guided fuzzers): one unit, run one after another
CPU_HEAVY = (
    "tests/test_wheel.py",
    "tests/custom_driver/",
    "tests/ota/test_installer.py",
    "tests/ota/test_slots.py",
    "tests/test_fuzz.py",
)
#: path prefixes of long files (``--durations``), longest first: handed out right after CPU_HEAVY
SLOW_FIRST = (
    "tests/ota/",
    "tests/protocol/test_codec.py",
    "tests/uplink/test_uplink_faults.py",
    "tests/serial/test_serial_firmware.py",
    "tests/devmgmt/",
    "tests/cloud/test_dashboard.py",
    "tests/reliability/",
    "tests/protocol/test_codec_v2.py",
    "tests/runtime/test_daemon_crash.py",
    "tests/uplink/test_uplink_sigkill.py",
    "tests/rtsp/",
    "tests/edge/test_fit_from_outbox.py",
    "tests/store/test_outbox_fill.py",
    "tests/cloud/",
)
HEAVY_GROUP = "cpu-heavy"


def _rank(nodeid: str) -> int:
    path = nodeid.split("::", 1)[0]
    for i, prefix in enumerate((*CPU_HEAVY, *SLOW_FIRST)):
        if path.startswith(prefix):
            return 0 if i < len(CPU_HEAVY) else i - len(CPU_HEAVY) + 1
    return len(SLOW_FIRST) + 1


class SuiteScheduling(LoadGroupScheduling):
    """xdist's loadgroup, with a file as the default group and ``CPU_HEAVY`` as one group."""

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.rfind("@") > nodeid.rfind("]"):  # an explicit xdist_group mark
            return super()._split_scope(nodeid)
        return HEAVY_GROUP if _rank(nodeid) == 0 else nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> SuiteScheduling | None:
    if config.getvalue("dist") != "loadgroup":
        return None
    # hand units out in collection order, which the workers sort by _rank (below)
    config.option.loadscopereorder = False
    return SuiteScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        items.sort(key=lambda item: _rank(item.nodeid))  # stable: file order stays as collected


@pytest.fixture(autouse=True)
def _no_log_throttle_leaks() -> Iterator[None]:
    """A CLI entry point run in-process installs the repeated-line filter on the root logger's
    handlers, which under pytest include the session-long capture handlers: remove it after each
    test so one test's log lines never hide another's."""
    yield
    for h in logging.getLogger().handlers:
        for f in [f for f in h.filters if isinstance(f, RepeatFilter)]:
            h.removeFilter(f)
