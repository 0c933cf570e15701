"""Managed Mosquitto: generated mTLS + ACL config and a supervised ``mosquitto -c`` process.

Invariants:
- Only mutual TLS listeners: ``require_certificate true``, ``use_identity_as_username true``
  (username = certificate CN = gateway id), ``allow_anonymous false``, a CRL, an ACL file.
- Two kinds of listener (issue 9 #3, client-id takeover): the GATEWAY listener (``port``, the
  ``uplink.broker`` of gateways) has ``use_username_as_clientid true``: whatever client id a
  connection asks for, it becomes the certificate CN, so only the holder of gateway A's key can
  be client ``A`` there, and nobody can kick A off. Enrollment (the shared bootstrap identity),
  renewal and the cloud services (ingest, enrollment service) need free client ids, so they use
  the SERVICE listener (``service_port``), where ``clientid_prefixes ~`` (global) makes every
  client id start with ``~``: a gateway id starts with a letter or digit, so no client there
  can take a gateway's id either. Each listener has its own ACL: data topics only on the
  gateway listener, enrollment and service topics only on the service listener.
  Gateways may write only ``gw/<cn>/up/#`` and read only ``gw/<cn>/down/#``; the
  ``bootstrap`` identity is denied ``gw/#`` outright (the ``%u``
  patterns would otherwise give it ``gw/bootstrap/up/...``): it can only enroll.
- Limits (docs/security.md "Limits in force"): ``max_packet_size`` (no 100 MiB publish),
  ``retain_available false`` (nothing can park data in the broker: a retained publish or will
  is refused), ``max_queued_bytes`` per client, ``max_keepalive``; TLS 1.2+ with AEAD suites
  only (ECDHE-ECDSA with AES-GCM or ChaCha20-Poly1305: the CA and broker keys are P-256).
- ``max_queued_messages`` is large, never 0 (0 makes ACL-denied QoS1 publishes disconnect loop,
  FIELD-NOTES).
- Run as root, Mosquitto drops to user ``mosquitto``. We do NOT run it as root (``user root``):
  instead the files it needs (CA, broker cert + key, CRL, ACL, persistence dir, log) are copied
  into DATA/broker/ and owned by that user; ``pki/`` stays root-only 0700.
- ``reload()`` rewrites ACL + CRL copies and sends SIGHUP: the ACL (with a ``deny #`` entry per
  revoked gateway) applies at once to connected clients; the CRL to new handshakes.
- The broker dies with its parent (``PR_SET_PDEATHSIG``): a SIGKILLed ``serve`` leaves no
  Mosquitto behind; one left by an older build (same config file) is recognised and stopped
  at the next ``start()`` instead of being blamed as "a system mosquitto".
- A crash is restarted with exponential backoff (0.5 s .. 30 s) by a supervisor thread;
  ``stop()`` and ``kill()`` suspend supervision until the next ``start()``/``restart()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from edgegw import pki
from edgegw.protocol import topics
from edgegw.protocol.broker_url import BrokerUrl
from edgegw_cloud.pki_setup import BOOTSTRAP_CN, ENROLL_CN, INGEST_CN, CloudPaths
from edgegw_cloud.registry import Registry

log = logging.getLogger("edgegw.cloud.broker")

MAX_QUEUED_MESSAGES = 1_000_000
#: Largest MQTT packet the broker accepts: a batch envelope is at most the codec's body limit
#: (``MAX_BODY_BYTES``, 12 MiB) plus snappy's worst-case growth and the envelope overhead.
MAX_PACKET_SIZE = 16 * 1024 * 1024
#: Bytes queued for one client (QoS 1 downlink/acks while it is slow or away).
MAX_QUEUED_BYTES = 64 * 1024 * 1024
MAX_KEEPALIVE = 600
#: TLS 1.2 suites: AEAD only (no CBC), forward secret, matching our EC P-256 keys.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
)
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/sbin")


_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None


#: resolved in the parent: the forked child may run as a user that cannot import anything
_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> None:
    """In the forked child, before exec: SIGTERM when the parent dies (Linux prctl), so a
    SIGKILLed ``edgegw-cloud serve`` never leaves its broker running, reparented."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died between fork and prctl
        os._exit(1)


def _orphaned(pid: int) -> bool:
    """True if ``pid``'s parent is neither this process nor an edgegw process (it was
    reparented to init or a subreaper when its ``serve`` died)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().split(") ")[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    if ppid == os.getpid():
        return False
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            parent = f.read()
    except OSError:
        return True
    return b"edgegw" not in parent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] not in ("Z", "X")
    except OSError:
        return False


class BrokerError(RuntimeError):
    """The managed broker cannot be started or controlled; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Listener:
    """Additional mTLS listeners (e.g. on the LAN address): a gateway listener on ``port`` and,
    if ``service_port`` is given, a service/enrollment listener there too."""

    port: int
    host: str = "127.0.0.1"
    service_port: int | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(_SEARCH))
    if not found:
        raise BrokerError(
            "mosquitto is not installed: run `apt-get install mosquitto` (Debian/Raspberry Pi OS) "
            "or point `edgegw-cloud serve --broker URL` at an external broker"
        )
    return found


def _revoked_lines(revoked: Sequence[str]) -> list[str]:
    lines = [
        "# generated by edgegw-cloud: do not edit (rewritten on every start/reload)",
        "# Revoked gateways: every topic denied, applied to live connections on reload.",
    ]
    for gw in revoked:
        lines += [f"user {gw}", "topic deny #", ""]
    return lines


def _gateway_patterns() -> list[str]:
    return [
        "# Gateways through patterns keyed on the certificate CN: their own uplink tree (batches,",
        "# status, device-management replies; nothing is retained: retain_available false) and",
        "# their downlink.",
        f"pattern write {topics.OWN_UP}",
        f"pattern read {topics.OWN_DOWN}",
        "",
    ]


def _enroll_patterns() -> list[str]:
    return [
        "# Enrollment: the authenticated username is part of the topic, and the client id keeps",
        "# one enrolling device from reading another's response.",
        f"pattern write {topics.OWN_ENROLL_REQUEST}",
        f"pattern read {topics.OWN_ENROLL_RESPONSE}",
        "",
    ]


def _service_users() -> list[str]:
    return [
        f"user {BOOTSTRAP_CN}",
        "# the shared, every-unenrolled-device identity: enrollment only",
        f"topic deny {topics.EVERY_GATEWAY}",
        "",
        f"user {INGEST_CN}",
        f"topic read {topics.EVERY_UP}",
        f"topic read {topics.shared(topics.EVERY_UP)}",
        f"topic write {topics.EVERY_DOWN}",
        "",
        f"user {ENROLL_CN}",
        f"topic read {topics.EVERY_ENROLL_REQUEST}",
        f"topic read {topics.shared(topics.EVERY_ENROLL_REQUEST)}",
        f"topic write {topics.EVERY_ENROLL_RESPONSE}",
        "",
    ]


def gateway_acl_text(revoked: Sequence[str] = ()) -> str:
    """ACL of the gateway listener: each gateway its own two uplink topics and its downlink;
    the shared and service identities nothing (they belong on the service listener)."""
    lines = _revoked_lines(revoked)
    for cn in (BOOTSTRAP_CN, INGEST_CN, ENROLL_CN):
        lines += [f"user {cn}", "topic deny #", ""]
    return "\n".join(lines + _gateway_patterns())


def service_acl_text(revoked: Sequence[str] = ()) -> str:
    """ACL of the service listener: the ingest and enrollment services, enrollment requests
    (bootstrap) and renewals (a gateway's own identity); no gateway data topics."""
    return "\n".join(_revoked_lines(revoked) + _service_users() + _enroll_patterns())


def acl_text(revoked: Sequence[str] = ()) -> str:
    """One ACL for a single-listener EXTERNAL broker (``serve --broker URL``): the union of
    both listeners' rules. %u = username = certificate CN; %c = MQTT client id. Without the
    managed broker's two listeners the client-id binding is not enforced (docs/security.md)."""
    return "\n".join(
        _revoked_lines(revoked) + _service_users() + _gateway_patterns() + _enroll_patterns()
    )


def _mosquitto_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None  # mosquitto only drops privileges when started as root
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        log.warning("running as root and there is no user 'mosquitto': broker files stay root's")
        return None


class ManagedBroker:
    """One Mosquitto process serving the cloud data dir's PKI on ``port`` (127.0.0.1)."""

    def __init__(
        self,
        paths: CloudPaths,
        port: int,
        *,
        service_port: int | None = None,
        extra_listener: Listener | None = None,
    ) -> None:
        """``port``: the gateway listener; ``service_port``: the enrollment/service listener
        (None: a free port, chosen once here; ``serve`` uses ``port + 1``)."""
        self.paths = paths.require_initialised()
        self.port = port
        self.service_port = service_port if service_port is not None else _free_port()
        self.extra_listener = extra_listener
        self.service_acl = paths.acl.with_name(paths.acl.name + "-service")
        self.binary = find_mosquitto()
        self.tls_dir = paths.broker_dir / "tls"
        self.data_dir = paths.broker_dir / "data"
        self.stderr_path = paths.broker_dir / "mosquitto.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._supervise = False
        self._wake = threading.Event()  # never set: a timed wait for poll loops
        self._stopping = threading.Event()  # set by stop()/kill(): ends a backoff wait early
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.crashes = 0

    # ----------------------------------------------------------------- config
    def _revoked(self) -> list[str]:
        with Registry(self.paths.registry_db) as reg:
            return reg.revoked_gateways()

    def _listener_block(self, port: int, host: str, *, service: bool = False) -> list[str]:
        t = self.tls_dir
        if service:
            binding = ["# service listener: free client ids (all start with ~, clientid_prefixes)"]
        else:
            binding = ["# gateway listener: the client id is the certificate CN, whatever is asked",
                       "use_username_as_clientid true"]
        return [
            f"listener {port} {host}",
            "protocol mqtt",
            f"cafile {t / 'ca.crt'}",
            f"certfile {t / 'broker.crt'}",
            f"keyfile {t / 'broker.key'}",
            f"crlfile {t / 'crl.pem'}",
            "tls_version tlsv1.2",
            f"ciphers {TLS12_CIPHERS}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            *binding,
            f"acl_file {self.service_acl if service else self.paths.acl}",
            "",
        ]

    def config_text(self) -> str:
        lines = [
            "# generated by edgegw-cloud: do not edit (rewritten on every start)",
            "per_listener_settings true",
            f"clientid_prefixes {pki.CLIENT_ID_PREFIX}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 60",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_queued_bytes {MAX_QUEUED_BYTES}",
            "max_inflight_messages 100",
            f"max_packet_size {MAX_PACKET_SIZE}",
            "retain_available false",
            f"max_keepalive {MAX_KEEPALIVE}",
            "set_tcp_nodelay true",
            f"log_dest file {self.paths.mosquitto_log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
        ]
        lines += self._listener_block(self.port, "127.0.0.1")
        lines += self._listener_block(self.service_port, "127.0.0.1", service=True)
        x = self.extra_listener
        if x is not None:
            lines += self._listener_block(x.port, x.host)
            if x.service_port is not None:
                lines += self._listener_block(x.service_port, x.host, service=True)
        return "\n".join(lines)

    def _check_reachable(self, user: pwd.struct_passwd) -> None:
        """Mosquitto opens its files after dropping to ``user``: every ancestor must let it in."""
        for d in reversed(self.paths.broker_dir.parents):
            st = d.stat()
            if st.st_uid == user.pw_uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid == user.pw_gid:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                raise BrokerError(
                    f"mosquitto runs as user '{user.pw_name}' and cannot enter {d} "
                    f"(mode {st.st_mode & 0o777:o}): `chmod o+x {d}` or put the data dir "
                    "somewhere it can reach (e.g. /var/lib/edgegw-cloud)"
                )

    def write_files(self) -> None:
        """(Re)write conf, ACL and the broker's private copies of its TLS files."""
        user = _mosquitto_user()
        if user is not None:
            self._check_reachable(user)
        self.paths.broker_dir.mkdir(parents=True, exist_ok=True)
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        p = self.paths
        copies = [
            (p.ca_crt, "ca.crt", 0o644),
            (p.broker_crt, "broker.crt", 0o644),
            (p.broker_key, "broker.key", 0o600),
            (p.crl, "crl.pem", 0o644),
        ]
        for src, name, mode in copies:
            dst = self.tls_dir / name
            if mode == 0o600:
                pki._atomic_write(dst, src.read_bytes(), mode, overwrite=True)
            else:
                pki.write_public(dst, src.read_bytes())
        revoked = self._revoked()
        pki.write_public(p.acl, gateway_acl_text(revoked).encode())
        pki.write_public(self.service_acl, service_acl_text(revoked).encode())
        pki.write_public(p.mosquitto_conf, self.config_text().encode())
        if user is not None:
            for path in (
                p.broker_dir,
                self.tls_dir,
                self.data_dir,
                p.acl,
                self.service_acl,
                p.mosquitto_conf,
                *self.tls_dir.iterdir(),
                *self.data_dir.iterdir(),
            ):
                os.chown(path, user.pw_uid, user.pw_gid)
            if not p.mosquitto_log.exists():
                p.mosquitto_log.touch(0o640)
            os.chown(p.mosquitto_log, user.pw_uid, user.pw_gid)

    # ----------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        """The gateway listener (gateways' ``uplink.broker``)."""
        return str(BrokerUrl("127.0.0.1", self.port))

    @property
    def service_url(self) -> str:
        """The service listener: enrollment, renewal, ingest, enrollment service."""
        return str(BrokerUrl("127.0.0.1", self.service_port))

    def _spawn(self) -> None:
        parent = os.getpid()
        # Started as root, Mosquitto would setuid itself to 'mosquitto', and the kernel clears
        # PR_SET_PDEATHSIG on that credential change. So root starts it as that user directly
        # (Popen sets the ids before preexec_fn runs): Mosquitto does not drop privileges when
        # it is not root, and the parent-death signal stays armed.
        user = _mosquitto_user() if os.geteuid() == 0 else None
        ids: dict[str, object] = {}
        if user is not None:
            ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(  # type: ignore[call-overload]
                [self.binary, "-c", str(self.paths.mosquitto_conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # a Ctrl-C in the terminal goes to us, we stop it
                preexec_fn=lambda: _die_with_parent(parent),
                **ids,
            )

    def _stale_own_brokers(self) -> list[int]:
        """Pids of Mosquitto processes running OUR config file (a previous serve that was
        SIGKILLed before PR_SET_PDEATHSIG existed, or on a system without it)."""
        conf = str(self.paths.mosquitto_conf)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv if a]
            if len(args) >= 3 and os.path.basename(args[0]) == "mosquitto" and args[1:3] == [
                "-c", conf] and _orphaned(int(entry)):
                found.append(int(entry))
        return found

    def _stop_stale_own_brokers(self) -> None:
        for pid in self._stale_own_brokers():
            log.warning("stopping a stale managed broker (pid %d) left running by a previous "
                        "edgegw-cloud serve on this data dir", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                self._wake.wait(0.05)  # poll-until-deadline for the old broker to exit
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def start(self, timeout: float = 15.0) -> ManagedBroker:
        """Write the config, start Mosquitto, return once the port completes a TLS handshake."""
        with self._lock:
            if self.running:
                return self
            self._stop_stale_own_brokers()
            self._check_port_free()
            self.write_files()
            self._join()  # a supervisor from before stop()/kill() must be gone
            self._stopping.clear()
            self._spawn()
            self._supervise = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._supervisor, name=f"broker-{self.port}", daemon=True
                )
                self._thread.start()
        self.wait_ready(timeout)
        return self

    def _check_port_free(self) -> None:
        listeners = [("127.0.0.1", self.port), ("127.0.0.1", self.service_port)]
        if self.extra_listener is not None:
            listeners.append((self.extra_listener.host, self.extra_listener.port))
            if self.extra_listener.service_port is not None:
                listeners.append((self.extra_listener.host, self.extra_listener.service_port))
        for host, port in listeners:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto does
                try:
                    s.bind((host, port))
                except OSError as exc:
                    raise BrokerError(
                        f"port {port} is in use ({exc.strerror}): another broker (a system "
                        "mosquitto on 8883?) holds it; pick another with --port"
                    ) from None

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        ctx = pki.make_tls_context(
            self.paths.ca_crt, self.paths.bootstrap_crt, self.paths.bootstrap_key
        )
        last: Exception | None = None
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._supervise:
                break
            if proc is not None and proc.poll() is not None:
                last = BrokerError(f"mosquitto exited with status {proc.returncode}")
            try:
                for port in (self.port, self.service_port):
                    with (
                        socket.create_connection(("127.0.0.1", port), timeout=1.0) as raw,
                        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
                    ):
                        pass
                return
            except (OSError, ssl.SSLError) as exc:
                last = exc
            self._wake.wait(0.05)  # poll-until-deadline, not a synchronisation sleep
        raise BrokerError(
            f"mosquitto did not accept TLS on 127.0.0.1:{self.port} within {timeout}s "
            f"({last}); last log lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for f in (self.stderr_path, self.paths.mosquitto_log):
            with contextlib.suppress(OSError):
                out += f.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def _supervisor(self) -> None:
        backoff = 0.5
        while True:
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            proc.wait()
            with self._lock:
                if not self._supervise:
                    return
                if self._proc is not proc:  # replaced by start()/restart(): watch the new one
                    continue
                self.crashes += 1
                if time.monotonic() - started > 30.0:
                    backoff = 0.5  # it had been up a while: a fresh crash, not a crash loop
                log.error(
                    "mosquitto exited with status %s; restarting in %.1fs. Log:\n%s",
                    proc.returncode,
                    backoff,
                    self.log_tail(5),
                )
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if not self._supervise:
                    return
                if self._proc is proc:
                    try:
                        self._spawn()
                        self.restarts += 1
                    except OSError as exc:
                        log.error("cannot restart mosquitto: %s", exc)
            backoff = min(backoff * 2, 30.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: Mosquitto saves persistence), then SIGKILL after ``timeout``."""
        with self._lock:
            self._supervise = False
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._join()

    def kill(self, *, restart: bool = False) -> None:
        """SIGKILL the broker (fault tests). Supervision resumes only if ``restart``."""
        with self._lock:
            self._supervise = restart
            if not restart:
                self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if not restart:
            self._join()

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def reload(self, timeout: float = 10.0) -> None:
        """Re-read ACL, CRL (and revoked gateways): rewrite the copies, SIGHUP, and return once
        Mosquitto has applied it (its single-threaded loop logs "Reloading config." and reloads
        before it serves any new connection; our TLS probe after that line is such a one)."""
        with self._lock:
            self.write_files()
            if not (self.running and self._proc is not None):
                return
            log_path = self.paths.mosquitto_log
            offset = log_path.stat().st_size if log_path.exists() else 0
            self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), open(log_path, "rb") as fh:
                fh.seek(offset)
                if b"Reloading config" in fh.read():
                    break
            self._wake.wait(0.02)
        else:
            raise BrokerError(f"mosquitto did not reload within {timeout}s:\n{self.log_tail()}")
        self.wait_ready(max(1.0, deadline - time.monotonic()))

    def _join(self) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)

    def __enter__(self) -> ManagedBroker:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
