"""``edgegw-cloud``: init, serve, token create, gateways, revoke, query.

Exit codes: 0 success, 1 a refused/failed operation (message on stderr), 2 usage error.
``serve`` prints one line ``serving mqtts://HOST:PORT`` on stdout once the broker accepts TLS
and the enrollment service is subscribed (scripts and tests wait for it), stops cleanly on
SIGINT/SIGTERM (a second signal forces exit), and reloads the broker whenever crl.pem changes
(``revoke`` from another process) and re-signs the CRL daily.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from edgegw import pki
from edgegw_cloud.pki_setup import CloudPaths, add_broker_hosts, broker_sans, init_data_dir
from edgegw_cloud.registry import GatewayRow, Registry, RegistryError

log = logging.getLogger("edgegw.cloud")


# --------------------------------------------------------------------------- helpers
def parse_ttl(text: str) -> float:
    try:
        from edgegw.units import parse_duration  # the project's one duration syntax
    except ImportError:  # pragma: no cover - units is part of the package
        return float(text)
    return float(parse_duration(text))


def _paths(args: argparse.Namespace) -> CloudPaths:
    return CloudPaths.for_dir(args.data_dir).require_initialised()


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _store_summary(target: str | Path) -> dict[str, dict[str, int]]:
    """Per-gateway counters from the store (written by the ingest), if it exists."""
    from edgegw_cloud.stores import describe, open_store

    if isinstance(target, Path) and not target.exists():
        return {}
    try:
        store = open_store(target, readonly=True)
        try:
            summary = store.fleet_summary()
        finally:
            store.close()
    except Exception as exc:  # the listing still shows the registry
        log.warning("could not read the store %s: %s", describe(target), exc)
        return {}
    return {
        gw: {
            "batches": s.get("batches", 0),
            "last_ms": s.get("last_stored_ms") or 0,
            "devices": s.get("devices", 0),
            "gaps": s.get("gaps", 0),
            "dropped": s.get("dropped_batches", 0),
        }
        for gw, s in summary.items()
    }


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


# --------------------------------------------------------------------------- commands
def cmd_init(args: argparse.Namespace) -> int:
    paths = init_data_dir(args.data_dir, broker_host=args.broker_host or ["127.0.0.1"])
    print(f"cloud data dir ready: {paths.data_dir}")
    print(f"  broker certificate covers: {', '.join(broker_sans(paths.broker_crt))}")
    print(
        f"  CA {paths.ca_crt} (fingerprint {pki.fingerprint(pki.load_certificate(paths.ca_crt))})"
    )
    print(
        f"  gateways need {paths.ca_crt.name}, {paths.bootstrap_crt.name} and "
        f"{paths.bootstrap_key.name} in their bootstrap dir to enroll"
    )
    return 0


def cmd_broker_cert(args: argparse.Namespace) -> int:
    paths = _paths(args)
    sans, changed = add_broker_hosts(paths, args.add_host or [])
    if changed:
        print(f"re-issued {paths.broker_crt} (same key); a running `serve` restarts its broker")
    print("broker certificate covers: " + ", ".join(sans))
    return 0


def _operators(args: argparse.Namespace) -> Any:
    from edgegw_cloud.web.auth import Operators

    return Operators(_paths(args).data_dir / "operators.db")


def _read_password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AuthCliError("the passwords differ")
    return first


class AuthCliError(Exception):
    pass


def cmd_user(args: argparse.Namespace) -> int:
    with _operators(args) as ops:
        if args.user_command == "add":
            ops.add_user(args.name, _read_password(args), args.role)
            print(f"user {args.name} ({args.role}) added")
        elif args.user_command == "remove":
            ops.remove_user(args.name)
            print(f"user {args.name} removed (their sessions end now)")
        else:
            table = [["USER", "ROLE", "CREATED"]]
            table += [[n, r, _fmt_ms(c)] for n, r, c in ops.users()]
            print_table(table, sys.stdout)
    return 0


def cmd_api_token(args: argparse.Namespace) -> int:
    with _operators(args) as ops:
        if args.api_token_command == "create":
            print(ops.create_token(args.name, args.role))
            print(
                f"API token {args.name!r} ({args.role}); it is stored hashed and will not be "
                "shown again. Use it as `Authorization: Bearer <token>`",
                file=sys.stderr,
            )
        elif args.api_token_command == "revoke":
            ops.revoke_token(args.name)
            print(f"API token {args.name} revoked")
        else:
            table = [["TOKEN NAME", "ROLE", "CREATED", "LAST USED"]]
            table += [[n, r, _fmt_ms(c), _fmt_ms(u)] for n, r, c, u in ops.tokens()]
            print_table(table, sys.stdout)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl)
    with Registry(_paths(args).registry_db) as reg:
        token = reg.create_token(args.gateway_id, ttl, reinstate=args.reinstate)
    print(token)
    print(
        f"one-time token for {args.gateway_id}, valid {args.ttl}; it is not stored and will "
        "not be shown again",
        file=sys.stderr,
    )
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    paths = _paths(args)
    with Registry(paths.registry_db) as reg:
        rows = reg.gateways()
    target = args.store or paths.store_db
    print_table(gateways_table(rows, _store_summary(target)), sys.stdout)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from edgegw_cloud.revocation import revoke_gateway

    serials = revoke_gateway(_paths(args), args.gateway_id)
    print(
        f"revoked {args.gateway_id} ({len(serials)} certificate(s)); a running `serve` reloads "
        "the broker within seconds"
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    query = importlib.import_module("edgegw_cloud.query")
    return int(query.run(args))


# --------------------------------------------------------------------------- serve
class _Signals:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(130)  # second signal: force
        log.info("signal %d: stopping", signum)
        self.stop.set()


def _crl_stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _start_ingest(
    paths: CloudPaths,
    url: str,
    stop: threading.Event,
    store: str | Path | None = None,
    forward: tuple[str, ...] = (),
) -> threading.Thread | None:
    try:
        ingest = importlib.import_module("edgegw_cloud.ingest")
    except ImportError as exc:
        log.warning("cloud ingest not available (%s): serving without ingest", exc)
        return None

    def target() -> None:
        try:
            ingest.run_ingest(paths, url, stop, store=store, forward=forward)
        except Exception:
            log.exception("ingest failed; stopping serve")
            stop.set()

    t = threading.Thread(target=target, name="ingest", daemon=True)
    t.start()
    return t


def serve(
    paths: CloudPaths,
    *,
    port: int,
    listen: str = "127.0.0.1",
    http: str | None = None,
    store: str | Path | None = None,
    forward: tuple[str, ...] = (),
    broker_url: str | None = None,
    stop: threading.Event | None = None,
    ingest: bool = True,
    ingest_processes: int = 0,
    ingest_stats_dir: Path | None = None,
    crl_poll_s: float = 1.0,
    out: TextIO | None = None,
) -> int:
    """Run broker + enrollment + ingest until ``stop`` is set.

    ``ingest_processes`` = 0 runs the ingest as a thread of this process; N > 0 runs N ingest
    processes sharing the subscription (decode and store use a core each; the store's SQLite
    write lock serialises their commits).
    """
    from edgegw.uplink.enroll import parse_broker_url
    from edgegw_cloud.broker import Listener, ManagedBroker
    from edgegw_cloud.enrollment import EnrollmentService
    from edgegw_cloud.revocation import CRL_REFRESH_S, refresh_crl

    out = out or sys.stdout
    stop = stop or threading.Event()
    refresh_crl(paths)
    broker: ManagedBroker | None = None
    public_url = None
    if broker_url is None:
        extra = None if listen in ("127.0.0.1", "localhost") else Listener(port, listen)
        broker = ManagedBroker(paths, port, extra_listener=extra).start()
        broker_url = broker.url  # the cloud's own services always dial loopback
        if extra is not None:
            shown = f"[{listen}]" if ":" in listen else listen
            public_url = f"mqtts://{shown}:{port}"
    host, bport = parse_broker_url(broker_url)
    enroll = EnrollmentService(paths, host, bport).start()
    ingest_thread = None
    ingest_procs: Any = None
    if ingest and ingest_processes > 0:
        from edgegw_cloud.ingest import IngestProcesses

        ingest_procs = IngestProcesses(
            paths, broker_url, ingest_processes, ingest_stats_dir, store=store, forward=forward
        )
    elif ingest:
        ingest_thread = _start_ingest(paths, broker_url, stop, store, forward)
    web: Any = None
    if http is not None:
        from edgegw_cloud.stores import open_store
        from edgegw_cloud.web.server import HttpServer, parse_listen

        target = store if store is not None else paths.store_db
        web = HttpServer(
            paths,
            *parse_listen(http),
            broker=(host, bport),
            open_store=lambda: open_store(target, readonly=True),
        ).start()
    out.write(f"serving {broker_url}\n")
    if public_url is not None:
        out.write(f"gateways dial {public_url} (certificate covers "
                  f"{', '.join(broker_sans(paths.broker_crt))})\n")
    if web is not None:
        out.write(f"dashboard and API on {web.url} (CA: {paths.ca_crt})\n")
    out.flush()
    crl = _crl_stamp(paths.crl)
    broker_cert = _crl_stamp(paths.broker_crt)
    refreshed = time.monotonic()
    try:
        while not stop.wait(crl_poll_s):
            if time.monotonic() - refreshed > CRL_REFRESH_S:
                refresh_crl(paths)
                refreshed = time.monotonic()
            cert_now = _crl_stamp(paths.broker_crt)
            if cert_now != broker_cert:
                broker_cert = cert_now
                if broker is not None:
                    log.info("broker.crt changed (broker-cert --add-host): restarting the broker")
                    broker.stop()
                    broker.start()
            now = _crl_stamp(paths.crl)
            if now != crl:
                crl = now
                if broker is not None:
                    log.info("crl.pem changed: reloading the broker")
                    broker.reload()
                else:
                    log.warning("crl.pem changed: reload the external broker's CRL yourself")
    finally:
        stop.set()
        if web is not None:
            web.stop()
        enroll.stop()
        if ingest_thread is not None:
            ingest_thread.join(timeout=15.0)
        if ingest_procs is not None:
            ingest_procs.stop()
        if broker is not None:
            broker.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    paths = _paths(args)
    stop = threading.Event()
    handler = _Signals(stop)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return serve(
        paths,
        port=args.port,
        listen=args.listen,
        http=args.http,
        store=args.store,
        forward=tuple(args.forward or ()),
        broker_url=args.broker,
        stop=stop,
        ingest=not args.no_ingest,
        ingest_processes=args.ingest_processes,
        ingest_stats_dir=args.ingest_stats_dir,
    )


# --------------------------------------------------------------------------- parser
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

    def data_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", required=True, type=Path, help="cloud data directory")

    sp = sub.add_parser("init", help="create the CA, broker/ingest/bootstrap identities, keys")
    data_dir(sp)
    sp.add_argument(
        "--broker-host",
        action="append",
        metavar="HOST",
        help="host name or IP address gateways dial to reach this cloud; repeat for several "
        "(the broker certificate always covers 127.0.0.1 and localhost too). Add more later "
        "with `broker-cert --add-host`",
    )
    sp.set_defaults(fn=cmd_init)

    sp = sub.add_parser(
        "broker-cert",
        help="show the host names the broker certificate covers; --add-host re-issues it",
    )
    data_dir(sp)
    sp.add_argument(
        "--add-host",
        action="append",
        metavar="HOST",
        help="also cover this host name / IP (repeatable); the key is kept, gateways need "
        "nothing new",
    )
    sp.set_defaults(fn=cmd_broker_cert)

    sp = sub.add_parser("serve", help="run the broker, enrollment service and ingest")
    data_dir(sp)
    sp.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the broker listens on for gateways: an address of this host "
        "(e.g. 192.0.2.10) or 0.0.0.0 / :: for all; the cloud's own services always use "
        "127.0.0.1 (default: 127.0.0.1, this machine only)",
    )
    sp.add_argument("--port", type=int, default=8883, help="managed broker port (default 8883)")
    sp.add_argument(
        "--http",
        metavar="ADDR:PORT",
        help="also serve the dashboard and the JSON API (HTTPS, the broker's certificate) on "
        "ADDR:PORT, e.g. 0.0.0.0:8443; needs an account (`user add`) or an API token "
        "(`api-token create`). Off unless given",
    )
    sp.add_argument("--broker", help="use this external broker (mqtts://HOST:PORT) instead")
    sp.add_argument("--no-ingest", action="store_true", help="broker + enrollment only")
    sp.add_argument(
        "--store",
        metavar="URL",
        help="keep the data in PostgreSQL (postgresql://USER@HOST:PORT/DB; the tables are "
        "created on first start, TimescaleDB hypertable when the extension is there) instead "
        "of DATA/store.db (SQLite, the default)",
    )
    sp.add_argument(
        "--forward",
        action="append",
        metavar="URL",
        help="also hand every newly stored reading to this sink (repeatable): "
        "mqtt://HOST:PORT/PREFIX (JSON per metric topic), influx+udp://HOST:PORT, "
        "influx+tcp://HOST:PORT, influx+file:///PATH (InfluxDB line protocol); best effort, "
        "drops counted (the store stays the source of truth)",
    )
    sp.add_argument(
        "--ingest-processes",
        type=int,
        default=0,
        metavar="N",
        help="run the ingest as N processes on the shared subscription (default: a thread)",
    )
    sp.add_argument(
        "--ingest-stats-dir",
        type=Path,
        default=None,
        help="with --ingest-processes: each process writes its final counters here as JSON",
    )
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("token", help="enrollment tokens")
    tsub = sp.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", help="print a one-time enrollment token for GW_ID")
    data_dir(tc)
    tc.add_argument("gateway_id")
    tc.add_argument("--ttl", default="1h", help="validity (e.g. 10m, 1h, 2d; default 1h)")
    tc.add_argument(
        "--reinstate", action="store_true", help="allow a revoked gateway to enroll again"
    )
    tc.set_defaults(fn=cmd_token_create)

    sp = sub.add_parser("user", help="dashboard accounts (admin or read-only)")
    usub = sp.add_subparsers(dest="user_command", required=True)
    ua = usub.add_parser("add", help="add an account; the password is asked (or read from stdin)")
    data_dir(ua)
    ua.add_argument("name")
    ua.add_argument("--role", choices=("admin", "read-only"), default="read-only",
                    help="admin: may also revoke gateways and create tokens (default read-only)")
    ua.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of stdin (scripts)")
    ur = usub.add_parser("remove", help="remove an account and end its sessions")
    data_dir(ur)
    ur.add_argument("name")
    ul = usub.add_parser("list", help="list accounts")
    data_dir(ul)
    sp.set_defaults(fn=cmd_user)

    sp = sub.add_parser("api-token", help="API tokens for scripts (Authorization: Bearer)")
    asub = sp.add_subparsers(dest="api_token_command", required=True)
    ac = asub.add_parser("create", help="print a new API token (shown once, stored hashed)")
    data_dir(ac)
    ac.add_argument("name", help="what the token is for, e.g. grafana or ci")
    ac.add_argument("--role", choices=("admin", "read-only"), default="read-only")
    ar = asub.add_parser("revoke", help="revoke an API token by name")
    data_dir(ar)
    ar.add_argument("name")
    al = asub.add_parser("list", help="list API tokens (names, roles, last use)")
    data_dir(al)
    sp.set_defaults(fn=cmd_api_token)

    sp = sub.add_parser("gateways", help="list gateways (registry + store counters)")
    data_dir(sp)
    sp.add_argument("--store", metavar="URL", help="the PostgreSQL store serve writes to")
    sp.set_defaults(fn=cmd_gateways)

    sp = sub.add_parser("revoke", help="revoke a gateway: the broker refuses it from then on")
    data_dir(sp)
    sp.add_argument("gateway_id")
    sp.set_defaults(fn=cmd_revoke)

    sp = sub.add_parser("query", help="print stored readings as JSON/CSV")
    try:
        importlib.import_module("edgegw_cloud.query").add_arguments(sp)
    except ImportError as exc:  # the query module is optional for the rest of the CLI
        sp.set_defaults(query_error=str(exc))
    sp.set_defaults(fn=cmd_query)
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
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_time_values(sys.argv[1:] if argv is None else argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command == "serve":
        level = min(level, logging.INFO)
    from edgegw.logfmt import configure

    configure(level, args.log_format, force=False)
    try:
        rc: Any = args.fn(args)
    except (RegistryError, pki.PkiError, FileExistsError, AuthCliError) as exc:
        print(f"edgegw-cloud {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from edgegw_cloud.broker import BrokerError
        from edgegw_cloud.web.auth import AuthError

        if isinstance(exc, (BrokerError, AuthError, ValueError)):
            print(f"edgegw-cloud {args.command}: {exc}", file=sys.stderr)
            return 1
        raise
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
