"""Show the host names the broker certificate covers; ``--add-host`` re-issues it (same key)."""

from __future__ import annotations

import argparse

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.pki_setup import add_broker_hosts

HELP = "show the host names the broker certificate covers; --add-host re-issues it"
DESCRIPTION = """\
List the host names and addresses the broker certificate covers (what gateways may dial).
With --add-host, re-issue it with the same key to cover more; a running `serve` notices and
restarts its broker within seconds. Gateways need nothing new: they trust the CA."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument(
        "--add-host",
        action="append",
        metavar="HOST",
        help="also cover this host name / IP (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    data = paths(args)
    sans, changed = add_broker_hosts(data, args.add_host or [])
    if changed:
        print(f"re-issued {data.broker_crt} (same key); a running `serve` restarts its broker")
    print("broker certificate covers: " + ", ".join(sans))
    return 0
