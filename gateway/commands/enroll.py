"""Enroll this gateway with the cloud: one-time token + CSR over the bootstrap identity.

The protocol lives in ``edgegw.uplink.enroll``; this module only maps the command line (or the
gateway config) onto it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgegw import pki
from edgegw.config import load_config
from edgegw.protocol.identity import default_bootstrap_dir, default_identity_dir
from edgegw.uplink.enroll import DEFAULT_TIMEOUT_S, EnrollmentError, enroll


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="gateway.yaml (gateway.id, uplink.*)")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument(
        "--token",
        help="one-time token from `edgegw-cloud token create GW_ID` (visible in `ps`: prefer "
        "--token-file, `--token-file -` (stdin) or $EDGEGW_ENROLL_TOKEN). A token starting with "
        "'-' must be written --token=TOKEN",
    )
    tok.add_argument(
        "--token-file",
        help="read the token from this file ('-' = stdin; surrounding whitespace ignored)",
    )
    parser.add_argument(
        "--bootstrap-dir",
        type=Path,
        help="dir with ca.crt, bootstrap.crt, bootstrap.key (default: STATE_DIR/bootstrap)",
    )
    parser.add_argument(
        "--renew",
        action="store_true",
        help="renew with the current, still valid certificate instead of a token",
    )
    parser.add_argument(
        "--new-key",
        action="store_true",
        help="generate a new gateway key even if one exists (old batches in the "
        "outbox may then become undecryptable for the cloud)",
    )
    parser.add_argument("--gateway-id", help="override gateway.id")
    parser.add_argument("--broker", help="override uplink.broker (mqtts://HOST:PORT)")
    parser.add_argument(
        "--enroll-broker",
        help="override uplink.enroll_broker: the cloud's enrollment listener (default: the "
        "broker's host, port + 1)",
    )
    parser.add_argument("--identity-dir", type=Path, help="override uplink.identity_dir")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the cloud (default %(default)s)",
    )


def _from_config(path: Path) -> tuple[str, str, Path, Path, str | None]:
    cfg = load_config(path)
    state = Path(cfg.gateway.state_dir)
    ident = default_identity_dir(state, cfg.uplink.identity_dir)
    eb = cfg.uplink.enroll_broker
    return str(cfg.gateway.id), str(cfg.uplink.broker), ident, default_bootstrap_dir(state), eb


TOKEN_ENV = "EDGEGW_ENROLL_TOKEN"


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token, --token-file (``-`` = stdin) or $EDGEGW_ENROLL_TOKEN, in that
    order; None if none is given (renewal)."""
    if getattr(args, "token", None):
        return str(args.token)
    src = getattr(args, "token_file", None)
    if src:
        try:
            text = sys.stdin.read(4096) if src == "-" else Path(src).read_text()[:4096]
        except OSError as exc:
            raise EnrollmentError(f"cannot read the token from {src}: {exc.strerror}") from None
        if not text.strip():
            raise EnrollmentError(f"no token in {'stdin' if src == '-' else src}")
        return text.strip()
    env = os.environ.get(TOKEN_ENV, "").strip()
    return env or None


def run(args: argparse.Namespace) -> int:
    gw_id = args.gateway_id
    broker = args.broker
    ident_dir = args.identity_dir
    boot = args.bootstrap_dir
    enroll_broker = getattr(args, "enroll_broker", None)
    try:
        if args.config is not None:
            c_id, c_broker, c_ident, c_boot, c_eb = _from_config(args.config)
            gw_id, broker = gw_id or c_id, broker or c_broker
            ident_dir, boot = ident_dir or c_ident, boot or c_boot
            enroll_broker = enroll_broker or c_eb
        missing = [
            n
            for n, v in (("gateway id", gw_id), ("broker", broker), ("identity dir", ident_dir))
            if not v
        ]
        if missing:
            raise EnrollmentError(f"missing {', '.join(missing)}: pass -c CONFIG or the overrides")
        ident = enroll(
            gw_id,
            ident_dir,
            broker=broker,
            token=read_token(args),
            bootstrap_dir=boot,
            renew=args.renew,
            new_key=args.new_key,
            timeout=args.timeout,
            enroll_broker=enroll_broker,
        )
    except (EnrollmentError, pki.PkiError, FileExistsError) as exc:
        print(f"edgegw enroll: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # config errors carry their own formatting
        print(f"edgegw enroll: {exc}", file=sys.stderr)
        return 2
    print(f"enrolled {ident.gateway_id}: identity in {ident.dir}")
    return 0
