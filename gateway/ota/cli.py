"""`edgegw ota ...`: apply a release from disk (offline/USB path) and show the slot state.

``edgegw ota install RELEASE_DIR -c CONFIG --slots DIR`` runs exactly the checks an offer over
the network gets (signature with the trusted key, target, replay, downgrade, archive), installs
into a new slot and starts the trial at the next service start (``systemctl restart edgegw``).
``edgegw ota status --slots DIR`` prints boot.json (committed, trial, last result).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edgegw.ota import launcher

log = logging.getLogger("edgegw.ota")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ota_command", required=True)
    p = sub.add_parser("install", help="verify and install a release dir into a new slot")
    p.add_argument("release", type=Path, help="dir with manifest.json, manifest.sig, payload.tar")
    p.add_argument("-c", "--config", required=True, type=Path, help="the live gateway.yaml")
    p.add_argument("--slots", type=Path, default=Path("/opt/edgegw/slots"))
    p.add_argument(
        "--trusted-key",
        type=Path,
        default=None,
        help="cloud OTA public key (default: IDENTITY_DIR/ota-signing.pub)",
    )
    p.add_argument("--deadline", type=float, default=launcher.DEFAULT_DEADLINE_S)
    p.add_argument("--max-attempts", type=int, default=launcher.DEFAULT_MAX_ATTEMPTS)
    p.add_argument(
        "--deps-from",
        type=Path,
        default=None,
        help="TEST MODE: take dependencies from this site-packages (see edgegw.ota.slots)",
    )
    p = sub.add_parser("status", help="committed version, trial, last result")
    p.add_argument("--slots", type=Path, default=Path("/opt/edgegw/slots"))


def run(args: argparse.Namespace) -> int:
    if args.ota_command == "status":
        doc = launcher.read_boot(args.slots)
        doc["current"] = launcher.current_version(args.slots)
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    return _install(args)


def _install(args: argparse.Namespace) -> int:
    from edgegw.config import ConfigError, load_config
    from edgegw.ota.slots import install_software
    from edgegw.ota.trial import running_version
    from edgegw.ota.verify import Refusal, check_offer, load_trusted_key

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    identity = Path(cfg.uplink.identity_dir or Path(cfg.gateway.state_dir) / "identity")
    key_path = args.trusted_key or identity / "ota-signing.pub"
    boot = launcher.read_boot(args.slots)
    try:
        key = load_trusted_key(key_path)
        m = check_offer(
            (args.release / "manifest.json").read_bytes(),
            (args.release / "manifest.sig").read_bytes(),
            key,
            gateway_id=cfg.gateway.id,
            last_serial=int(boot.get("accepted_serial") or 0),
            installed_version=boot.get("committed") or running_version(),
        )
        install_software(
            args.slots,
            args.release / "payload.tar",
            m,
            config=args.config,
            max_attempts=args.max_attempts,
            deadline_s=args.deadline,
            deps_from=args.deps_from,
        )
    except Refusal as exc:
        log.warning("release %s refused: %s", args.release, exc)
        print(f"edgegw ota install: refused: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"edgegw ota install: {exc}", file=sys.stderr)
        return 1
    print(f"installed {m.release_id}; restart the service to start its trial")
    return 0
