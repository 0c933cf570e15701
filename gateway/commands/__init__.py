"""Built-in ``edgegw`` subcommands (check, schema, drivers), one module each.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is imported only
when its command runs (see ``edgegw.cli``). Shared helpers live here and import nothing heavy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgegw.sdk import DriverEntry


def discover_quietly(verbose: int) -> dict[str, DriverEntry]:
    """``discover_drivers()`` without its per-plugin error log lines (the caller reports them)
    unless ``-v`` was given."""
    from edgegw.sdk import discover_drivers

    sdk_log = logging.getLogger("edgegw.sdk")
    previous = sdk_log.level
    if not verbose:
        sdk_log.setLevel(logging.CRITICAL)
    try:
        return discover_drivers()
    finally:
        sdk_log.setLevel(previous)
