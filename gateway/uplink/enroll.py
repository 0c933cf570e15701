"""Gateway enrollment: get a certificate from the cloud with a one-time token (or renew one).

``edgegw enroll -c gateway.yaml --token T [--bootstrap-dir DIR]``; ``enroll(...)`` does the same
from Python; ``Identity.load(dir)`` reads the result (the uplink session uses it).

Protocol (MQTT v5 over mTLS, QoS 1, JSON payloads):
- connect with the bootstrap identity (renewal: the gateway's own) and a random client id C;
  the broker's username is the certificate CN U ("bootstrap" or the gateway id);
- subscribe ``enroll/U/C/resp`` (the ACL lets only client C of user U read it), then publish
  ``{"v": 1, "nonce", "csr", "token"}`` to ``enroll/U/C/req``;
- the answer is ``{"v": 1, "nonce", "ok": true, "certificate", "ca", "ingest_ka_pub", "key_id"}``
  or ``{"v": 1, "nonce", "ok": false, "reason", "error"}``.

Invariants:
- The private key is generated here, written 0600, and never leaves the gateway: only the CSR
  (public key + CN + proof of possession) is sent. An existing ``gateway.key`` is reused (so
  batches sealed before a re-enrollment stay decryptable) unless ``new_key`` is asked for.
- The CA is pinned: the broker is verified with the CA shipped in the bootstrap dir, and the CA
  in the answer must be that same certificate; the issued certificate must carry our key and id.
- ``identity.json`` is written last: a directory with it is a complete identity.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki

log = logging.getLogger("edgegw.enroll")

PROTOCOL_VERSION = 1
MAX_MESSAGE = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0


class EnrollmentError(Exception):
    """Enrollment failed; the message says why and what to do."""


# --------------------------------------------------------------------------- identity dir
@dataclass(frozen=True, slots=True)
class Identity:
    """A gateway identity directory (docs/CONTRACTS.md "Gateway identity dir")."""

    dir: Path
    gateway_id: str
    key_id: int
    broker: str

    @property
    def key_path(self) -> Path:
        return self.dir / "gateway.key"

    @property
    def cert_path(self) -> Path:
        return self.dir / "gateway.crt"

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ingest_ka_pub_path(self) -> Path:
        return self.dir / "ingest-ka.pub"

    @classmethod
    def load(cls, identity_dir: Path | str) -> Identity:
        d = Path(identity_dir)
        meta_path = d / "identity.json"
        try:
            meta = json.loads(meta_path.read_text())
            ident = cls(d, str(meta["gateway_id"]), int(meta["key_id"]), str(meta["broker"]))
        except FileNotFoundError:
            raise EnrollmentError(
                f"{meta_path} not found: this gateway is not enrolled; run `edgegw enroll -c "
                "CONFIG --token TOKEN` (get a token with `edgegw-cloud token create GW_ID`)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise EnrollmentError(
                f"{meta_path}: unreadable identity ({exc}); enroll again"
            ) from None
        for f in (ident.key_path, ident.cert_path, ident.ca_path, ident.ingest_ka_pub_path):
            if not f.exists():
                raise EnrollmentError(f"{f} is missing: the identity is incomplete; enroll again")
        return ident

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = pki.load_private_key(self.key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollmentError(f"{self.key_path}: gateway key must be EC P-256")
        return key

    def ingest_public_key(self) -> ec.EllipticCurvePublicKey:
        key = pki.load_public_key(self.ingest_ka_pub_path)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise EnrollmentError(f"{self.ingest_ka_pub_path}: ingest key must be EC P-256")
        return key

    def tls_context(self) -> ssl.SSLContext:
        return pki.make_tls_context(self.ca_path, self.cert_path, self.key_path)


def write_identity(
    identity_dir: Path,
    *,
    gateway_id: str,
    key_id: int,
    broker: str,
    certificate_pem: str,
    ca_pem: str,
    ingest_ka_pub_pem: str,
    ota_pub_pem: str = "",
) -> Identity:
    """Write certificate, CA, ingest key and identity.json (last) next to gateway.key.

    ``ota_pub_pem`` (the cloud's Ed25519 OTA key, ``ota-signing.pub``) is what OTA releases
    are verified with; it arrives over the pinned-CA enrollment channel.
    """
    d = Path(identity_dir)
    if ota_pub_pem:
        pki.write_public(d / "ota-signing.pub", ota_pub_pem.encode())
    pki.write_public(d / "gateway.crt", certificate_pem.encode())
    pki.write_public(d / "ca.crt", ca_pem.encode())
    pki.write_public(d / "ingest-ka.pub", ingest_ka_pub_pem.encode())
    meta = {"gateway_id": gateway_id, "key_id": key_id, "broker": broker}
    pki.write_public(d / "identity.json", (json.dumps(meta, indent=2) + "\n").encode())
    return Identity.load(d)


def load_or_create_key(identity_dir: Path, *, new_key: bool = False) -> ec.EllipticCurvePrivateKey:
    d = Path(identity_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = d / "gateway.key"
    if path.exists() and not new_key:
        key = pki.load_private_key(path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollmentError(f"{path}: gateway key must be EC P-256; move it away")
        return key
    key = pki.generate_ec_key()
    pki.save_private_key(path, key, overwrite=new_key)
    return key


# --------------------------------------------------------------------------- broker url
def parse_broker_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtts://{url}")
    if parts.scheme not in ("mqtts", "ssl", "tls"):
        raise EnrollmentError(f"broker URL {url!r}: only mqtts:// is supported (mutual TLS)")
    if not parts.hostname:
        raise EnrollmentError(f"broker URL {url!r} has no host (use mqtts://HOST:8883)")
    return parts.hostname, parts.port or 8883


# --------------------------------------------------------------------------- MQTT exchange
class _Exchange:
    """One request/response over a short-lived paho client (its own network thread)."""

    def __init__(self, host: str, port: int, ctx: Any, username: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.client_id = pki.random_client_id("enroll")
        self.req_topic = f"enroll/{username}/{self.client_id}/req"
        self.resp_topic = f"enroll/{username}/{self.client_id}/resp"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set_context(ctx)
        self.connected = threading.Event()
        self.failed: str | None = None
        self.subscribed = threading.Event()
        self.sub_ok = False
        self.published = threading.Event()
        self.pub_rc: ReasonCode | None = None
        self.answer: dict[str, Any] | None = None
        self.nonce = secrets.token_hex(8)
        self.answered = threading.Event()
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = self._on_message

    def _on_connect(self, c: mqtt.Client, ud: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            self.failed = f"broker refused the connection: {rc}"
        self.connected.set()

    def _on_disconnect(
        self, c: mqtt.Client, ud: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if not self.connected.is_set():
            # TLS 1.3: a refused client certificate shows only as EOF on the first read
            self.failed = (
                f"the broker closed the connection before CONNACK ({rc}): it refused the "
                "certificate (wrong CA, revoked or expired?)"
            )
            self.connected.set()
        self.answered.set()  # wake the waiter; it checks self.answer

    def _on_subscribe(
        self, c: mqtt.Client, ud: Any, mid: int, rcs: list[ReasonCode], p: Any
    ) -> None:
        self.sub_ok = bool(rcs) and not rcs[0].is_failure
        self.subscribed.set()

    def _on_publish(self, c: mqtt.Client, ud: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        self.pub_rc = rc  # MQTT v5: ACL denial is 0x87 here, is_published() would say True
        self.published.set()

    def _on_message(self, c: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > MAX_MESSAGE:
            log.warning("enrollment answer of %d bytes ignored (too large)", len(msg.payload))
            return
        try:
            data = json.loads(msg.payload)
        except ValueError:
            log.warning("malformed enrollment answer ignored")
            return
        if isinstance(data, dict) and data.get("nonce") == self.nonce:
            self.answer = data
            self.answered.set()

    def _wait(self, ev: threading.Event, what: str) -> None:
        if not ev.wait(self.timeout):
            raise EnrollmentError(
                f"timed out after {self.timeout:.0f}s waiting for {what} from "
                f"{self.host}:{self.port} (is `edgegw-cloud serve` running and reachable?)"
            )

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise EnrollmentError(
                f"cannot connect to broker {self.host}:{self.port}: {exc} (check uplink.broker "
                "and that the TLS certificate matches the host name)"
            ) from None
        self.client.loop_start()
        try:
            self._wait(self.connected, "the broker to accept the connection")
            if self.failed:
                raise EnrollmentError(self.failed)
            self.client.subscribe(self.resp_topic, qos=1)
            self._wait(self.subscribed, "the subscription")
            if not self.sub_ok:
                raise EnrollmentError("the broker refused the enrollment subscription (ACL)")
            request = {**request, "v": PROTOCOL_VERSION, "nonce": self.nonce}
            self.client.publish(self.req_topic, json.dumps(request).encode(), qos=1)
            self._wait(self.published, "the broker to accept the request")
            if self.pub_rc is not None and self.pub_rc.is_failure:
                raise EnrollmentError(f"the broker refused the enrollment request: {self.pub_rc}")
            self._wait(self.answered, "the enrollment service's answer")
            if self.answer is None:
                raise EnrollmentError(self.failed or "connection lost before the answer arrived")
            return self.answer
        finally:
            self.client.disconnect()
            self.client.loop_stop()


# --------------------------------------------------------------------------- enroll
def enroll(
    gateway_id: str,
    identity_dir: Path | str,
    *,
    broker: str,
    token: str | None = None,
    bootstrap_dir: Path | str | None = None,
    renew: bool = False,
    new_key: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Identity:
    """Enroll (token + bootstrap identity) or renew (current identity); returns the identity."""
    pki.check_gateway_id(gateway_id)
    identity_dir = Path(identity_dir)
    host, port = parse_broker_url(broker)
    if renew:
        current = Identity.load(identity_dir)
        if current.gateway_id != gateway_id:
            raise EnrollmentError(
                f"{identity_dir} holds gateway {current.gateway_id!r}, not {gateway_id!r}"
            )
        pki.verify_issued_by(
            pki.load_certificate(current.cert_path), pki.load_certificate(current.ca_path)
        )
        ca_path, cert_path, key_path = current.ca_path, current.cert_path, current.key_path
        username = gateway_id
        key = current.private_key()
    else:
        if not token:
            raise EnrollmentError(
                "a token is needed: `edgegw-cloud token create GW_ID` prints one (or --renew)"
            )
        if bootstrap_dir is None:
            raise EnrollmentError(
                "--bootstrap-dir is needed (bootstrap.crt, bootstrap.key, ca.crt)"
            )
        b = Path(bootstrap_dir)
        ca_path, cert_path, key_path = b / "ca.crt", b / "bootstrap.crt", b / "bootstrap.key"
        for f in (ca_path, cert_path, key_path):
            if not f.exists():
                raise EnrollmentError(
                    f"{f} not found: copy ca.crt, bootstrap.crt and bootstrap.key from the "
                    "cloud's DATA/pki/ into the bootstrap dir"
                )
        username = pki.common_name(pki.load_certificate(cert_path).subject)
        key = load_or_create_key(identity_dir, new_key=new_key)
    try:
        ctx = pki.make_tls_context(ca_path, cert_path, key_path)
    except pki.PkiError as exc:
        raise EnrollmentError(str(exc)) from None
    csr = pki.csr_pem(pki.make_csr(key, gateway_id))
    request: dict[str, Any] = {"csr": csr}
    if token and not renew:
        request["token"] = token.strip()
    log.info("%s gateway %s at %s:%d", "renewing" if renew else "enrolling", gateway_id, host, port)
    answer = _Exchange(host, port, ctx, username, timeout).run(request)
    return _accept(answer, key, gateway_id, identity_dir, ca_path, broker)


def _accept(
    answer: dict[str, Any],
    key: ec.EllipticCurvePrivateKey,
    gateway_id: str,
    identity_dir: Path,
    pinned_ca_path: Path,
    broker: str,
) -> Identity:
    if not answer.get("ok"):
        raise EnrollmentError(
            f"enrollment refused ({answer.get('reason', '?')}): {answer.get('error', 'no reason')}"
        )
    try:
        cert = pki.load_certificate(str(answer["certificate"]))
        ca = pki.load_certificate(str(answer["ca"]))
        pki.load_public_key(str(answer["ingest_ka_pub"]).encode())
        key_id = int(answer["key_id"])
    except (KeyError, ValueError, TypeError, pki.PkiError) as exc:
        raise EnrollmentError(f"malformed enrollment answer: {exc}") from None
    pinned = pki.load_certificate(pinned_ca_path)
    if pki.fingerprint(ca) != pki.fingerprint(pinned):
        raise EnrollmentError(
            "the answer's CA is not the pinned CA (bootstrap ca.crt); refusing it"
        )
    try:
        pki.verify_issued_by(cert, pinned)
    except pki.PkiError as exc:
        raise EnrollmentError(f"issued certificate rejected: {exc}") from None
    if pki.public_key_fingerprint(cert.public_key()) != pki.public_key_fingerprint(
        key.public_key()
    ):
        raise EnrollmentError("the issued certificate does not carry this gateway's key")
    if pki.common_name(cert.subject) != gateway_id:
        raise EnrollmentError(f"the issued certificate is not for {gateway_id!r}")
    ident = write_identity(
        identity_dir,
        gateway_id=gateway_id,
        key_id=key_id,
        broker=broker,
        certificate_pem=str(answer["certificate"]),
        ca_pem=pki.cert_pem(ca),
        ingest_ka_pub_pem=str(answer["ingest_ka_pub"]),
        ota_pub_pem=str(answer.get("ota_pub") or ""),
    )
    log.info(
        "gateway %s enrolled: certificate serial %x, valid until %s",
        gateway_id,
        cert.serial_number,
        cert.not_valid_after_utc.isoformat(),
    )
    return ident


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="gateway.yaml (gateway.id, uplink.*)")
    parser.add_argument("--token", help="one-time token from `edgegw-cloud token create GW_ID`")
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
    parser.add_argument("--identity-dir", type=Path, help="override uplink.identity_dir")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the cloud (default %(default)s)",
    )


def _from_config(path: Path) -> tuple[str, str, Path, Path]:
    from edgegw.config import load_config  # lazy: enroll works without the runtime

    cfg: Any = load_config(path)
    state = Path(cfg.gateway.state_dir)
    ident = Path(cfg.uplink.identity_dir) if cfg.uplink.identity_dir else state / "identity"
    return str(cfg.gateway.id), str(cfg.uplink.broker), ident, state / "bootstrap"


def run(args: argparse.Namespace) -> int:
    gw_id = args.gateway_id
    broker = args.broker
    ident_dir = args.identity_dir
    boot = args.bootstrap_dir
    try:
        if args.config is not None:
            c_id, c_broker, c_ident, c_boot = _from_config(args.config)
            gw_id, broker = gw_id or c_id, broker or c_broker
            ident_dir, boot = ident_dir or c_ident, boot or c_boot
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
            token=args.token,
            bootstrap_dir=boot,
            renew=args.renew,
            new_key=args.new_key,
            timeout=args.timeout,
        )
    except (EnrollmentError, pki.PkiError, FileExistsError) as exc:
        print(f"edgegw enroll: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # config errors carry their own formatting
        print(f"edgegw enroll: {exc}", file=sys.stderr)
        return 2
    print(f"enrolled {ident.gateway_id}: identity in {ident.dir}")
    return 0
