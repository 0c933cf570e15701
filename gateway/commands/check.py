"""Validate a gateway config file: syntax, types, units, ids, drivers and their options, rules.

Every issue is printed to stderr as ``file:line:col: dotted.path: message (hint: ...)``; the
exit status is 1 if there is any error (or any warning with ``--strict``), else 0 and
``FILE: OK (N devices, M rules)`` is printed to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

from edgegw.commands import discover_quietly
from edgegw.config import ConfigError, check_config, drivers_from_registry, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("EDGEGW_CONFIG")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=default,
        required=default is None,
        help="config file (default: $EDGEGW_CONFIG)",
    )
    parser.add_argument("--strict", action="store_true", help="fail on warnings too")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run(args: argparse.Namespace) -> int:
    path: str = args.config
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: {_plural(len(exc.issues), 'error')}", file=sys.stderr)
        return 1
    drivers, broken = drivers_from_registry(discover_quietly(args.verbose))
    issues = check_config(cfg, drivers, unavailable=broken)
    for issue in issues:
        print(issue, file=sys.stderr)
    errors = sum(1 for i in issues if i.severity == "error")
    warnings = len(issues) - errors
    if errors or (warnings and args.strict):
        counts = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
        print(f"{path}: {counts}", file=sys.stderr)
        return 1
    summary = f"{_plural(len(cfg.devices), 'device')}, {_plural(len(cfg.rules), 'rule')}"
    if warnings:
        summary += f", {_plural(warnings, 'warning')}"
    print(f"{path}: OK ({summary})")
    return 0
