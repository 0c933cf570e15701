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


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """``--api URL --api-token-file FILE --ca FILE``: use a cloud's HTTP API instead of its data
    dir (from another machine)."""
    parser.add_argument("--api", metavar="https://HOST:PORT",
                        help="ask this cloud's HTTP API (serve --http) instead of a data dir")
    parser.add_argument("--api-token-file", type=Path, metavar="FILE",
                        help="file holding an API token (default: $EDGEGW_API_TOKEN)")
    parser.add_argument("--ca", type=Path, metavar="FILE",
                        help="the cloud's CA certificate (pki/ca.crt) to verify the API's TLS")
