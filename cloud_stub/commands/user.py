"""Dashboard accounts: ``user add NAME --role admin|read-only``, ``user remove``, ``user list``."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.web.auth import AuthError, Operators

HELP = "dashboard accounts (admin or read-only)"
DESCRIPTION = """\
Accounts for the dashboard (serve --http). Passwords are stored as scrypt hashes in
DATA/operators.db. Roles: admin (may also revoke gateways and create enrollment tokens) and
read-only."""


def fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="user_command", required=True)
    ua = sub.add_parser("add", help="add an account; the password is asked (or read from stdin)")
    add_data_dir(ua)
    ua.add_argument("name")
    ua.add_argument("--role", choices=("admin", "read-only"), default="read-only",
                    help="admin: may also revoke gateways and create tokens (default read-only)")
    ua.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of stdin (scripts)")
    ur = sub.add_parser("remove", help="remove an account and end its sessions")
    add_data_dir(ur)
    ur.add_argument("name")
    ul = sub.add_parser("list", help="list accounts")
    add_data_dir(ul)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AuthError("the passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    with Operators(paths(args).data_dir / "operators.db") as ops:
        if args.user_command == "add":
            ops.add_user(args.name, _password(args), args.role)
            print(f"user {args.name} ({args.role}) added")
        elif args.user_command == "remove":
            ops.remove_user(args.name)
            print(f"user {args.name} removed (their sessions end now)")
        else:
            rows = [["USER", "ROLE", "CREATED"]]
            rows += [[n, r, fmt_ms(c)] for n, r, c in ops.users()]
            print_rows(rows)
    return 0
