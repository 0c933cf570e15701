"""Print the JSON Schema of the gateway config file, for editors (yaml-language-server).

Options of every installed driver that loads are included, applied to ``options`` by the
device's ``driver:``. Point your editor at the output, e.g. a first line
``# yaml-language-server: $schema=./edgegw.schema.json`` in the config file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegw.commands import discover_quietly
from edgegw.config import config_json_schema, drivers_from_registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument(
        "--no-drivers", action="store_true", help="leave out the installed drivers' options"
    )


def run(args: argparse.Namespace) -> int:
    drivers = {} if args.no_drivers else drivers_from_registry(discover_quietly(args.verbose))[0]
    text = json.dumps(config_json_schema(drivers), indent=2, sort_keys=False) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
