"""Enrollment service: answers CSRs on ``enroll/<user>/<clientid>/req`` with certificates.

The messages and topics are defined in ``edgegw.protocol.enrollment`` and ``.topics``. This side:
- subscribes ``$share/enroll/enroll/+/+/req`` as ``edgegw-enroll`` (several serve processes on
  one broker never answer one request twice);
- trusts the ``<user>`` topic level as the requester's identity: the broker ACL
  (``pattern write enroll/%u/%c/req``) only lets a client publish under its own certificate CN;
- ``bootstrap`` requests must carry a valid token (``Registry.enroll``); a request from a
  gateway's own identity is a renewal (``Registry.renew``) unless it carries a token;
- answers on ``enroll/<user>/<clientid>/resp``, QoS 1, never retained.

Invariants: every request gets an answer (ok or a refusal with reason); malformed requests are
counted and answered, never crash the service; the CA key is only in this process's memory.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgegw import pki
from edgegw.protocol import topics
from edgegw.protocol.enrollment import (
    MalformedRequest,
    answer_ok,
    answer_refused,
    parse_request,
)
from edgegw.protocol.identity import Identity
from edgegw_cloud.pki_setup import BOOTSTRAP_CN, CloudPaths
from edgegw_cloud.registry import EnrollmentRefused, Registry
from edgegw_cloud.revocation import refresh_crl

log = logging.getLogger("edgegw.cloud.enroll")

REQUEST_FILTER = topics.ENROLL_SUBSCRIPTION


class EnrollmentService:
    """Answers enrollment and renewal requests; runs on paho's network thread."""

    def __init__(
        self,
        paths: CloudPaths,
        host: str = "127.0.0.1",
        port: int = 8883,
        *,
        cert_days: int | None = None,
    ) -> None:
        self.paths = paths.require_initialised()
        self.host, self.port = host, port
        self.issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
        self.cert_days = cert_days
        self._stats: dict[str, Any] = {
            "requests": 0,
            "enrolled": 0,
            "renewed": 0,
            "malformed": 0,
            "refused": {},
        }
        self._ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=pki.random_client_id("edgegw-enroll"),
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set_context(
            pki.make_tls_context(paths.ca_crt, paths.enroll_crt, paths.enroll_key)
        )
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 15.0) -> EnrollmentService:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(
                f"enrollment service could not subscribe at {self.host}:{self.port} in {timeout}s"
            )
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def stats(self) -> dict[str, Any]:
        return {**self._stats, "refused": dict(self._stats["refused"])}

    def _on_connect(self, c: mqtt.Client, ud: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        if rc.is_failure:
            log.error("enrollment service refused by the broker: %s", rc)
            return
        c.subscribe(REQUEST_FILTER, qos=1)

    def _on_subscribe(
        self, c: mqtt.Client, ud: Any, mid: int, rcs: list[ReasonCode], p: Any
    ) -> None:
        if rcs and not rcs[0].is_failure:
            self._ready.set()
        else:
            log.error("enrollment service could not subscribe %s: %s", REQUEST_FILTER, rcs)

    # ----------------------------------------------------------------- requests
    def _refused(self, reason: str) -> None:
        self._stats["refused"][reason] = self._stats["refused"].get(reason, 0) + 1

    def _on_message(self, c: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        parts = topics.enroll_request_parts(msg.topic)
        if parts is None:
            return
        user, client_id = parts
        self._stats["requests"] += 1
        answer = self.handle(user, bytes(msg.payload), client_id)
        c.publish(topics.enroll_response(user, client_id), json.dumps(answer).encode(), qos=1)

    def handle(self, user: str, payload: bytes, client_id: str = "") -> dict[str, Any]:
        """Turn one request into its answer (never raises for bad input)."""
        nonce: Any = None
        try:
            req = parse_request(payload)
            nonce = req.nonce
            csr = pki.load_csr(req.csr)
            token = req.token
        except (MalformedRequest, pki.PkiError) as exc:
            if isinstance(exc, MalformedRequest):
                nonce = exc.nonce
            self._stats["malformed"] += 1
            log.warning("malformed enrollment request from %r: %s", user, exc)
            return answer_refused(nonce, "malformed", str(exc))
        kw = {"days": self.cert_days} if self.cert_days else {}
        try:
            with Registry(self.paths.registry_db) as reg:
                cn = pki.common_name(csr.subject)
                if user not in (BOOTSTRAP_CN, cn):
                    # a gateway may re-enroll or renew itself, never another gateway
                    reg.count("refused_other_identity")
                    raise EnrollmentRefused(
                        "other_identity", f"you are {user!r}; you cannot request {cn!r}"
                    )
                if token:
                    reinstated = reg.is_revoked(cn)
                    cert = reg.enroll(token, csr, self.issuer, actor=user, client_id=client_id,
                                      **kw)
                    self._stats["enrolled"] += 1
                    if reinstated:
                        # a changed crl.pem makes `serve` reload the broker, which drops the
                        # gateway's `deny #` ACL entry (its old serials stay in the CRL)
                        refresh_crl(self.paths)
                elif user == BOOTSTRAP_CN:
                    reg.count("refused_token_missing")
                    raise EnrollmentRefused("token_missing", "a token is required to enroll")
                else:
                    cert = reg.renew(user, csr, self.issuer, client_id=client_id, **kw)
                    self._stats["renewed"] += 1
        except EnrollmentRefused as exc:
            self._refused(exc.reason)
            return answer_refused(nonce, exc.reason, str(exc))
        kid = self.paths.current_key_id
        return answer_ok(
            nonce,
            certificate=pki.cert_pem(cert),
            ca=self.paths.ca_crt.read_text(),
            ingest_ka_pub=self.paths.ingest_ka_pub(kid).read_text(),
            key_id=kid,
            ota_pub=_ota_pub(self.paths),
        )


def _ota_pub(paths: CloudPaths) -> str:
    """The cloud's OTA public key (PEM), handed out so gateways can verify releases."""
    return paths.ota_signing_pub.read_text() if paths.ota_signing_pub.exists() else ""


def provision_gateway(
    paths: CloudPaths, gateway_id: str, identity_dir: Path | str, *, broker: str
) -> Identity:
    """Create a complete gateway identity directly (tests, demos, factory provisioning).

    The same result as enrollment without broker or token: the key is generated into
    ``identity_dir`` (0600) and only its public half is certified and registered.
    """
    pki.check_gateway_id(gateway_id)
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    key = pki.load_or_create_key(Path(identity_dir))
    with Registry(paths.registry_db) as reg:
        cert = reg.provision(gateway_id, key.public_key(), issuer)
    kid = paths.current_key_id
    return pki.write_identity(
        Path(identity_dir),
        gateway_id=gateway_id,
        key_id=kid,
        broker=broker,
        certificate_pem=pki.cert_pem(cert),
        ca_pem=paths.ca_crt.read_text(),
        ingest_ka_pub_pem=paths.ingest_ka_pub(kid).read_text(),
        ota_pub_pem=_ota_pub(paths),
    )
