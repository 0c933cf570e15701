"""Inspect the cloud's databases read-only: tables, row counts, columns, indexes, sizes.

Safe next to a running ``serve`` (read-only connections; logic in ``edgegw_cloud.dbinfo``).
"""

from __future__ import annotations

import argparse
import json

from edgegw_cloud.commands import add_data_dir, paths
from edgegw_cloud.dbinfo import inspect_data_dir

HELP = "inspect the registry and store databases (read-only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", required=True)
    sp = sub.add_parser("inspect", help="tables, row counts, columns, indexes, sizes")
    add_data_dir(sp)
    sp.add_argument("--json", action="store_true", help="JSON instead of text")


def run(args: argparse.Namespace) -> int:
    info = inspect_data_dir(paths(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for name, db in info.items():
        if not db["exists"]:
            print(f"{name}: {db['path']} (not created yet)")
            continue
        print(f"{name}: {db['path']} ({db['bytes']} bytes, journal {db['journal_mode']})")
        for table, t in db["tables"].items():
            print(f"  {table}: {t['rows']} rows; columns {', '.join(t['columns'])}")
            if t["indexes"]:
                print(f"    indexes: {', '.join(t['indexes'])}")
        if db["views"]:
            print(f"  views: {', '.join(db['views'])}")
    return 0
