"""``edgegw-cloud``: a thin dispatcher over the verbs in ``edgegw_cloud.commands``.

Verbs: init, serve, token create, gateways (label, fleet), revoke, audit, query, db; device
management: command, shadow, config. Each is a module with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.

Exit codes: 0 success, 1 a refused/failed operation (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from edgegw import pki
from edgegw.protocol.bundle import BundleError
from edgegw.protocol.logthrottle import install as throttle_repeated_logs
from edgegw_cloud.broker import BrokerError
from edgegw_cloud.commands import (
    audit,
    command,
    config,
    db,
    gateways,
    init,
    query,
    revoke,
    serve,
    shadow,
    token,
)
from edgegw_cloud.devstore import ShadowConflict
from edgegw_cloud.downlink import DownlinkError
from edgegw_cloud.registry import RegistryError

COMMANDS: dict[str, ModuleType] = {
    "init": init,
    "serve": serve,
    "token": token,
    "gateways": gateways,
    "revoke": revoke,
    "audit": audit,
    "query": query,
    "db": db,
    "command": command,
    "shadow": shadow,
    "config": config,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgegw-cloud", description="edgegw cloud stub")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sp = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sp)
        sp.set_defaults(fn=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command == "serve":
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    repeats = throttle_repeated_logs()  # repeated WARNING/ERROR: the first, then a count a minute
    try:
        return int(args.fn(args))
    except (RegistryError, pki.PkiError, FileExistsError, BrokerError, DownlinkError,
            ShadowConflict, BundleError) as exc:
        print(f"edgegw-cloud {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        repeats.close()


if __name__ == "__main__":
    sys.exit(main())
