"""API tokens for scripts: ``api-token create NAME [--role]``, ``revoke``, ``list``."""

from __future__ import annotations

import argparse
import sys

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.commands.user import fmt_ms, print_rows
from edgegw_cloud.web.auth import Operators

HELP = "API tokens for scripts (Authorization: Bearer)"
DESCRIPTION = """\
Tokens for the JSON API (serve --http): `Authorization: Bearer <token>`. A token is printed
once and stored only as its SHA-256 digest; revoke it by name. Roles as for accounts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="api_token_command", required=True)
    ac = sub.add_parser("create", help="print a new API token (shown once, stored hashed)")
    add_data_dir(ac)
    ac.add_argument("name", help="what the token is for, e.g. grafana or ci")
    ac.add_argument("--role", choices=("admin", "read-only"), default="read-only")
    ar = sub.add_parser("revoke", help="revoke an API token by name")
    add_data_dir(ar)
    ar.add_argument("name")
    al = sub.add_parser("list", help="list API tokens (names, roles, last use)")
    add_data_dir(al)


def run(args: argparse.Namespace) -> int:
    with Operators(paths(args).data_dir / "operators.db") as ops:
        if args.api_token_command == "create":
            print(ops.create_token(args.name, args.role))
            print(
                f"API token {args.name!r} ({args.role}); it is stored hashed and will not be "
                "shown again. Use it as `Authorization: Bearer <token>`",
                file=sys.stderr,
            )
        elif args.api_token_command == "revoke":
            ops.revoke_token(args.name)
            print(f"API token {args.name} revoked")
        else:
            rows = [["TOKEN NAME", "ROLE", "CREATED", "LAST USED"]]
            rows += [[n, r, fmt_ms(c), fmt_ms(u)] for n, r, c, u in ops.tokens()]
            print_rows(rows)
    return 0
