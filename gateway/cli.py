"""The ``edgegw`` command: a thin dispatcher over lazily imported command modules.

A command is a module exposing ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int`` (a coroutine result is run with ``asyncio.run``). The
registry ``COMMANDS`` maps command names to module paths and one-line helps; other parts of
edgegw add themselves there (or call ``register_command``), and installed packages can add
commands through the entry-point group ``edgegw.commands`` (value: the module path).

Invariants:
- ``edgegw --help`` imports no command module: the list comes from the registry.
- Only the chosen command's module is imported. If it is missing or broken, only that command
  fails, with a message naming the module and the reason (exit status 3).
- Exit status: 0 success, 1 the command failed (e.g. config issues), 2 usage error,
  3 command unavailable, 130 interrupted.
- Global options ``-v/--verbose`` (repeatable) and ``--log-level`` are accepted before or after
  the command name and are available to every command as ``args.verbose``/``args.log_level``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

from edgegw import __version__
from edgegw.protocol.logfmt import configure

__all__ = ["COMMANDS", "COMMAND_ENTRY_POINTS", "Command", "main", "register_command"]

COMMAND_ENTRY_POINTS = "edgegw.commands"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Command:
    module: str
    help: str
    origin: str = "edgegw"


COMMANDS: dict[str, Command] = {
    "init": Command("edgegw.commands.init", "write a commented starter config"),
    "run": Command("edgegw.commands.run", "run the gateway daemon"),
    "check": Command("edgegw.commands.check", "validate a config file, report every mistake"),
    "status": Command("edgegw.commands.status", "show the state of a running gateway"),
    "drivers": Command("edgegw.commands.drivers", "list installed drivers and their status"),
    "schema": Command("edgegw.commands.schema", "print the config JSON Schema (for editors)"),
    "enroll": Command("edgegw.commands.enroll", "enroll this gateway with the cloud (token)"),
    "model": Command("edgegw.commands.model", "fit and inspect anomaly models"),
    "ota": Command("edgegw.ota.cli", "install a release from disk, show the A/B slot state"),
}


def register_command(name: str, module: str, help: str) -> None:
    """Add (or replace) a command: ``module`` must expose ``add_arguments`` and ``run``."""
    COMMANDS[name] = Command(module, help)


def _plugin_commands() -> dict[str, Command]:
    found: dict[str, Command] = {}
    for ep in metadata.entry_points(group=COMMAND_ENTRY_POINTS):
        dist = ep.dist.name if ep.dist is not None else "?"
        found.setdefault(ep.name, Command(ep.value, f"(from {dist})", dist))
    return found


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more log output (-v info, -vv debug); tracebacks on errors",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=default,
        help="log level (overrides -v)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=("text", "json"),
        default=default,
        help="log lines as text (default) or one JSON object per line (also "
        "EDGEGW_LOG_FORMAT=json)",
    )


def _first_positional(argv: Sequence[str]) -> str | None:
    skip = False
    for tok in argv:
        if skip:
            skip = False
        elif tok in ("--log-level", "--log-format"):
            skip = True
        elif tok == "--":
            return None
        elif not tok.startswith("-"):
            return tok
    return None


def _setup_logging(verbose: int, log_level: str | None, log_format: str | None = None) -> None:
    if log_level:
        level = getattr(logging, log_level.upper())
    else:
        level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    configure(level, log_format)


def _load(name: str, cmd: Command, verbose: int) -> ModuleType | None:
    """Import the command's module; on failure print why and return None."""
    try:
        module = importlib.import_module(cmd.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            cmd.module == exc.name or cmd.module.startswith(exc.name + ".")
        ):
            reason = f"its module {cmd.module} is not installed"
        else:
            reason = f"its module {cmd.module} needs {exc.name or exc}, which is not installed"
        _unavailable(name, reason, verbose)
        return None
    except Exception as exc:  # any import-time error of that one module
        _unavailable(name, f"importing {cmd.module} failed: {type(exc).__name__}: {exc}", verbose)
        return None
    missing = [f for f in ("add_arguments", "run") if not callable(getattr(module, f, None))]
    if missing:
        _unavailable(
            name, f"module {cmd.module} has no {' or '.join(f + '()' for f in missing)}", 0
        )
        return None
    return module


def _unavailable(name: str, reason: str, verbose: int) -> None:
    if verbose:
        logging.getLogger("edgegw.cli").exception("command %r unavailable", name)
    print(f"edgegw: command '{name}' is unavailable: {reason}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgegw`` console script; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    commands = dict(COMMANDS)
    if _first_positional(args_in) not in commands:  # only then pay for the entry-point scan
        for name, cmd in _plugin_commands().items():
            commands.setdefault(name, cmd)

    parser = argparse.ArgumentParser(
        prog="edgegw",
        description="edgegw: edge-gateway runtime and driver SDK.",
        epilog="Run 'edgegw COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"edgegw {__version__}")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in commands.items():
        sub.add_parser(name, help=cmd.help, add_help=False)
    try:
        ns, rest = parser.parse_known_args(args_in)
    except SystemExit as exc:
        return int(exc.code or 0)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    name = str(ns.command)
    _setup_logging(ns.verbose, ns.log_level, ns.log_format)
    module = _load(name, commands[name], ns.verbose)
    if module is None:
        return EXIT_UNAVAILABLE
    # --help shows text written for operators: the module's DESCRIPTION (and EPILOG) when it
    # has one, else the one-line help; never the module docstring (written for developers)
    cmd_parser = argparse.ArgumentParser(
        prog=f"edgegw {name}",
        description=(getattr(module, "DESCRIPTION", None) or commands[name].help).strip(),
        epilog=getattr(module, "EPILOG", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(cmd_parser, suppress=True)
    try:
        module.add_arguments(cmd_parser)
    except Exception as exc:
        _unavailable(name, f"{commands[name].module}.add_arguments() failed: {exc}", ns.verbose)
        return EXIT_UNAVAILABLE
    try:
        args = cmd_parser.parse_args(rest, namespace=ns)
    except SystemExit as exc:
        return int(exc.code or 0)
    _setup_logging(args.verbose, args.log_level, args.log_format)
    try:
        result = module.run(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        print(f"edgegw {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `edgegw schema | head`: silence the final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if args.verbose:
            logging.getLogger("edgegw.cli").exception("command %r failed", name)
        detail = "" if args.verbose else " (use -v for the traceback)"
        print(f"edgegw {name}: error: {type(exc).__name__}: {exc}{detail}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
