"""List the installed drivers (entry points ``edgegw.drivers``): name, distribution, version,
status. Exit status 1 if any driver failed to load (its devices would be unavailable)."""

from __future__ import annotations

import argparse
import json
import sys

from edgegw.commands import discover_quietly


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    entries = discover_quietly(args.verbose)
    rows = [
        {
            "name": e.name,
            "distribution": e.distribution,
            "version": e.version,
            "target": e.target,
            "status": "ok" if e.ok else f"error: {e.error}",
        }
        for e in sorted(entries.values(), key=lambda e: e.name)
    ]
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif not rows:
        print("no drivers installed (entry point group 'edgegw.drivers' is empty)")
    else:
        cols = ("name", "distribution", "version", "status")
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
        print("  ".join(c.upper().ljust(widths[c]) for c in cols[:-1]) + "  STATUS")
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in cols[:-1]) + "  " + r["status"])
    return 0 if all(e.ok for e in entries.values()) else 1
