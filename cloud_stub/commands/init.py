"""Create the cloud data dir: CA, broker/ingest/bootstrap identities, OTA signing key."""

from __future__ import annotations

import argparse

from edgegw import pki
from edgegw_cloud.commands import add_data_dir
from edgegw_cloud.pki_setup import broker_sans, init_data_dir

HELP = "create the CA, broker/ingest/bootstrap identities, keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument(
        "--broker-host",
        action="append",
        metavar="HOST",
        help="host name or IP address gateways dial to reach this cloud; repeat for several "
        "(the broker certificate always covers 127.0.0.1 and localhost too). Add more later "
        "with `broker-cert --add-host`",
    )


def run(args: argparse.Namespace) -> int:
    paths = init_data_dir(args.data_dir, broker_host=args.broker_host or ["127.0.0.1"])
    print(f"cloud data dir ready: {paths.data_dir}")
    print(f"  broker certificate covers: {', '.join(broker_sans(paths.broker_crt))}")
    print(
        f"  CA {paths.ca_crt} (fingerprint {pki.fingerprint(pki.load_certificate(paths.ca_crt))})"
    )
    print(
        f"  gateways need {paths.ca_crt.name}, {paths.bootstrap_crt.name} and "
        f"{paths.bootstrap_key.name} in their bootstrap dir to enroll"
    )
    return 0
