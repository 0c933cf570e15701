"""`edgegw-cloud ota publish|releases|build-bundle`: OTA releases (see docs/ota.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegw_cloud.ota import (
    OtaError,
    ReleaseStore,
    build_bundle,
    parse_targets,
    publish_bundle,
    release_summary,
)


def _store(args: argparse.Namespace) -> ReleaseStore:
    return ReleaseStore(args.data_dir)


def cmd_publish(args: argparse.Namespace) -> int:
    targets = parse_targets(args.targets)
    common = {
        "min_version": args.min_version,
        "allow_downgrade": args.allow_downgrade,
        "targets": targets,
    }
    with _store(args) as store:
        if args.kind == "software":
            if not args.bundle:
                raise OtaError("--kind software needs --bundle DIR (from `ota build-bundle`)")
            row = publish_bundle(store, args.bundle, **common)
        else:
            if not args.files or not args.name or not args.version:
                raise OtaError(f"--kind {args.kind} needs --name, --version and FILE...")
            files: dict[str, bytes | Path] = {}
            for f in args.files:
                if not f.is_file():
                    raise OtaError(f"{f}: not a file")
                files[f.name] = f
            firmware = None
            if args.kind == "firmware":
                if not args.driver or not args.devices:
                    raise OtaError("--kind firmware needs --driver and --devices d1,d2")
                if len(files) != 1:
                    raise OtaError("a firmware release is exactly one image file")
                firmware = {
                    "driver": args.driver,
                    "devices": [d for d in args.devices.split(",") if d],
                    "image": next(iter(files)),
                }
            row = store.publish(
                files,
                kind=args.kind,
                name=args.name,
                version=args.version,
                firmware=firmware,
                **common,
            )
    print(json.dumps(release_summary(row)))
    return 0


def cmd_releases(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = store.releases()
    if args.json:
        for r in rows:
            print(json.dumps(release_summary(r)))
        return 0
    print(f"{'SERIAL':>6}  {'RELEASE':40}  {'KIND':8}  {'SIZE':>10}  TARGETS")
    for r in rows:
        print(f"{r.serial:>6}  {r.release_id:40}  {r.kind:8}  {r.payload_size:>10}  {r.targets}")
    return 0


def cmd_build_bundle(args: argparse.Namespace) -> int:
    info = build_bundle(
        args.project,
        args.out,
        extras=[e for e in (args.extras or "").split(",") if e],
        platform=args.platform,
        python_version=args.python_version,
    )
    print(json.dumps(info))
    return 0


HELP = "OTA releases: publish, list, build offline software bundles"


def add_arguments(sp: argparse.ArgumentParser) -> None:
    osub = sp.add_subparsers(dest="ota_command", required=True)

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")

    p = osub.add_parser("publish", help="sign and publish a release")
    data_dir(p)
    p.add_argument("--kind", required=True, choices=("software", "config", "firmware"))
    p.add_argument("--bundle", type=Path, help="software: bundle dir from build-bundle")
    p.add_argument("--name", help="config/firmware: release name")
    p.add_argument("--version", help="config/firmware: version (dotted integers)")
    p.add_argument("--min-version", help="oldest running version this may upgrade from")
    p.add_argument("--allow-downgrade", action="store_true", help="signed permission to go back")
    p.add_argument(
        "--targets", default="all", help="all | gw1,gw2 | label:key=value (checked on the gateway)"
    )
    p.add_argument("--driver", help="firmware: driver name the image is for")
    p.add_argument("--devices", help="firmware: device ids, comma-separated")
    p.add_argument("files", nargs="*", type=Path, help="config/firmware files")
    p.set_defaults(ota_fn=cmd_publish)

    p = osub.add_parser("releases", help="list published releases")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(ota_fn=cmd_releases)

    p = osub.add_parser(
        "build-bundle", help="build the edgegw wheel + every dependency wheel (offline install)"
    )
    p.add_argument("--project", type=Path, default=Path("."), help="edgegw source tree")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--extras", default="", help="extras to include, e.g. ml,camera")
    p.add_argument("--platform", help="target wheel platform, e.g. manylinux2014_aarch64")
    p.add_argument("--python-version", help="target Python, e.g. 3.11 (with --platform)")
    p.set_defaults(ota_fn=cmd_build_bundle)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.ota_fn(args))
    except OtaError as exc:
        print(f"edgegw-cloud ota {args.ota_command}: {exc}", file=sys.stderr)
        return 1
