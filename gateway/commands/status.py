"""Show what a gateway is doing, whether it is running or stopped (reads its state dir only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgegw.config import load_config
from edgegw.runtime.status import collect, device_rows, render

DESCRIPTION = """\
Show what a gateway is doing: running or not, its uplink, every device (polled and push) with
its state, poll and failure counts, the outbox per lane (what waits to be delivered, what was
dropped) and the pipeline counters. Works on a stopped or crashed gateway too (it reads the
state directory). --json prints everything as one JSON document for scripts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", type=Path, help="gateway YAML file")
    src.add_argument("--state-dir", type=Path, help="the gateway's state directory")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document (all counters) for scripts"
    )


def run(args: argparse.Namespace) -> int:
    outbox_path = None
    if args.config is not None:
        cfg = load_config(args.config)
        state_dir = Path(cfg.gateway.state_dir)
        outbox_path = Path(cfg.outbox.path) if cfg.outbox.path else None
    else:
        state_dir = args.state_dir
    doc = collect(state_dir, outbox_path)
    doc["devices"] = device_rows(doc)
    print(json.dumps(doc, indent=1, default=str) if args.json else render(doc))
    return 0
