"""Write a commented starter config (a simulated device, a rule, an aggregation) that
``edgegw check`` accepts and ``edgegw run`` runs with no hardware; or copy one of the example
configs or the systemd units shipped in the package.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from edgegw.protocol.ids import IdError, check_gateway_id

#: where the wheel carries the repository's examples/ and systemd/ folders (package data)
EXAMPLES = "edgegw.share.examples"
SYSTEMD = "edgegw.share.systemd"
STARTER = "starter.yaml.in"


def _data(package: str) -> Traversable:
    return resources.files(package)


def example_names() -> list[str]:
    return sorted(
        f.name for f in _data(EXAMPLES).iterdir() if f.name.endswith(".yaml") and f.is_file()
    )


def starter_config(gateway_id: str, state_dir: str, file_name: str) -> str:
    text = (_data(EXAMPLES) / STARTER).read_text(encoding="utf-8")
    return (
        text.replace("@GATEWAY_ID@", gateway_id)
        .replace("@STATE_DIR@", state_dir)
        .replace("@FILE@", file_name)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("gateway.yaml"), help="default: gateway.yaml"
    )
    parser.add_argument("--id", default="gw1", help="gateway id (default: gw1)")
    parser.add_argument(
        "--state-dir", default="./var/edgegw", help="state dir written into the config"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument(
        "--example", metavar="NAME", help="write this shipped example instead of the starter"
    )
    parser.add_argument(
        "--list-examples", action="store_true", help="list the shipped example configs"
    )
    parser.add_argument(
        "--systemd", type=Path, metavar="DIR", help="copy the shipped systemd units into DIR"
    )


def _write(path: Path, text: str, force: bool) -> bool:
    if path.exists() and not force:
        print(f"edgegw init: {path} exists (use --force to overwrite)", file=sys.stderr)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return True


def run(args: argparse.Namespace) -> int:
    if args.list_examples:
        print("\n".join(example_names()))
        return 0
    if args.systemd is not None:
        units = [f for f in _data(SYSTEMD).iterdir() if f.is_file() and f.name != "__init__.py"]
        ok = all(
            _write(args.systemd / f.name, f.read_text(encoding="utf-8"), args.force)
            for f in sorted(units, key=lambda f: f.name)
        )
        return 0 if ok else 1
    if args.example is not None:
        names = example_names()
        if args.example not in names and f"{args.example}.yaml" in names:
            args.example += ".yaml"
        if args.example not in names:
            print(f"edgegw init: no example {args.example!r}; one of: {', '.join(names)}",
                  file=sys.stderr)
            return 1
        text = (_data(EXAMPLES) / args.example).read_text(encoding="utf-8")
    else:
        try:
            check_gateway_id(args.id)
        except IdError as exc:
            print(f"edgegw init: --id: {exc} ({exc.hint})", file=sys.stderr)
            return 2
        text = starter_config(args.id, args.state_dir, str(args.output))
    if not _write(args.output, text, args.force):
        return 1
    print(f"next: edgegw check -c {args.output}")
    return 0
