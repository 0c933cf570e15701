"""Suite-wide fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from edgegw.protocol.logthrottle import RepeatFilter


@pytest.fixture(autouse=True)
def _no_log_throttle_leaks() -> Iterator[None]:
    """A CLI entry point run in-process installs the repeated-line filter on the root logger's
    handlers, which under pytest include the session-long capture handlers: remove it after each
    test so one test's log lines never hide another's."""
    yield
    for h in logging.getLogger().handlers:
        for f in [f for f in h.filters if isinstance(f, RepeatFilter)]:
            h.removeFilter(f)
