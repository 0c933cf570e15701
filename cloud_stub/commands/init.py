"""Create the cloud data dir: CA, broker/ingest/bootstrap identities, OTA signing key."""

from __future__ import annotations

import argparse

from edgegw import pki
from edgegw_cloud.commands import add_data_dir
from edgegw_cloud.pki_setup import init_data_dir

HELP = "create the CA, broker/ingest/bootstrap identities, keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument(
        "--broker-host",
        default="127.0.0.1",
        help="extra host name / IP for the broker certificate (what gateways dial)",
    )


def run(args: argparse.Namespace) -> int:
    paths = init_data_dir(args.data_dir, broker_host=args.broker_host)
    print(f"cloud data dir ready: {paths.data_dir}")
    print(
        f"  CA {paths.ca_crt} (fingerprint {pki.fingerprint(pki.load_certificate(paths.ca_crt))})"
    )
    print(
        f"  gateways need {paths.ca_crt.name}, {paths.bootstrap_crt.name} and "
        f"{paths.bootstrap_key.name} in their bootstrap dir to enroll"
    )
    return 0
