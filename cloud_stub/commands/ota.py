"""`edgegw-cloud ota publish|releases|build-bundle|rollout|status|halt|resume|cancel`: OTA releases
and rollouts (see docs/ota.md). The rollout verbs only write/read ``DATA/ota/ota.db``; the
running ``edgegw-cloud serve`` sends the offers, chunks and cancels."""

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
from edgegw_cloud.pki_setup import CloudPaths
from edgegw_cloud.registry import Registry
from edgegw_cloud.rollout import (
    DEFAULT_MAX_FAILURES,
    DEFAULT_WAVES,
    RolloutError,
    RolloutStore,
    resolve_targets,
    status_text,
    summary,
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


def cmd_rollout(args: argparse.Namespace) -> int:
    paths = CloudPaths.for_dir(args.data_dir).require_initialised()
    with _store(args) as store:
        release = store.get(args.release)
    with Registry(paths.registry_db) as reg:
        gateways = resolve_targets(reg, args.to)
    with RolloutStore(args.data_dir) as rs:
        r = rs.create(release.release_id, release.serial, gateways, selector=args.to,
                      waves=args.waves, max_failures=args.max_failures, window=args.window,
                      wave_timeout_s=args.wave_timeout)
        doc = summary(r, rs.targets(r.id))
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        print(f"rollout {r.id}: {r.release_id} to {len(gateways)} gateways in waves "
              f"{','.join(map(str, r.waves))}, max-failures {r.max_failures}; `edgegw-cloud "
              "serve` sends the offers (follow with `edgegw-cloud ota status`)")
    return 0


def _rollouts(args: argparse.Namespace) -> RolloutStore:
    """The rollout store of an initialised data dir (a typo'd --data-dir is an error, not a
    new empty database)."""
    CloudPaths.for_dir(args.data_dir).require_initialised()
    return RolloutStore(args.data_dir)


def cmd_status(args: argparse.Namespace) -> int:
    with _rollouts(args) as rs:
        chosen = [rs.get(args.rollout)] if args.rollout is not None else rs.rollouts()
        docs = [(r, rs.targets(r.id)) for r in chosen]
    if args.json:
        for r, targets in docs:
            print(json.dumps(summary(r, targets), sort_keys=True))
        return 0
    if not docs:
        print("no rollouts (start one with `edgegw-cloud ota rollout RELEASE --to ...`)")
    for i, (r, targets) in enumerate(docs):
        if args.rollout is None:  # one line per rollout; the detail with ROLLOUT
            counts: dict[str, int] = {}
            for t in targets:
                counts[t.state] = counts.get(t.state, 0) + 1
            line = "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items()))
            reason = f": {r.reason}" if r.reason and r.state != "completed" else ""
            print(f"{r.id:>4}  {r.release_id}  {r.state}{reason}  wave "
                  f"{max(r.wave + 1, 0)}/{len(r.waves)}  {line}")
        else:
            print(("\n" if i else "") + status_text(r, targets))
    return 0


def _operator(args: argparse.Namespace) -> int:
    with _rollouts(args) as rs:
        if args.ota_command == "halt":
            r = rs.halt(args.rollout)
        elif args.ota_command == "resume":
            r = rs.resume(args.rollout)
        else:
            r = rs.cancel(args.rollout)
    print(f"rollout {r.id}: {r.state}" + (f" ({r.reason})" if r.reason else ""))
    return 0


HELP = "OTA: publish and list releases, roll them out in waves, follow, halt, resume, cancel"


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

    p = osub.add_parser(
        "rollout",
        help="roll a release out to gateways in waves (serve sends the offers)",
        description="Start a rollout: the target gateways (sorted by id) get the release in "
        "cumulative waves; a wave starts when every gateway of the previous one is finished "
        "and its failures are within --max-failures, else the rollout halts by itself.",
    )
    data_dir(p)
    p.add_argument("release", help="release id or serial (see `ota releases`)")
    p.add_argument("--to", required=True,
                   help="all | gw1,gw2 | label:key=value[,key=value] (registry labels)")
    p.add_argument("--waves", default=DEFAULT_WAVES,
                   help=f"cumulative wave sizes, counts or percentages (default {DEFAULT_WAVES});"
                   " the last wave always covers every target")
    p.add_argument("--max-failures", default=DEFAULT_MAX_FAILURES,
                   help="failed/refused/rolled-back gateways a wave may have before the "
                   f"rollout halts: a percentage of the wave or a count (default "
                   f"{DEFAULT_MAX_FAILURES}; 0 = halt at the first failure)")
    p.add_argument("--window", help="maintenance window for the install step, cron with 5 "
                   "fields in UTC (overrides the gateways' ota.window), e.g. '* 2-4 * * *'")
    p.add_argument("--wave-timeout", type=float, metavar="S",
                   help="halt if a wave is not finished S seconds after it started")
    p.add_argument("--json", action="store_true", help="print the rollout as JSON")
    p.set_defaults(ota_fn=cmd_rollout)

    p = osub.add_parser("status", help="rollouts and the state of every gateway in them")
    data_dir(p)
    p.add_argument("rollout", nargs="?", type=int, help="one rollout in detail (default: all, "
                   "one line each)")
    p.add_argument("--json", action="store_true", help="one JSON document per rollout")
    p.set_defaults(ota_fn=cmd_status)

    for verb, text in (("halt", "stop offering a rollout to new gateways (resume continues)"),
                       ("resume", "continue a halted rollout (failures so far are accepted)"),
                       ("cancel", "cancel a rollout: gateways still downloading are told to "
                        "stop; installs already running finish")):
        p = osub.add_parser(verb, help=text)
        data_dir(p)
        p.add_argument("rollout", type=int)
        p.set_defaults(ota_fn=_operator)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.ota_fn(args))
    except (OtaError, RolloutError) as exc:
        print(f"edgegw-cloud ota {args.ota_command}: {exc}", file=sys.stderr)
        return 1
