"""Revoke a gateway: the broker refuses it from then on (CRL + ACL, reloaded by ``serve``)."""

from __future__ import annotations

import argparse

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.revocation import revoke_gateway

HELP = "revoke a gateway: the broker refuses it from then on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("gateway_id")


def run(args: argparse.Namespace) -> int:
    serials = revoke_gateway(paths(args), args.gateway_id)
    print(
        f"revoked {args.gateway_id} ({len(serials)} certificate(s)); a running `serve` reloads "
        "the broker within seconds"
    )
    return 0
