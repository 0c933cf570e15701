"""``edgegw-cloud command | shadow | config | gateways label|fleet``: device management CLI.

Each command connects with the cloud's ingest identity to the broker ``serve`` recorded in the
data dir (or ``--broker``), does its job through ``DeviceManager`` and prints the outcome. Exit
codes: 0 ok, 1 refused / failed / timed out, 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgegw_cloud.devmgmt import DeviceManager, broker_url_of, load_bundle
from edgegw_cloud.devstore import ShadowConflict
from edgegw_cloud.pki_setup import CloudPaths
from edgegw_cloud.registry import Registry


def parse_value(text: str) -> Any:
    """``42`` -> 42, ``4.5`` -> 4.5, ``true`` -> True, ``null`` -> None, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(items: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgegw-cloud: {what} {item!r}: use KEY=VALUE")
        out[key] = parse_value(value)
    return out


def command_args(action: str, items: list[str]) -> dict[str, Any]:
    """CLI sugar: ``write POINT=VALUE`` and ``read [POINT ...]``; else KEY=VALUE pairs."""
    if action == "read":
        return {"points": items} if items else {}
    pairs = parse_pairs(items, "argument")
    if action == "write" and len(pairs) == 1 and not {"point", "value"} & set(pairs):
        (point, value), = pairs.items()
        return {"point": point, "value": value}
    return pairs


def _manager(args: argparse.Namespace) -> DeviceManager:
    paths = CloudPaths.for_dir(args.data_dir).require_initialised()
    url = args.broker or broker_url_of(paths)
    return DeviceManager(paths, url, tag="cli")  # started by `with`


def _print(doc: Any, out: Any = None) -> None:
    print(json.dumps(doc, indent=1, sort_keys=True, default=str), file=out or sys.stdout)


def cmd_command(args: argparse.Namespace) -> int:
    payload = command_args(args.action, args.args)
    with _manager(args) as dm:
        res = dm.command(args.gateway, args.device, args.action, payload, timeout=args.timeout)
    status = res["status"]
    if args.json:
        _print(res)
    elif status == "ok":
        print(f"ok {json.dumps(res['value'], default=str)}")
    else:
        print(f"{status}: {res.get('reason') or ''}".rstrip(": "))
    return 0 if status == "ok" else 1


def cmd_shadow(args: argparse.Namespace) -> int:
    with _manager(args) as dm:
        if args.shadow_command == "get":
            _print(dm.shadow_get(args.gateway, args.device))
            return 0
        changes = parse_pairs(args.pairs, "desired value")
        try:
            doc = dm.shadow_set(args.gateway, args.device, changes, args.expect_version)
        except ShadowConflict as exc:
            print(f"edgegw-cloud shadow set: {exc}", file=sys.stderr)
            return 1
        if args.wait > 0:
            end = time.monotonic() + args.wait
            while time.monotonic() < end and dm.shadow_get(args.gateway, args.device)["delta"]:
                time.sleep(0.2)  # poll-until-deadline for convergence
            doc = dm.shadow_get(args.gateway, args.device)
        _print(doc)
        return 0


def cmd_config(args: argparse.Namespace) -> int:
    with _manager(args) as dm:
        if args.config_command == "history":
            for c in dm.config_history(args.gateway):
                msgs = f"  {'; '.join(c['messages'])}" if c["messages"] else ""
                print(f"{c['version']:>4}  {c['status']:<10} pushed {c['pushed_ms']}{msgs}")
            return 0
        if args.config_command == "get":
            got = dm.config_get(args.gateway, args.timeout)
            if got is None:
                print(f"edgegw-cloud config get: {args.gateway} did not answer within "
                      f"{args.timeout:.0f} s", file=sys.stderr)
                hist = [c for c in dm.config_history(args.gateway) if c["status"] == "confirmed"]
                if hist:
                    print(f"last confirmed push (version {hist[0]['version']}):",
                          file=sys.stderr)
                    bundle = json.loads(hist[0]["yaml"])
                    sys.stdout.write(bundle["files"][bundle["main"]])
                return 1
            bundle = got.get("bundle") or {}
            print(f"# version {got.get('config_version')} pending {got.get('config_pending')}",
                  file=sys.stderr)
            sys.stdout.write((bundle.get("files") or {}).get(bundle.get("main"), ""))
            return 0
        bundle = load_bundle(args.path)
        version = dm.config_push(args.gateway, bundle, confirm_within=args.confirm_within)
        print(f"pushed version {version}; waiting for the gateway", file=sys.stderr)
        res = dm.config_wait(args.gateway, version, args.timeout + args.confirm_within)
    status = res["status"]
    print(f"version {version}: {status}")
    for m in res["messages"]:
        print(f"  {m}")
    return 0 if status == "confirmed" else 1


def cmd_label(args: argparse.Namespace) -> int:
    paths = CloudPaths.for_dir(args.data_dir).require_initialised()
    add = parse_pairs([p for p in args.labels if not p.endswith("-")], "label")
    remove = [p[:-1] for p in args.labels if p.endswith("-")]
    with Registry(paths.registry_db) as reg:
        labels = reg.set_labels(args.gateway, {k: str(v) for k, v in add.items()}, remove)
    print(" ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(no labels)")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    paths = CloudPaths.for_dir(args.data_dir).require_initialised()
    with Registry(paths.registry_db) as reg:
        rows = reg.fleet()
    _print([asdict(r) for r in rows])
    return 0


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")
    sp.add_argument("--broker", help="broker URL (default: the one `serve` recorded)")


def add_command_arguments(sp: argparse.ArgumentParser) -> None:
    _common(sp)
    sp.add_argument("gateway")
    sp.add_argument("device", help="device id, or - for the gateway itself (ping, "
                                   "reload_config, restart)")
    sp.add_argument("action", help="write, read, ping, or a driver's own command")
    sp.add_argument("args", nargs="*", help="write: POINT=VALUE; read: [POINT ...]; "
                                            "else KEY=VALUE")
    sp.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    sp.add_argument("--json", action="store_true", help="print the whole stored result")


def add_shadow_arguments(sp: argparse.ArgumentParser) -> None:
    ssub = sp.add_subparsers(dest="shadow_command", required=True)
    g = ssub.add_parser("get", help="print the shadow (desired, reported, delta, versions)")
    _common(g)
    g.add_argument("gateway")
    g.add_argument("device")
    s = ssub.add_parser("set", help="set desired values (POINT=VALUE; POINT=null removes)")
    _common(s)
    s.add_argument("gateway")
    s.add_argument("device")
    s.add_argument("pairs", nargs="+")
    s.add_argument("--expect-version", type=int, default=None,
                   help="refuse unless the desired version is still N (optimistic locking)")
    s.add_argument("--wait", type=float, default=0.0,
                   help="wait up to S seconds for the delta to become empty")


def add_config_arguments(sp: argparse.ArgumentParser) -> None:
    csub = sp.add_subparsers(dest="config_command", required=True)
    g = csub.add_parser("get", help="print the gateway's running config")
    _common(g)
    g.add_argument("gateway")
    g.add_argument("--timeout", type=float, default=10.0)
    p = csub.add_parser("push", help="push a config file or folder; waits for the outcome")
    _common(p)
    p.add_argument("gateway")
    p.add_argument("path", type=Path)
    p.add_argument("--confirm-within", type=float, default=60.0,
                   help="the gateway reverts by itself unless confirmed within S seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="wait for the answer")
    h = csub.add_parser("history", help="configs pushed to the gateway and their outcome")
    _common(h)
    h.add_argument("gateway")


def add_gateways_subcommands(gateways: argparse.ArgumentParser) -> None:
    """``gateways label GW KEY=VALUE...`` and ``gateways fleet`` under the listing verb."""
    gsub = gateways.add_subparsers(dest="gateways_command", required=False)
    lab = gsub.add_parser("label", help="set labels KEY=VALUE (KEY- removes)")
    lab.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")
    lab.add_argument("gateway")
    lab.add_argument("labels", nargs="+")
    fl = gsub.add_parser("fleet", help="fleet view as JSON: labels, online, versions, devices")
    fl.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")
