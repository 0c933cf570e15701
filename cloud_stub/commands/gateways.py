"""List gateways: registry (certificates, revocation, last seen) + the store's counters."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import TextIO

from edgegw_cloud.commands import paths
from edgegw_cloud.dbinfo import store_summary
from edgegw_cloud.devmgmt_cli import add_gateways_subcommands, cmd_fleet, cmd_label
from edgegw_cloud.registry import GatewayRow, Registry

HELP = "list gateways (registry + store counters)"
log = logging.getLogger("edgegw.cloud")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # not required here: `gateways label|fleet --data-dir D` take it after the subcommand
    parser.add_argument("--data-dir", type=Path, default=None, help="cloud data directory")
    add_gateways_subcommands(parser)


def run(args: argparse.Namespace) -> int:
    sub = getattr(args, "gateways_command", None)
    if sub == "label":
        return cmd_label(args)
    if sub == "fleet":
        return cmd_fleet(args)
    if args.data_dir is None:
        raise SystemExit("edgegw-cloud gateways: --data-dir is required")
    data = paths(args)
    with Registry(data.registry_db) as reg:
        rows = reg.gateways()
    print_table(gateways_table(rows, store_summary(data.store_db)), sys.stdout)
    return 0


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def gateways_table(rows: list[GatewayRow], store: dict[str, dict[str, int]]) -> list[list[str]]:
    table = [
        ["GATEWAY", "SERIAL", "CERT EXPIRES", "REVOKED", "LAST SEEN", "DEVICES", "BATCHES", "GAPS"]
    ]
    for g in rows:
        s = store.get(g.id, {})
        last = max(filter(None, (g.last_seen_ms, s.get("last_ms"))), default=None)
        table.append(
            [
                g.id,
                (g.cert_serial or "-")[:16],
                _fmt_ms(g.cert_not_after_ms),
                _fmt_ms(g.revoked_ms) if g.revoked else "no",
                _fmt_ms(last),
                str(s.get("devices", 0)),
                str(s.get("batches", 0)),
                f"{s.get('gaps', 0)} ({s.get('dropped', 0)} batches)" if s.get("gaps") else "0",
            ]
        )
    return table


def print_table(table: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
