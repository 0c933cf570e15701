"""Enrollment tokens: ``token create GW_ID`` prints a one-time token (stored hashed only)."""

from __future__ import annotations

import argparse
import re
import sys

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.registry import Registry

HELP = "enrollment tokens"

_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_ttl(text: str) -> float:
    """Seconds for ``10m``, ``1h``, ``2d``, ``90`` (s), ... (the config's duration units)."""
    m = _TTL.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 10m, 1h, 2d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", required=True)
    tc = sub.add_parser("create", help="print a one-time enrollment token for GW_ID")
    add_data_dir(tc)
    tc.add_argument("gateway_id")
    tc.add_argument("--ttl", default="1h", help="validity (e.g. 10m, 1h, 2d; default 1h)")
    tc.add_argument(
        "--reinstate", action="store_true", help="allow a revoked gateway to enroll again"
    )


def run(args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl)
    with Registry(paths(args).registry_db) as reg:
        token = reg.create_token(args.gateway_id, ttl, reinstate=args.reinstate)
    print(token)
    print(
        f"one-time token for {args.gateway_id}, valid {args.ttl}; it is not stored and will "
        "not be shown again",
        file=sys.stderr,
    )
    return 0
