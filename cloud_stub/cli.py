"""``edgegw-cloud``: a thin dispatcher over the verbs in ``edgegw_cloud.commands``.

Verbs: init, broker-cert, serve, token create, user, api-token, gateways (label, fleet), revoke,
audit, query, db; device management: command, shadow, config; ota (releases). Each is a module
with ``HELP`` (one line), optionally ``DESCRIPTION`` (the ``--help`` text, written for
operators; the module docstring is for developers), ``add_arguments(parser)`` and
``run(args) -> int``.
``--since -10m`` works as documented; a closed pipe (``| head``) ends the command quietly.

Exit codes: 0 success, 1 a refused/failed operation (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from edgegw import pki
from edgegw.protocol.bundle import BundleError
from edgegw.protocol.logfmt import configure
from edgegw.protocol.logthrottle import install as throttle_repeated_logs
from edgegw_cloud.apiclient import ApiError
from edgegw_cloud.broker import BrokerError
from edgegw_cloud.commands import (
    api_token,
    audit,
    broker_cert,
    command,
    config,
    db,
    gateways,
    init,
    ota,
    query,
    revoke,
    serve,
    shadow,
    token,
    user,
)
from edgegw_cloud.devstore import ShadowConflict
from edgegw_cloud.downlink import DownlinkError
from edgegw_cloud.registry import RegistryError
from edgegw_cloud.web.auth import AuthError

COMMANDS: dict[str, ModuleType] = {
    "init": init,
    "broker-cert": broker_cert,
    "serve": serve,
    "token": token,
    "user": user,
    "api-token": api_token,
    "gateways": gateways,
    "revoke": revoke,
    "audit": audit,
    "query": query,
    "db": db,
    "command": command,
    "shadow": shadow,
    "config": config,
    "ota": ota,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgegw-cloud",
        description="The edgegw cloud: certificate authority and enrollment, the MQTT broker "
        "gateways deliver to, the ingest and store of their data, the dashboard and API, "
        "exports. Start with `init`, then `serve`; see docs/operator-guide.md.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-v info, -vv debug)")
    p.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="log lines as text (default) or JSON objects (EDGEGW_LOG_FORMAT=json)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sp = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sp)
        sp.set_defaults(fn=module.run)
    return p


def _join_time_values(argv: list[str]) -> list[str]:
    """``--since -10m`` as ``--since=-10m``: argparse takes a value starting with "-" (other than a
    plain negative number) for an option and refuses it, so relative times need this."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--since", "--until") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, no traceback; stdout is pointed at
        # /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_time_values(sys.argv[1:] if argv is None else argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command == "serve":
        level = min(level, logging.INFO)
    repeats = None
    if configure(level, args.log_format, force=False):
        # repeated WARNING/ERROR lines: the first, then a count a minute; only on our own
        # handler (a host program's or test runner's handlers are not ours to filter)
        repeats = throttle_repeated_logs()
    try:
        return int(args.fn(args))
    except (RegistryError, pki.PkiError, FileExistsError, BrokerError, DownlinkError,
            ShadowConflict, BundleError, AuthError, ApiError, ValueError) as exc:
        print(f"edgegw-cloud {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        if repeats is not None:
            repeats.close()


if __name__ == "__main__":
    sys.exit(main())
