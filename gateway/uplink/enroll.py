"""Gateway enrollment: get a certificate from the cloud with a one-time token (or renew one).

``edgegw enroll -c gateway.yaml --token T [--bootstrap-dir DIR]``; ``enroll(...)`` does the same
from Python; ``Identity.load(dir)`` (``edgegw.protocol.identity``) reads the result.

Protocol (MQTT v5 over mTLS, QoS 1, JSON payloads; messages in ``edgegw.protocol.enrollment``,
topics in ``edgegw.protocol.topics``):
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

import logging
import secrets
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.protocol import topics
from edgegw.protocol.broker_url import BrokerUrlError, enrollment_url_for, parse_broker_url
from edgegw.protocol.enrollment import EnrollRequest, decode_answer
from edgegw.protocol.identity import BootstrapFiles, Identity, IdentityError

log = logging.getLogger("edgegw.enroll")

DEFAULT_TIMEOUT_S = 30.0


class EnrollmentError(IdentityError):
    """Enrollment failed; the message says why and what to do."""


# --------------------------------------------------------------------------- MQTT exchange
class _Exchange:
    """One request/response over a short-lived paho client (its own network thread)."""

    def __init__(self, host: str, port: int, ctx: Any, username: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.client_id = pki.random_client_id("enroll")
        self.req_topic = topics.enroll_request(username, self.client_id)
        self.resp_topic = topics.enroll_response(username, self.client_id)
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
        data = decode_answer(bytes(msg.payload))
        if data is None:
            log.warning("malformed or oversized enrollment answer ignored")
            return
        if data.get("nonce") == self.nonce:
            self.answer = data
            self.answered.set()

    def _wait(self, ev: threading.Event, what: str) -> None:
        if not ev.wait(self.timeout):
            raise EnrollmentError(
                f"timed out after {self.timeout:.0f}s waiting for {what} from "
                f"{self.host}:{self.port} (is `edgegw-cloud serve` running and reachable?)"
            )

    def run(self, csr: str, token: str | None) -> dict[str, Any]:
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
            message = EnrollRequest(self.nonce, csr, token).encode()
            self.client.publish(self.req_topic, message, qos=1)
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
    enroll_broker: str | None = None,
) -> Identity:
    """Enroll (token + bootstrap identity) or renew (current identity); returns the identity.

    ``broker`` is the gateway listener (stored in identity.json, used by the uplink); the
    exchange itself goes to ``enroll_broker``, the cloud's enrollment/service listener
    (default: same host, port + 1; docs/security.md "Client ids")."""
    pki.check_gateway_id(gateway_id)
    try:
        parse_broker_url(broker)
        url = parse_broker_url(enroll_broker or enrollment_url_for(broker))
    except BrokerUrlError as exc:
        raise EnrollmentError(str(exc)) from None
    host, port = url.host, url.port
    identity_dir = Path(identity_dir)
    if renew and new_key:
        raise EnrollmentError(
            "renewal keeps the gateway's key (--renew and --new-key exclude each other); to "
            "change the key, enroll again with a token and --new-key"
        )
    if renew:
        try:
            current = Identity.load(identity_dir)
        except IdentityError as exc:
            raise EnrollmentError(str(exc)) from None
        if current.gateway_id != gateway_id:
            raise EnrollmentError(
                f"{identity_dir} holds gateway {current.gateway_id!r}, not {gateway_id!r}"
            )
        pki.verify_issued_by(
            pki.load_certificate(current.cert_path), pki.load_certificate(current.ca_path)
        )
        ca_path, cert_path, key_path = current.ca_path, current.cert_path, current.key_path
        username = gateway_id
        try:
            key = current.private_key()
        except IdentityError as exc:
            raise EnrollmentError(str(exc)) from None
    else:
        if not token:
            raise EnrollmentError(
                "a token is needed: `edgegw-cloud token create GW_ID` prints one (or --renew)"
            )
        if bootstrap_dir is None:
            raise EnrollmentError(
                "--bootstrap-dir is needed (bootstrap.crt, bootstrap.key, ca.crt)"
            )
        b = BootstrapFiles(Path(bootstrap_dir))
        ca_path, cert_path, key_path = b.ca_path, b.cert_path, b.key_path
        for f in (ca_path, cert_path, key_path):
            if not f.exists():
                raise EnrollmentError(
                    f"{f} not found: copy ca.crt, bootstrap.crt and bootstrap.key from the "
                    "cloud's DATA/pki/ into the bootstrap dir"
                )
        username = pki.common_name(pki.load_certificate(cert_path).subject)
        try:
            key = pki.load_or_create_key(identity_dir, new_key=new_key)
        except pki.PkiError as exc:
            raise EnrollmentError(str(exc)) from None
    try:
        ctx = pki.make_tls_context(ca_path, cert_path, key_path)
    except pki.PkiError as exc:
        raise EnrollmentError(str(exc)) from None
    csr = pki.csr_pem(pki.make_csr(key, gateway_id))
    log.info("%s gateway %s at %s:%d", "renewing" if renew else "enrolling", gateway_id, host, port)
    answer = _Exchange(host, port, ctx, username, timeout).run(
        csr, token.strip() if token and not renew else None
    )
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
    ident = pki.write_identity(
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
