"""Built-in ``edgegw`` subcommands (check, schema, drivers), one module each.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is imported only
when its command runs (see ``edgegw.cli``). Shared helpers live here and import nothing heavy.
"""

from __future__ import annotations

import logging

from edgegw.sdk import DriverEntry, discover_drivers


def discover_quietly(verbose: int) -> dict[str, DriverEntry]:
    """``discover_drivers()`` without its per-plugin error log lines (the caller reports them)
    unless ``-v`` was given."""
    sdk_log = logging.getLogger("edgegw.sdk")
    previous = sdk_log.level
    if not verbose:
        sdk_log.setLevel(logging.CRITICAL)
    try:
        return discover_drivers()
    finally:
        sdk_log.setLevel(previous)
