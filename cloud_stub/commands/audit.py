"""The audit log: who enrolled, renewed, revoked or reinstated which gateway, when, from which
MQTT client (JSON lines, oldest first; refusals included)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.registry import Registry

HELP = "print the audit log (enroll/renew/revoke/reinstate)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("gateway_id", nargs="?", help="only this gateway")


def run(args: argparse.Namespace) -> int:
    with Registry(paths(args).registry_db) as reg:
        rows = reg.audit_log(args.gateway_id)
    for r in rows:
        ts = dt.datetime.fromtimestamp(int(str(r["ts_ms"])) / 1000, dt.UTC)
        print(json.dumps({"time": ts.isoformat(timespec="milliseconds"), **r}))
    return 0
