"""``edgegw-cloud`` verbs, one thin module each: ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. The logic lives in the owning modules (pki_setup, registry, revocation,
server, query, store); these modules only map the command line onto it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgegw_cloud.pki_setup import CloudPaths


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")


def paths(args: argparse.Namespace) -> CloudPaths:
    """The initialised data dir named by ``--data-dir`` (a clear error if it is not)."""
    return CloudPaths.for_dir(args.data_dir).require_initialised()
